//! edgeHub routes (edge.md §2): `[SELECT *] FROM source [WHERE condition] INTO sink`, parsed
//! with the runtime's grammar and checked as the runtime would compile them, so a bad route is
//! found with its position before a device refuses the deployment.
//!
//! - Keywords `SELECT FROM WHERE INTO AND OR NOT` are case-insensitive; the literals `true`,
//!   `false`, `null` and `undefined` are lower-case only; strings take single or double quotes
//!   with `\'`, `\"`, `\\` and `\uXXXX`; `/* … */` comments are skipped.
//! - Sources: `/*`, `/twinChangeNotifications`, `/messages/*`, `/messages/modules/*`,
//!   `/messages/modules/ID[/*]`, `/messages/modules/ID/outputs/*`,
//!   `/messages/modules/ID/outputs/OUTPUT`; anything else matches no message and is refused.
//! - Sinks: `$upstream` (any case), or `BrokeredEndpoint("/modules/ID/inputs/INPUT")` (the
//!   runtime needs exactly four segments; other names of the first and third are warned about).
//! - Conditions: operators from lowest to highest precedence `??`, `OR`, `AND`, `= != <>`,
//!   `< <= > >=`, `+ - ||`, `* / %`, prefix `NOT`, prefix `-` (so `NOT a = b` is `(NOT a) = b`:
//!   the check warns); operands `$sysprop` or `{$sysprop}` (system properties), `$body.path` or
//!   `{$body.path}` (the JSON body), a bare name (an application property), literals and the
//!   runtime's built-in functions (case-insensitive). Literals of different types compared, an
//!   unknown function or system property, or a wrong argument count are errors, as they are
//!   compile errors on the device.

use std::fmt;

/// A route that does not parse or would not compile on the device, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {message}")]
pub struct RouteError {
    /// 1-based character position in the route.
    pub position: usize,
    /// What is wrong, and the fix when there is one.
    pub message: String,
}

/// Where a route takes messages from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `/*`
    All,
    /// `/twinChangeNotifications`
    TwinChanges,
    /// `/messages/*`
    Messages,
    /// `/messages/modules/*`
    AllModules,
    /// `/messages/modules/ID[/*]` or `…/outputs/*` (`output` none) or `…/outputs/OUT`.
    Module {
        /// The module.
        module: String,
        /// `Some(None)`: any output; `Some(Some(o))`: that output; `None`: with or without.
        output: Option<Option<String>>,
    },
}

/// Where a route sends messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `$upstream`: IoT Hub.
    Upstream,
    /// `BrokeredEndpoint("/modules/ID/inputs/INPUT")`.
    Module {
        /// The module.
        module: String,
        /// Its input.
        input: String,
    },
}

/// A parsed route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its source.
    pub source: Source,
    /// Its condition, if any (none: every message).
    pub condition: Option<Cond>,
    /// Its sink.
    pub sink: Sink,
    /// What compiles but is probably not meant (each with its position).
    pub warnings: Vec<RouteError>,
}

/// A route condition's expression (parsed and checked; evaluation is not needed to validate).
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// A literal: `Some(kind)` names its type for the static check.
    Literal(Lit),
    /// `$name` / `{$name}`.
    System(String),
    /// `$body.path` / `{$body.path}`.
    Body(String),
    /// An application property.
    App(String),
    /// A prefix operator (`NOT`, `-`).
    Unary(&'static str, Box<Cond>),
    /// Binary operators of one precedence level, left to right: `first op1 c1 op2 c2 ...`. A
    /// chain is one node, so a long flat chain nests nothing (dropping or comparing it recurses
    /// no deeper than a single term).
    Chain(Box<Cond>, Vec<(&'static str, Cond)>),
    /// A built-in function.
    Call(String, Vec<Cond>),
}

/// Literal types, for the static type check.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    Str(String),
    /// `null`
    Null,
    /// `undefined`
    Undefined,
}

/// System properties edgeHub knows (`SystemProperties.cs`, plus `connectionModuleId` on Edge).
const SYSTEM: &[&str] = &[
    "messageId",
    "enqueuedTime",
    "to",
    "correlationId",
    "userId",
    "ack",
    "connectionDeviceId",
    "connectionDeviceGenerationId",
    "connectionAuthMethod",
    "contentType",
    "contentEncoding",
    "componentName",
    "connectionModuleId",
];

/// Built-in functions and their argument counts (min, max).
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("abs", 1, 1),
    ("exp", 1, 1),
    ("power", 2, 2),
    ("square", 1, 1),
    ("ceiling", 1, 1),
    ("floor", 1, 1),
    ("sign", 1, 1),
    ("sqrt", 1, 1),
    ("as_number", 1, 1),
    ("is_bool", 1, 1),
    ("is_defined", 1, 1),
    ("is_null", 1, 1),
    ("is_number", 1, 1),
    ("is_string", 1, 1),
    ("concat", 2, usize::MAX),
    ("length", 1, 1),
    ("lower", 1, 1),
    ("upper", 1, 1),
    ("substring", 2, 3),
    ("index_of", 2, 2),
    ("starts_with", 2, 2),
    ("ends_with", 2, 2),
    ("contains", 2, 2),
    ("twin_change_includes", 1, 1),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Sys(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Sys(w) => write!(f, "`${w}`"),
            Tok::Str(s) => write!(f, "string \"{s}\""),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Sym(s) => write!(f, "`{s}`"),
        }
    }
}

/// Characters an ID may not hold (the runtime's lexer), besides whitespace.
const NOT_ID: &str = "()<>@,;:\\\"/[]?={}'";

const SYMBOLS: &[&str] = &[
    "??", "||", "!=", "<>", "<=", ">=", "=", "<", ">", "(", ")", ",", "+", "-", "*", "/", "%", "{",
    "}",
];

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, RouteError> {
    let chars: Vec<char> = text.chars().collect();
    let err = |i: usize, m: String| RouteError { position: i + 1, message: m };
    let mut out: Vec<(Tok, usize)> = Vec::new();
    let mut in_source = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // `/*` opens a comment, except in the source, where it is the path's `/` and `*`.
        if c == '/' && chars.get(i + 1) == Some(&'*') && !in_source {
            let close = (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                .ok_or_else(|| err(i, "the comment opened here is not closed with */".into()))?;
            i = close + 2;
            continue;
        }
        if c == '\'' || c == '"' {
            let (s, next) = crate::iothub::condition::scan_string(&chars, i, false)
                .map_err(|(at, m)| RouteError { position: at + 1, message: m })?;
            out.push((Tok::Str(s), i + 1));
            i = next;
            continue;
        }
        if let Some(sym) = SYMBOLS.iter().find(|s| {
            let n = s.chars().count();
            chars.get(i..i + n).is_some_and(|w| w.iter().copied().eq(s.chars()))
        }) {
            out.push((Tok::Sym(sym), i + 1));
            i += sym.chars().count();
            continue;
        }
        if c.is_ascii_digit() {
            let mut j = i;
            let hex = c == '0' && matches!(chars.get(i + 1), Some('x' | 'X'));
            if hex {
                j += 2;
                while chars.get(j).is_some_and(char::is_ascii_hexdigit) {
                    j += 1;
                }
            } else {
                while chars
                    .get(j)
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E'))
                    || (matches!(chars.get(j), Some('+' | '-'))
                        && matches!(chars.get(j.wrapping_sub(1)), Some('e' | 'E')))
                {
                    j += 1;
                }
            }
            let t: String = chars[i..j].iter().collect();
            let v = if hex {
                u64::from_str_radix(&t[2..], 16).ok().map(|v| v as f64)
            } else {
                t.parse().ok()
            };
            let v = v.ok_or_else(|| err(i, format!("`{t}` is not a number")))?;
            out.push((Tok::Num(v), i + 1));
            i = j;
            continue;
        }
        if c == '$' {
            let mut j = i + 1;
            while chars
                .get(j)
                .is_some_and(|c| !c.is_whitespace() && !"()<>@,;:\\\"/?={}".contains(*c))
            {
                j += 1;
            }
            let name: String = chars[i + 1..j].iter().collect();
            if name.is_empty() {
                return Err(err(i, "`$` names no system property".into()));
            }
            out.push((Tok::Sys(name), i + 1));
            i = j;
            continue;
        }
        // Operator characters never start a name (a lone `|` or `!` is an error below).
        if !NOT_ID.contains(c) && !"+*%|!".contains(c) {
            let mut j = i;
            while chars.get(j).is_some_and(|c| {
                !c.is_whitespace() && !NOT_ID.contains(*c) && !"+*%|!".contains(*c)
            }) {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            if word.eq_ignore_ascii_case("FROM") {
                in_source = true;
            } else if word.eq_ignore_ascii_case("WHERE") || word.eq_ignore_ascii_case("INTO") {
                in_source = false;
            }
            out.push((Tok::Word(word), i + 1));
            i = j;
            continue;
        }
        return Err(err(i, format!("unexpected character `{c}`")));
    }
    Ok(out)
}

struct P {
    toks: Vec<(Tok, usize)>,
    at: usize,
    end: usize,
    depth: usize,
    warnings: Vec<RouteError>,
}

/// How deep a condition may nest.
const MAX_DEPTH: usize = 64;

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }
    fn pos(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |(_, p)| *p)
    }
    fn err(&self, position: usize, message: impl Into<String>) -> RouteError {
        RouteError { position, message: message.into() }
    }
    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn found(&self) -> String {
        self.peek().map_or("the end of the route".into(), ToString::to_string)
    }

    fn route(&mut self) -> Result<Route, RouteError> {
        if self.keyword("SELECT") && !self.sym("*") {
            return Err(
                self.err(self.pos(), format!("SELECT takes only `*`, found {}", self.found()))
            );
        }
        if !self.keyword("FROM") {
            return Err(self.err(
                self.pos(),
                format!("a route starts with FROM (or SELECT * FROM), found {}", self.found()),
            ));
        }
        let source = self.source()?;
        let condition = if self.keyword("WHERE") {
            let c = self.binary(0)?;
            Some(c)
        } else {
            None
        };
        if !self.keyword("INTO") {
            return Err(
                self.err(self.pos(), format!("expected INTO and a sink, found {}", self.found()))
            );
        }
        let sink = self.sink()?;
        if self.at < self.toks.len() {
            return Err(self.err(self.pos(), format!("unexpected {} after the sink", self.found())));
        }
        Ok(Route { source, condition, sink, warnings: std::mem::take(&mut self.warnings) })
    }

    fn source(&mut self) -> Result<Source, RouteError> {
        let start = self.pos();
        let mut items = Vec::new();
        while self.sym("/") {
            match self.peek().cloned() {
                Some(Tok::Sym("*")) => {
                    self.at += 1;
                    items.push("*".to_owned());
                }
                Some(Tok::Word(w))
                    if !["WHERE", "INTO"].iter().any(|k| w.eq_ignore_ascii_case(k)) =>
                {
                    self.at += 1;
                    items.push(w);
                }
                _ => {
                    return Err(self.err(
                        self.pos(),
                        format!("expected a path segment or `*` after `/`, found {}", self.found()),
                    ));
                }
            }
        }
        if items.is_empty() {
            return Err(self.err(start, format!("the source must start with `/` (e.g. /messages/modules/ID/outputs/*), found {}", self.found())));
        }
        let lower: Vec<String> = items.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let module = |i: usize| items[i].clone();
        Ok(match l.as_slice() {
            ["*"] => Source::All,
            ["twinchangenotifications"] => Source::TwinChanges,
            ["messages", "*"] | ["messages"] => Source::Messages,
            ["messages", "modules", "*"] | ["messages", "modules"] => Source::AllModules,
            ["messages", "modules", m, rest @ ..] if *m != "*" => match rest {
                [] | ["*"] => Source::Module { module: module(2), output: None },
                ["outputs"] | ["outputs", "*"] => Source::Module { module: module(2), output: Some(None) },
                ["outputs", o] => Source::Module { module: module(2), output: Some(Some(items[4].clone())).filter(|_| *o != "*") },
                _ => return Err(self.err(start, "no message comes from this source: after /messages/modules/ID come only /*, /outputs/* or /outputs/NAME")),
            },
            _ => {
                return Err(self.err(
                    start,
                    "no message comes from this source: use /*, /twinChangeNotifications, /messages/*, /messages/modules/*, /messages/modules/ID/*, /messages/modules/ID/outputs/* or /messages/modules/ID/outputs/NAME",
                ));
            }
        })
    }

    fn sink(&mut self) -> Result<Sink, RouteError> {
        let pos = self.pos();
        match self.peek().cloned() {
            Some(Tok::Sys(name)) => {
                self.at += 1;
                if name.eq_ignore_ascii_case("upstream") {
                    Ok(Sink::Upstream)
                } else {
                    Err(self.err(pos, format!("`${name}` is not a sink edgeHub supports; the only system endpoint is $upstream")))
                }
            }
            Some(Tok::Word(f)) => {
                self.at += 1;
                if !f.eq_ignore_ascii_case("BrokeredEndpoint") {
                    return Err(self.err(pos, format!("`{f}` is not a sink: use $upstream or BrokeredEndpoint(\"/modules/ID/inputs/INPUT\")")));
                }
                if !self.sym("(") {
                    return Err(
                        self.err(self.pos(), "BrokeredEndpoint takes its address in parentheses")
                    );
                }
                let at = self.pos();
                let Some(Tok::Str(addr)) = self.peek().cloned() else {
                    return Err(self.err(
                        at,
                        format!("BrokeredEndpoint takes a quoted address, found {}", self.found()),
                    ));
                };
                self.at += 1;
                if !self.sym(")") {
                    return Err(self.err(self.pos(), "the BrokeredEndpoint( is not closed"));
                }
                let trimmed = addr.trim();
                let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
                let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
                let parts: Vec<&str> = trimmed.split('/').collect();
                if parts.len() != 4 || parts.iter().any(|p| p.is_empty()) {
                    return Err(self.err(at, format!("the address \"{addr}\" must be /modules/ID/inputs/INPUT (four segments)")));
                }
                if parts[0] != "modules" || parts[2] != "inputs" {
                    self.warnings.push(self.err(at, format!("the address \"{addr}\" is read as module `{}` input `{}`; the documented form is /modules/ID/inputs/INPUT", parts[1], parts[3])));
                }
                Ok(Sink::Module { module: parts[1].to_owned(), input: parts[3].to_owned() })
            }
            _ => Err(self.err(
                pos,
                format!(
                    "expected a sink ($upstream or BrokeredEndpoint(...)), found {}",
                    self.found()
                ),
            )),
        }
    }

    /// Precedence climbing over the binary levels (0 = `??`, lowest).
    fn binary(&mut self, level: usize) -> Result<Cond, RouteError> {
        const LEVELS: &[&[&str]] = &[
            &["??"],
            &["OR"],
            &["AND"],
            &["=", "!=", "<>"],
            &["<", "<=", ">", ">="],
            &["+", "-", "||"],
            &["*", "/", "%"],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let first = self.binary(level + 1)?;
        let mut rest: Vec<(&'static str, Cond)> = Vec::new();
        loop {
            let pos = self.pos();
            let op = LEVELS[level].iter().find(|op| match self.peek() {
                Some(Tok::Sym(s)) => s == *op,
                Some(Tok::Word(w)) => {
                    w.eq_ignore_ascii_case(op) && op.chars().all(char::is_alphabetic)
                }
                _ => false,
            });
            let Some(op) = op else {
                return Ok(if rest.is_empty() {
                    first
                } else {
                    Cond::Chain(Box::new(first), rest)
                });
            };
            self.at += 1;
            let right = self.binary(level + 1)?;
            // Only the first comparison of a chain has a plain left operand; later ones
            // compare the result of the one before.
            if (level == 3 || level == 4) && rest.is_empty() {
                type_check(&first, &right).map_err(|m| self.err(pos, m))?;
                if matches!(first, Cond::Unary("NOT", _)) {
                    self.warnings.push(self.err(pos, format!("NOT binds tighter than `{op}`: this compares (NOT …) with a value; write NOT (a {op} b) if that is what you mean")));
                }
            }
            rest.push((op, right));
        }
    }

    fn unary(&mut self) -> Result<Cond, RouteError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(
                self.err(self.pos(), format!("the condition nests deeper than {MAX_DEPTH}"))
            );
        }
        let r = if self.keyword("NOT") {
            self.unary().map(|c| Cond::Unary("NOT", Box::new(c)))
        } else if self.sym("-") {
            self.unary().map(|c| Cond::Unary("-", Box::new(c)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        r
    }

    fn system(&mut self, name: &str, pos: usize) -> Result<Cond, RouteError> {
        if let Some(path) = name.strip_prefix("body.") {
            return Ok(Cond::Body(path.to_owned()));
        }
        if name == "body" {
            return Err(self.err(pos, "$body needs a path: $body.field"));
        }
        match SYSTEM.iter().find(|s| s.eq_ignore_ascii_case(name)) {
            Some(s) => Ok(Cond::System((*s).to_owned())),
            None => Err(self.err(
                pos,
                format!("`${name}` is not a system property edgeHub knows ({})", SYSTEM.join(", ")),
            )),
        }
    }

    fn primary(&mut self) -> Result<Cond, RouteError> {
        let pos = self.pos();
        let Some(t) = self.peek().cloned() else {
            return Err(self.err(self.end, "the route ends where a value was expected"));
        };
        self.at += 1;
        match t {
            Tok::Str(s) => Ok(Cond::Literal(Lit::Str(s))),
            Tok::Num(n) => Ok(Cond::Literal(Lit::Number(n))),
            Tok::Sys(name) => self.system(&name, pos),
            Tok::Sym("{") => {
                let Some(Tok::Sys(name)) = self.peek().cloned() else {
                    return Err(self.err(pos, "`{` takes a $property: {$name} or {$body.path}"));
                };
                self.at += 1;
                if !self.sym("}") {
                    return Err(self.err(pos, "the `{` opened here is not closed"));
                }
                self.system(&name, pos)
            }
            Tok::Sym("(") => {
                let c = self.binary(0)?;
                if !self.sym(")") {
                    return Err(self.err(pos, "the `(` opened here is not closed"));
                }
                Ok(c)
            }
            Tok::Word(w) => {
                match w.as_str() {
                    "true" => return Ok(Cond::Literal(Lit::Bool(true))),
                    "false" => return Ok(Cond::Literal(Lit::Bool(false))),
                    "null" => return Ok(Cond::Literal(Lit::Null)),
                    "undefined" => return Ok(Cond::Literal(Lit::Undefined)),
                    _ => {}
                }
                if ["true", "false", "null", "undefined"].iter().any(|l| w.eq_ignore_ascii_case(l))
                {
                    return Err(self.err(pos, format!("`{w}`: the literals true, false, null and undefined are lower-case only")));
                }
                if ["INTO", "WHERE", "AND", "OR", "NOT", "FROM"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k))
                {
                    return Err(
                        self.err(pos, format!("`{w}` is a keyword where a value was expected"))
                    );
                }
                if self.sym("(") {
                    let lower = w.to_ascii_lowercase();
                    let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(n, ..)| *n == lower) else {
                        let hint = if ["is_array", "is_object", "is_primitive"]
                            .contains(&lower.as_str())
                        {
                            " (cloud routes have it; edgeHub does not)"
                        } else if ["startswith", "endswith"].contains(&lower.as_str()) {
                            " (routes spell it with an underscore: STARTS_WITH, ENDS_WITH)"
                        } else {
                            ""
                        };
                        return Err(
                            self.err(pos, format!("`{w}` is not a function edgeHub has{hint}"))
                        );
                    };
                    let mut args = Vec::new();
                    if !self.sym(")") {
                        loop {
                            args.push(self.binary(0)?);
                            if self.sym(")") {
                                break;
                            }
                            if !self.sym(",") {
                                return Err(self.err(
                                    self.pos(),
                                    format!(
                                        "expected `,` or `)` in the arguments of {w}, found {}",
                                        self.found()
                                    ),
                                ));
                            }
                        }
                    }
                    if args.len() < min || args.len() > max {
                        let want = if min == max {
                            min.to_string()
                        } else if max == usize::MAX {
                            format!("at least {min}")
                        } else {
                            format!("{min} to {max}")
                        };
                        return Err(self.err(
                            pos,
                            format!("{w} takes {want} argument(s), not {}", args.len()),
                        ));
                    }
                    return Ok(Cond::Call(lower, args));
                }
                Ok(Cond::App(w))
            }
            other => Err(self.err(pos, format!("expected a value, found {other}"))),
        }
    }
}

/// Literals of different types compared: the runtime refuses to compile the route.
fn type_check(a: &Cond, b: &Cond) -> Result<(), String> {
    let kind = |c: &Cond| match c {
        Cond::Literal(Lit::Bool(_)) => Some("a boolean"),
        Cond::Literal(Lit::Number(_)) => Some("a number"),
        Cond::Literal(Lit::Str(_)) => Some("a string"),
        _ => None,
    };
    match (kind(a), kind(b)) {
        (Some(x), Some(y)) if x != y => {
            Err(format!("compares {x} with {y}; edgeHub refuses to compile the route"))
        }
        _ => Ok(()),
    }
}

impl Route {
    /// Parses a route as edgeHub does.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let toks = lex(text)?;
        if toks.is_empty() {
            return Err(RouteError { position: 1, message: "the route is empty".into() });
        }
        let mut p =
            P { toks, at: 0, end: text.chars().count() + 1, depth: 0, warnings: Vec::new() };
        p.route()
    }

    /// The module the source names, if one.
    pub fn source_module(&self) -> Option<&str> {
        match &self.source {
            Source::Module { module, .. } => Some(module),
            _ => None,
        }
    }

    /// The module the sink names, if one.
    pub fn sink_module(&self) -> Option<&str> {
        match &self.sink {
            Sink::Module { module, .. } => Some(module),
            Sink::Upstream => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(r: &str) -> Route {
        Route::parse(r).unwrap_or_else(|e| panic!("{r}: {e}"))
    }

    fn bad(r: &str) -> RouteError {
        Route::parse(r).expect_err(r)
    }

    #[test]
    fn the_documented_routes_parse() {
        let r = ok(
            "FROM /messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput INTO BrokeredEndpoint(\"/modules/filter/inputs/input1\")",
        );
        assert_eq!(r.source_module(), Some("SimulatedTemperatureSensor"));
        assert_eq!(r.sink, Sink::Module { module: "filter".into(), input: "input1".into() });
        assert_eq!(
            ok("FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream").sink,
            Sink::Upstream
        );
        assert_eq!(ok("select * from /* into $Upstream").source, Source::All);
        assert_eq!(ok("FROM /twinChangeNotifications INTO $upstream").source, Source::TwinChanges);
        assert_eq!(
            ok("FROM /messages/modules/m/outputs/* INTO $upstream").source,
            Source::Module { module: "m".into(), output: Some(None) }
        );
        let r = ok(
            "FROM /messages/modules/m/* WHERE $body.temperature.value > 30.5 AND alert = 'yes' /* hot */ INTO $upstream",
        );
        assert!(r.condition.is_some() && r.warnings.is_empty());
        ok(
            "FROM /messages/* WHERE {$body.a} ?? 1 = 1 OR concat(a, 'x', b) = 'yx' || 'z' INTO $upstream",
        );
        ok(
            "FROM /messages/* WHERE starts_with($messageId, 'a') AND length(a) >= 0x10 INTO $upstream",
        );
    }

    #[test]
    fn bad_routes_are_refused_with_the_position() {
        let e = bad("FROM /messages/* INTO $downstream");
        assert_eq!(e.position, 23);
        let e = bad("FROM messages/* INTO $upstream");
        assert_eq!(e.position, 6);
        let e = bad("FROM /messages/modules/m/inputs/x INTO $upstream");
        assert!(e.message.contains("no message comes"), "{e}");
        let e = bad("FROM /messages/* WHERE a = 'x' INTO BrokeredEndpoint(\"/modules/m\")");
        assert!(e.message.contains("four segments"), "{e}");
        let e = bad("FROM /messages/* WHERE STARTSWITH(a, 'x') INTO $upstream");
        assert_eq!(e.position, 24);
        assert!(e.message.contains("STARTS_WITH"), "{e}");
        let e = bad("FROM /messages/* WHERE IS_OBJECT($body.a) INTO $upstream");
        assert!(e.message.contains("cloud routes"), "{e}");
        let e = bad("FROM /messages/* WHERE a = TRUE INTO $upstream");
        assert!(e.message.contains("lower-case"), "{e}");
        let e = bad("FROM /messages/* WHERE 'a' = 1 INTO $upstream");
        assert!(e.message.contains("refuses to compile"), "{e}");
        let e = bad("FROM /messages/* WHERE $nope = 'a' INTO $upstream");
        assert!(e.message.contains("system property"), "{e}");
        let e = bad("FROM /messages/* WHERE a = 'x INTO $upstream");
        assert_eq!(e.position, 28);
        let e = bad("FROM /messages/* WHERE (a = 'x' INTO $upstream");
        assert_eq!(e.position, 24);
        let e = bad("FROM /messages/* INTO $upstream extra");
        assert!(e.message.contains("after the sink"), "{e}");
        // Found by fuzzing: a lone `|` once made the lexer loop without end.
        assert_eq!(bad("%|\n\n").position, 2);
        assert_eq!(bad("FROM /* WHERE a | b INTO $upstream").position, 17);
        let e = bad("FROM /messages/* WHERE substring(a) = 'x' INTO $upstream");
        assert!(e.message.contains("2 to 3"), "{e}");
        assert_eq!(bad("").position, 1);
        let deep =
            format!("FROM /* WHERE {}a = 1{} INTO $upstream", "(".repeat(5000), ")".repeat(5000));
        assert!(bad(&deep).message.contains("nests deeper"));
    }

    #[test]
    fn what_compiles_but_misleads_is_warned() {
        let r = ok("FROM /* WHERE NOT a = 'x' INTO $upstream");
        assert!(r.warnings[0].message.contains("NOT binds tighter"), "{:?}", r.warnings);
        let r = ok("FROM /* INTO BrokeredEndpoint('/mods/m/in/x')");
        assert!(r.warnings[0].message.contains("documented form"), "{:?}", r.warnings);
    }

    #[test]
    fn the_deepest_nesting_allowed_fits_1_mib_of_stack_and_one_more_is_refused() {
        // Nesting is bounded (MAX_DEPTH), each level a few frames: 1 MiB holds it even in a
        // debug build (serve's threads have 2 MiB). Flat chains need no more than 256 KiB.
        crate::iothub::condition::tests::on_stack(1 << 20, || {
            for (open, close) in [("(", ")"), ("NOT (", ")"), ("-(", ")")] {
                let nested = |n: usize| {
                    format!(
                        "FROM /* WHERE {}a = 1{} INTO $upstream",
                        open.repeat(n),
                        close.repeat(n)
                    )
                };
                let deepest = (1..=MAX_DEPTH).rev().find(|n| Route::parse(&nested(*n)).is_ok());
                assert!(deepest.expect("some nesting parses") >= MAX_DEPTH / 4, "{open}");
                assert!(bad(&nested(MAX_DEPTH + 1)).message.contains("nests deeper"), "{open}");
            }
            let text = format!("FROM /* WHERE a = 1{} INTO $upstream", "%\n(".repeat(40_000));
            assert!(Route::parse(&text).is_err());
        });
    }

    #[test]
    fn long_flat_chains_nest_nothing() {
        crate::iothub::condition::tests::on_small_stack(|| {
            let n = 200_000;
            for (op, term) in [("OR", "a = 1"), ("AND", "a = 1"), ("??", "a"), ("+", "1")] {
                let cond = vec![term; n].join(&format!(" {op} "));
                let r = ok(&format!("FROM /* WHERE {cond} INTO $upstream"));
                let Some(Cond::Chain(_, chain)) = &r.condition else { panic!("{op}: not a chain") };
                assert_eq!(chain.len(), n - 1, "{op}");
                let copy = r.clone();
                assert_eq!(copy, r);
            }
        });
    }
}
