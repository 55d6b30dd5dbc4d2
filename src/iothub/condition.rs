//! Target conditions and metric-query conditions: the part of the IoT Hub twin query language
//! that Edge deployments and configurations use (edge.md §4), parsed once into an expression and
//! evaluated against twins as IoT Hub returns them.
//!
//! - Paths: `deviceId`, `moduleId`, `tags.*`, `properties.desired.*`, `properties.reported.*`,
//!   `capabilities.iotEdge`, `configurations.[[id]].status`, and any other twin field; a
//!   segment in `[[ ]]` may hold any character but `]]` (`tags.[[group]]`, `[[my-config]]`).
//! - Literals: strings in single quotes (a quote is doubled, `'operator''s'`, or escaped `\'`;
//!   `\\`, `\"` and `\uXXXX` too), numbers (decimal, real with exponent, `0x` hex), `true`,
//!   `false`, `null`, `undefined`, and arrays `['a', 'b']` after `IN`/`NIN`.
//! - Operators: `AND`, `OR`, `NOT`, `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `IN`, `NIN`, and `+ -
//!   * / %` on numbers; keywords and function names are case-insensitive.
//! - Functions: `IS_DEFINED` (true for any value, `null` included), `IS_NULL`, `IS_BOOL`,
//!   `IS_NUMBER`, `IS_STRING`, `IS_OBJECT`, `IS_ARRAY`, `IS_PRIMITIVE`, `STARTSWITH(x, y)` and
//!   `ENDSWITH(x, y)` (twin queries spell them without the underscore; the routing spellings
//!   `STARTS_WITH`, `ENDS_WITH` and `CONTAINS` are refused with that hint).
//! - Semantics: comparisons are strictly typed as JSON (`9` is not `'9'`; strings compare
//!   ordinally, so case matters); a missing property is `undefined`, and anything compared
//!   with `undefined` is undefined; only primitives compare (`=` on objects is undefined);
//!   logic is three-valued and a twin matches only when the condition is `true`.
//! - A target condition is `*` (every device), empty (no device) or a condition; double
//!   quotes are refused in target conditions, as IoT Hub does.
//!
//! Every error names the character position (1-based) where it was found.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// A condition that does not parse, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {message}")]
pub struct ConditionError {
    /// 1-based character position in the condition.
    pub position: usize,
    /// What is wrong, and the fix when there is one.
    pub message: String,
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value (`undefined` is [`Expr::Undefined`]).
    Literal(Value),
    /// `undefined`.
    Undefined,
    /// An array literal (right of `IN`/`NIN`).
    Array(Vec<Expr>),
    /// A twin path, segment by segment.
    Path(Vec<String>),
    /// `NOT e`.
    Not(Box<Expr>),
    /// `-e`.
    Neg(Box<Expr>),
    /// A comparison (`=`, `!=`, `<`, ...).
    Binary(Op, Box<Expr>, Box<Expr>),
    /// `a AND b AND ...`: a chain is one node, so a long flat chain nests nothing (evaluating
    /// or dropping it recurses no deeper than a single term).
    And(Vec<Expr>),
    /// `a OR b OR ...`, one node per chain like [`Expr::And`].
    Or(Vec<Expr>),
    /// Arithmetic evaluated left to right: `first op1 e1 op2 e2 ...` (`+ -` or `* / %`), one
    /// node per chain like [`Expr::And`].
    Arith(Box<Expr>, Vec<(Op, Expr)>),
    /// `e IN [..]` (`negated`: `NIN`).
    In {
        /// The value looked for.
        value: Box<Expr>,
        /// The list.
        list: Vec<Expr>,
        /// `NIN`.
        negated: bool,
    },
    /// A function call.
    Call(Func, Vec<Expr>),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`, `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// Functions of twin queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `IS_DEFINED(x)`
    IsDefined,
    /// `IS_NULL(x)`
    IsNull,
    /// `IS_BOOL(x)`
    IsBool,
    /// `IS_NUMBER(x)`
    IsNumber,
    /// `IS_STRING(x)`
    IsString,
    /// `IS_OBJECT(x)`
    IsObject,
    /// `IS_ARRAY(x)`
    IsArray,
    /// `IS_PRIMITIVE(x)`
    IsPrimitive,
    /// `STARTSWITH(x, prefix)`
    StartsWith,
    /// `ENDSWITH(x, suffix)`
    EndsWith,
}

impl Func {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name.to_ascii_uppercase().as_str() {
            "IS_DEFINED" => Self::IsDefined,
            "IS_NULL" => Self::IsNull,
            "IS_BOOL" => Self::IsBool,
            "IS_NUMBER" => Self::IsNumber,
            "IS_STRING" => Self::IsString,
            "IS_OBJECT" => Self::IsObject,
            "IS_ARRAY" => Self::IsArray,
            "IS_PRIMITIVE" => Self::IsPrimitive,
            "STARTSWITH" => Self::StartsWith,
            "ENDSWITH" => Self::EndsWith,
            "STARTS_WITH" | "ENDS_WITH" => {
                return Err(format!(
                    "`{name}` is the message-routing spelling; twin queries write {} (no underscore)",
                    name.to_ascii_uppercase().replace('_', "")
                ));
            }
            "CONTAINS" => {
                return Err(
                    "CONTAINS does not work in twin queries; use STARTSWITH, ENDSWITH or IN".into(),
                );
            }
            _ => {
                return Err(format!(
                    "unknown function `{name}` (twin queries have IS_DEFINED, IS_NULL, IS_BOOL, IS_NUMBER, IS_STRING, IS_OBJECT, IS_ARRAY, IS_PRIMITIVE, STARTSWITH, ENDSWITH)"
                ));
            }
        })
    }

    fn arity(self) -> usize {
        match self {
            Self::StartsWith | Self::EndsWith => 2,
            _ => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::IsDefined => "IS_DEFINED",
            Self::IsNull => "IS_NULL",
            Self::IsBool => "IS_BOOL",
            Self::IsNumber => "IS_NUMBER",
            Self::IsString => "IS_STRING",
            Self::IsObject => "IS_OBJECT",
            Self::IsArray => "IS_ARRAY",
            Self::IsPrimitive => "IS_PRIMITIVE",
            Self::StartsWith => "STARTSWITH",
            Self::EndsWith => "ENDSWITH",
        }
    }
}

/// Which devices a deployment or configuration targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `*`.
    All,
    /// An empty condition: no device.
    Nothing,
    /// Devices the condition is true for.
    Where(Expr),
}

impl Target {
    /// Parses a target condition (double quotes refused, as IoT Hub does).
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(Self::Nothing);
        }
        if t == "*" {
            return Ok(Self::All);
        }
        if let Some(i) = text.chars().position(|c| c == '"') {
            return Err(ConditionError {
                position: i + 1,
                message:
                    "double quotes are not allowed in a target condition; quote strings with '"
                        .into(),
            });
        }
        Expr::parse(text).map(Self::Where)
    }

    /// Whether the twin is targeted.
    pub fn matches(&self, twin: &Value) -> bool {
        match self {
            Self::All => true,
            Self::Nothing => false,
            Self::Where(e) => e.matches(twin),
        }
    }
}

impl Expr {
    /// Parses a condition (the body of a WHERE clause).
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        let tokens = lex(text)?;
        let mut p = Parser { tokens, at: 0, depth: 0, end: text.chars().count() + 1 };
        let e = p.or()?;
        match p.peek() {
            None => Ok(e),
            Some(t) => Err(p.error_at(t.pos, format!("unexpected {} after the condition", t.kind))),
        }
    }

    /// Whether the condition is true for the twin (a JSON twin as IoT Hub returns it).
    pub fn matches(&self, twin: &Value) -> bool {
        self.eval(twin).truth() == Some(true)
    }

    /// Evaluates without copying what it reads: paths and literals are borrowed from the twin
    /// and the expression, only computed values are made.
    fn eval<'a>(&'a self, twin: &'a Value) -> V<'a> {
        match self {
            Expr::Literal(v) => V::Json(Cow::Borrowed(v)),
            Expr::Undefined => V::Undefined,
            Expr::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    match i.eval(twin) {
                        V::Json(v) => out.push(v.into_owned()),
                        V::Undefined => return V::Undefined,
                    }
                }
                V::Json(Cow::Owned(Value::Array(out)))
            }
            Expr::Path(segs) => {
                let mut at = twin;
                for s in segs {
                    match field(at, s) {
                        Some(v) => at = v,
                        None => return V::Undefined,
                    }
                }
                V::Json(Cow::Borrowed(at))
            }
            Expr::Not(e) => match e.eval(twin).truth() {
                Some(b) => V::from_bool(!b),
                None => V::Undefined,
            },
            Expr::Neg(e) => match e.eval(twin).value() {
                Some(Value::Number(n)) => num(-n.as_f64().unwrap_or(f64::NAN)),
                _ => V::Undefined,
            },
            Expr::Binary(op, a, b) => binary(*op, a.eval(twin), b.eval(twin)),
            // Three-valued logic: one false makes AND false and one true makes OR true,
            // wherever it stands; otherwise an undefined term makes the chain undefined.
            Expr::And(items) => logic(items, twin, false),
            Expr::Or(items) => logic(items, twin, true),
            Expr::Arith(first, rest) => {
                rest.iter().fold(first.eval(twin), |acc, (op, e)| binary(*op, acc, e.eval(twin)))
            }
            Expr::In { value, list, negated } => {
                let v = value.eval(twin);
                let Some(v) = v.value() else { return V::Undefined };
                if !primitive(v) {
                    return V::Undefined;
                }
                let found = list.iter().any(|i| i.eval(twin).value().is_some_and(|x| same(v, x)));
                V::from_bool(found != *negated)
            }
            Expr::Call(f, args) => call(*f, args, twin),
        }
    }
}

/// A member of an object. Twin objects are small (a few tags, two property sections), where
/// comparing keys in order is cheaper than hashing the name; larger ones use the map's index.
pub(crate) fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) if m.len() <= 8 => {
            m.iter().find(|(k, _)| k.as_str() == name).map(|(_, x)| x)
        }
        other => other.get(name),
    }
}

/// A value during evaluation: JSON (borrowed when read, owned when computed), or undefined.
#[derive(Debug, Clone, PartialEq)]
enum V<'a> {
    Json(Cow<'a, Value>),
    Undefined,
}

impl V<'_> {
    fn from_bool(b: bool) -> Self {
        V::Json(Cow::Owned(Value::Bool(b)))
    }

    fn value(&self) -> Option<&Value> {
        match self {
            V::Json(v) => Some(v),
            V::Undefined => None,
        }
    }

    /// `Some(b)` for a JSON boolean; anything else (undefined included) is not a truth value.
    fn truth(&self) -> Option<bool> {
        self.value().and_then(Value::as_bool)
    }
}

fn num(x: f64) -> V<'static> {
    serde_json::Number::from_f64(x).map_or(V::Undefined, |n| V::Json(Cow::Owned(Value::Number(n))))
}

fn primitive(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// Strict JSON equality of primitives (numbers by value: 1 = 1.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// An AND chain (`decisive` false) or an OR chain (`decisive` true): the decisive value as soon
/// as a term has it, else undefined when a term was not a boolean, else the other value.
fn logic<'a>(items: &'a [Expr], twin: &'a Value, decisive: bool) -> V<'a> {
    let mut undefined = false;
    for i in items {
        match i.eval(twin).truth() {
            Some(b) if b == decisive => return V::from_bool(decisive),
            Some(_) => {}
            None => undefined = true,
        }
    }
    if undefined { V::Undefined } else { V::from_bool(!decisive) }
}

fn binary<'a>(op: Op, a: V<'a>, b: V<'a>) -> V<'a> {
    let (Some(x), Some(y)) = (a.value(), b.value()) else { return V::Undefined };
    if !primitive(x) || !primitive(y) {
        return V::Undefined;
    }
    match op {
        Op::Eq => V::from_bool(same(x, y)),
        Op::Ne => V::from_bool(!same(x, y)),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let ord = match (x, y) {
                (Value::Number(p), Value::Number(q)) => {
                    p.as_f64().and_then(|p| q.as_f64().and_then(|q| p.partial_cmp(&q)))
                }
                (Value::String(p), Value::String(q)) => Some(p.cmp(q)),
                // Strict typing: no order across types, and none of booleans or null.
                _ => None,
            };
            let Some(o) = ord else { return V::from_bool(false) };
            V::from_bool(match op {
                Op::Lt => o.is_lt(),
                Op::Le => o.is_le(),
                Op::Gt => o.is_gt(),
                _ => o.is_ge(),
            })
        }
        _ => {
            let (Some(p), Some(q)) = (x.as_f64(), y.as_f64()) else { return V::Undefined };
            if !x.is_number() || !y.is_number() {
                return V::Undefined;
            }
            match op {
                Op::Add => num(p + q),
                Op::Sub => num(p - q),
                Op::Mul => num(p * q),
                Op::Div if q != 0.0 => num(p / q),
                Op::Rem if q != 0.0 => num(p % q),
                _ => V::Undefined,
            }
        }
    }
}

fn call<'a>(f: Func, args: &'a [Expr], twin: &'a Value) -> V<'a> {
    let a = args.first().map_or(V::Undefined, |e| e.eval(twin));
    let a = a.value();
    match f {
        Func::IsDefined => V::from_bool(a.is_some()),
        Func::IsNull => V::from_bool(a.is_some_and(Value::is_null)),
        Func::IsBool => V::from_bool(a.is_some_and(Value::is_boolean)),
        Func::IsNumber => V::from_bool(a.is_some_and(Value::is_number)),
        Func::IsString => V::from_bool(a.is_some_and(Value::is_string)),
        Func::IsObject => V::from_bool(a.is_some_and(Value::is_object)),
        Func::IsArray => V::from_bool(a.is_some_and(Value::is_array)),
        Func::IsPrimitive => V::from_bool(a.is_some_and(primitive)),
        Func::StartsWith | Func::EndsWith => {
            let x = args.get(1).map_or(V::Undefined, |e| e.eval(twin));
            match (a.and_then(Value::as_str), x.value().and_then(Value::as_str)) {
                (Some(s), Some(p)) => V::from_bool(if f == Func::StartsWith {
                    s.starts_with(p)
                } else {
                    s.ends_with(p)
                }),
                _ => V::Undefined,
            }
        }
    }
}

// ---- lexer ----

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident(String),
    /// `[[...]]`
    Escaped(String),
    Str(String),
    Num(f64, String),
    Sym(&'static str),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ident(s) => write!(f, "`{s}`"),
            Kind::Escaped(s) => write!(f, "`[[{s}]]`"),
            Kind::Str(s) => write!(f, "string '{s}'"),
            Kind::Num(_, s) => write!(f, "number {s}"),
            Kind::Sym(s) => write!(f, "`{s}`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// 1-based character position.
    pos: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let err = |i: usize, m: String| ConditionError { position: i + 1, message: m };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let sym2: Option<&'static str> = match (c, chars.get(i + 1)) {
            ('!', Some('=')) => Some("!="),
            ('<', Some('>')) => Some("<>"),
            ('<', Some('=')) => Some("<="),
            ('>', Some('=')) => Some(">="),
            _ => None,
        };
        if let Some(s) = sym2 {
            out.push(Token { kind: Kind::Sym(s), pos: start + 1 });
            i += 2;
            continue;
        }
        if c == '[' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            let mut name = String::new();
            loop {
                match (chars.get(j), chars.get(j + 1)) {
                    (Some(']'), Some(']')) => break,
                    (Some(ch), _) => name.push(*ch),
                    (None, _) => return Err(err(start, "`[[` is not closed with `]]`".into())),
                }
                j += 1;
            }
            if name.is_empty() {
                return Err(err(start, "`[[]]` names no property".into()));
            }
            out.push(Token { kind: Kind::Escaped(name), pos: start + 1 });
            i = j + 2;
            continue;
        }
        let sym1: Option<&'static str> = match c {
            '=' => Some("="),
            '<' => Some("<"),
            '>' => Some(">"),
            '(' => Some("("),
            ')' => Some(")"),
            '[' => Some("["),
            ']' => Some("]"),
            ',' => Some(","),
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => Some("."),
            '+' => Some("+"),
            '-' => Some("-"),
            '*' => Some("*"),
            '/' => Some("/"),
            '%' => Some("%"),
            _ => None,
        };
        if let Some(s) = sym1 {
            out.push(Token { kind: Kind::Sym(s), pos: start + 1 });
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            // Twin queries also take a doubled quote inside a string.
            let (s, next) = scan_string(&chars, i, true)
                .map_err(|(at, m)| ConditionError { position: at + 1, message: m })?;
            out.push(Token { kind: Kind::Str(s), pos: start + 1 });
            i = next;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            let mut j = i;
            let text: String;
            if c == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
                j += 2;
                while chars.get(j).is_some_and(char::is_ascii_hexdigit) {
                    j += 1;
                }
                text = chars[i..j].iter().collect();
                let v = u64::from_str_radix(&text[2..], 16)
                    .map_err(|_| err(start, format!("`{text}` is not a hex number")))?;
                out.push(Token { kind: Kind::Num(v as f64, text), pos: start + 1 });
                i = j;
                continue;
            }
            while chars.get(j).is_some_and(|c| c.is_ascii_digit() || *c == '.') {
                j += 1;
            }
            if matches!(chars.get(j), Some('e' | 'E')) {
                let mut k = j + 1;
                if matches!(chars.get(k), Some('+' | '-')) {
                    k += 1;
                }
                if chars.get(k).is_some_and(char::is_ascii_digit) {
                    j = k;
                    while chars.get(j).is_some_and(char::is_ascii_digit) {
                        j += 1;
                    }
                }
            }
            text = chars[i..j].iter().collect();
            let v: f64 =
                text.parse().map_err(|_| err(start, format!("`{text}` is not a number")))?;
            if chars.get(j).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                return Err(err(j, format!("`{}` follows a number", chars[j])));
            }
            out.push(Token { kind: Kind::Num(v, text), pos: start + 1 });
            i = j;
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '$' || c == '@' || c == '#' {
            let mut j = i;
            while chars
                .get(j)
                .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '@' | '#' | '-'))
            {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            out.push(Token { kind: Kind::Ident(word), pos: start + 1 });
            i = j;
            continue;
        }
        return Err(err(start, format!("unexpected character `{c}`")));
    }
    Ok(out)
}

/// Reads the string literal whose opening quote (`'` or `"`) is at `chars[start]`: the escapes
/// `\'`, `\"`, `\\` and `\uXXXX`, and with `doubled` a doubled quote for one quote (twin
/// queries; edgeHub routes take the same escapes without it). Gives the text and the index after the closing quote, or the 0-based index of the
/// error and what is wrong.
pub(crate) fn scan_string(
    chars: &[char],
    start: usize,
    doubled: bool,
) -> Result<(String, usize), (usize, String)> {
    let quote = chars[start];
    let mut s = String::new();
    let mut j = start + 1;
    loop {
        match chars.get(j) {
            None => return Err((start, format!("the string opened here has no closing {quote}"))),
            Some(&q) if q == quote && doubled && chars.get(j + 1) == Some(&quote) => {
                s.push(quote);
                j += 2;
            }
            Some(&q) if q == quote => return Ok((s, j + 1)),
            Some('\\') => {
                match chars.get(j + 1) {
                    Some('\'') => s.push('\''),
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some('u') => {
                        let hex: String = chars.iter().skip(j + 2).take(4).collect();
                        let ch = (hex.len() == 4)
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                (j, "`\\u` needs four hex digits of a character".to_owned())
                            })?;
                        s.push(ch);
                        j += 4;
                    }
                    _ => {
                        let doubled = if doubled { ", or a doubled quote" } else { "" };
                        return Err((
                            j,
                            format!("unknown escape; strings take \\' \\\" \\\\ \\uXXXX{doubled}"),
                        ));
                    }
                }
                j += 2;
            }
            Some(&ch) => {
                s.push(ch);
                j += 1;
            }
        }
    }
}

// ---- parser ----

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Nesting depth (parentheses, NOT, unary minus, calls, arrays), bounded by [`MAX_DEPTH`].
    depth: usize,
    /// Position just past the end (for "expected more" errors).
    end: usize,
}

/// How deep a condition may nest: far beyond what anyone writes, well within the stack.
const MAX_DEPTH: usize = 64;

fn keyword(t: &Token, k: &str) -> bool {
    matches!(&t.kind, Kind::Ident(w) if w.eq_ignore_ascii_case(k))
}

const KEYWORDS: &[&str] = &["AND", "OR", "NOT", "IN", "NIN"];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn error_at(&self, position: usize, message: String) -> ConditionError {
        ConditionError { position, message }
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn eat_keyword(&mut self, k: &str) -> bool {
        if self.peek().is_some_and(|t| keyword(t, k)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if self.peek().is_some_and(|t| matches!(t.kind, Kind::Sym(x) if x == s)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str, what: &str) -> Result<(), ConditionError> {
        if self.eat_sym(s) {
            return Ok(());
        }
        let found = self.peek().map_or("the end".to_owned(), |t| t.kind.to_string());
        Err(self.error_at(self.here(), format!("expected `{s}` {what}, found {found}")))
    }

    fn or(&mut self) -> Result<Expr, ConditionError> {
        let mut items = vec![self.and()?];
        while self.eat_keyword("OR") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::Or(items) })
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut items = vec![self.not()?];
        while self.eat_keyword("AND") {
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::And(items) })
    }

    fn not(&mut self) -> Result<Expr, ConditionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(
                self.error_at(self.here(), format!("the condition nests deeper than {MAX_DEPTH}"))
            );
        }
        let e = if self.eat_keyword("NOT") {
            self.not().map(|e| Expr::Not(Box::new(e)))
        } else {
            self.comparison()
        };
        self.depth -= 1;
        e
    }

    fn comparison(&mut self) -> Result<Expr, ConditionError> {
        let left = self.additive()?;
        let op = match self.peek().map(|t| t.kind.clone()) {
            Some(Kind::Sym("=")) => Op::Eq,
            Some(Kind::Sym("!=" | "<>")) => Op::Ne,
            Some(Kind::Sym("<")) => Op::Lt,
            Some(Kind::Sym("<=")) => Op::Le,
            Some(Kind::Sym(">")) => Op::Gt,
            Some(Kind::Sym(">=")) => Op::Ge,
            Some(Kind::Ident(w))
                if w.eq_ignore_ascii_case("IN") || w.eq_ignore_ascii_case("NIN") =>
            {
                self.at += 1;
                let negated = w.eq_ignore_ascii_case("NIN");
                let open = self.here();
                self.expect_sym("[", &format!("to open the list after {}", w.to_uppercase()))?;
                let mut list = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        list.push(self.additive()?);
                        if self.eat_sym("]") {
                            break;
                        }
                        if !self.eat_sym(",") {
                            return Err(self.error_at(
                                open,
                                "the list opened here is not closed with `]` (items are separated by `,`)".into(),
                            ));
                        }
                    }
                }
                return Ok(Expr::In { value: Box::new(left), list, negated });
            }
            _ => return Ok(left),
        };
        let op_pos = self.here();
        self.at += 1;
        let right = self.additive()?;
        check_types(&left, &right, op_pos)?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, ConditionError> {
        let first = self.multiplicative()?;
        let mut rest = Vec::new();
        loop {
            let op = if self.eat_sym("+") {
                Op::Add
            } else if self.eat_sym("-") {
                Op::Sub
            } else {
                return Ok(arith(first, rest));
            };
            rest.push((op, self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, ConditionError> {
        let first = self.unary()?;
        let mut rest = Vec::new();
        loop {
            let op = if self.eat_sym("*") {
                Op::Mul
            } else if self.eat_sym("/") {
                Op::Div
            } else if self.eat_sym("%") {
                Op::Rem
            } else {
                return Ok(arith(first, rest));
            };
            rest.push((op, self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        self.depth += 1;
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }

    fn unary_inner(&mut self) -> Result<Expr, ConditionError> {
        if self.depth > MAX_DEPTH {
            return Err(
                self.error_at(self.here(), format!("the condition nests deeper than {MAX_DEPTH}"))
            );
        }
        if self.eat_sym("-") {
            // A negative literal stays a literal (so `x = -1` is typed like `x = 1`).
            return Ok(match self.unary()? {
                Expr::Literal(Value::Number(n)) => match num(-n.as_f64().unwrap_or(0.0)) {
                    V::Json(j) => Expr::Literal(j.into_owned()),
                    V::Undefined => Expr::Undefined,
                },
                e => Expr::Neg(Box::new(e)),
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ConditionError> {
        let Some(t) = self.peek().cloned() else {
            return Err(
                self.error_at(self.end, "the condition ends where a value was expected".into())
            );
        };
        self.at += 1;
        match t.kind {
            Kind::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Kind::Num(v, text) => {
                let n = if v.fract() == 0.0
                    && v.abs() < 9.007_199_254_740_992e15
                    && !text.contains(['.', 'e', 'E'])
                {
                    serde_json::Number::from(v as i64)
                } else {
                    serde_json::Number::from_f64(v).ok_or_else(|| {
                        self.error_at(t.pos, format!("`{text}` is not a finite number"))
                    })?
                };
                Ok(Expr::Literal(Value::Number(n)))
            }
            Kind::Sym("(") => {
                let e = self.or()?;
                if !self.eat_sym(")") {
                    return Err(self.error_at(t.pos, "the `(` opened here is not closed".into()));
                }
                Ok(e)
            }
            Kind::Sym("[") => {
                let mut items = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        items.push(self.additive()?);
                        if self.eat_sym("]") {
                            break;
                        }
                        self.expect_sym(",", "between array items")?;
                    }
                }
                Ok(Expr::Array(items))
            }
            Kind::Escaped(name) => self.path(vec![name]),
            Kind::Ident(word) => {
                match word.to_ascii_lowercase().as_str() {
                    "true" => return Ok(Expr::Literal(Value::Bool(true))),
                    "false" => return Ok(Expr::Literal(Value::Bool(false))),
                    "null" => return Ok(Expr::Literal(Value::Null)),
                    "undefined" => return Ok(Expr::Undefined),
                    _ => {}
                }
                if KEYWORDS.iter().any(|k| word.eq_ignore_ascii_case(k)) {
                    return Err(self.error_at(
                        t.pos,
                        format!("`{word}` is a keyword where a value was expected (escape a property of that name as [[{word}]])"),
                    ));
                }
                if self.eat_sym("(") {
                    let f = Func::parse(&word).map_err(|m| self.error_at(t.pos, m))?;
                    let mut args = Vec::new();
                    if !self.eat_sym(")") {
                        loop {
                            args.push(self.or()?);
                            if self.eat_sym(")") {
                                break;
                            }
                            self.expect_sym(",", "between arguments")?;
                        }
                    }
                    if args.len() != f.arity() {
                        return Err(self.error_at(
                            t.pos,
                            format!(
                                "{} takes {} argument(s), not {}",
                                f.name(),
                                f.arity(),
                                args.len()
                            ),
                        ));
                    }
                    return Ok(Expr::Call(f, args));
                }
                self.path(vec![word])
            }
            other => Err(self.error_at(t.pos, format!("expected a value, found {other}"))),
        }
    }

    fn path(&mut self, mut segs: Vec<String>) -> Result<Expr, ConditionError> {
        while self.eat_sym(".") {
            let Some(t) = self.peek().cloned() else {
                return Err(self.error_at(self.end, "a property name must follow `.`".into()));
            };
            self.at += 1;
            match t.kind {
                Kind::Ident(w) => segs.push(w),
                Kind::Escaped(w) => segs.push(w),
                other => {
                    return Err(self.error_at(
                        t.pos,
                        format!("expected a property name after `.`, found {other} (escape odd names as [[name]])"),
                    ));
                }
            }
        }
        Ok(Expr::Path(segs))
    }
}

/// One arithmetic chain node, or the single term when there is no operator.
fn arith(first: Expr, rest: Vec<(Op, Expr)>) -> Expr {
    if rest.is_empty() { first } else { Expr::Arith(Box::new(first), rest) }
}

/// Literals of different JSON types compared with each other can never be true: refused, as
/// IoT Hub's typing would make the condition target nothing.
fn check_types(a: &Expr, b: &Expr, pos: usize) -> Result<(), ConditionError> {
    let kind = |e: &Expr| match e {
        Expr::Literal(Value::String(_)) => Some("a string"),
        Expr::Literal(Value::Number(_)) => Some("a number"),
        Expr::Literal(Value::Bool(_)) => Some("a boolean"),
        _ => None,
    };
    match (kind(a), kind(b)) {
        (Some(x), Some(y)) if x != y => Err(ConditionError {
            position: pos,
            message: format!("compares {x} with {y}: types are strict, so this is never true"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn twin() -> Value {
        json!({
            "deviceId": "operator'sDevice",
            "tags": {"environment": "prod", "location": "westus", "building": 9, "group": "a",
                     "nested": {"x": {"y": 1}}, "list": [1, 2]},
            "properties": {"reported": {"devicemodel": "4000x", "fw": "1.2.3", "nothing": null},
                           "desired": {"$version": 4}},
            "capabilities": {"iotEdge": true},
            "configurations": {"my-config": {"status": "Applied"}},
        })
    }

    fn t(cond: &str) -> bool {
        Target::parse(cond).unwrap_or_else(|e| panic!("{cond}: {e}")).matches(&twin())
    }

    #[test]
    fn the_documented_examples_match_as_iot_hub_says() {
        assert!(t("tags.environment = 'prod' AND tags.location = 'westus'"));
        assert!(t("tags.environment = 'prod' OR tags.location = 'eastus'"));
        assert!(!t("tags.environment = 'prod' AND NOT deviceId = 'operator''sDevice'"));
        assert!(t("deviceId = 'operator''sDevice'"));
        assert!(t("properties.reported.devicemodel = '4000x'"));
        assert!(t("capabilities.iotEdge = true"));
        assert!(t("configurations.[[my-config]].status = 'Applied'"));
        assert!(t("tags.[[group]] = 'a'"));
        assert!(t("properties.desired.$version = 4"));
        assert!(t("*"));
        assert!(!t(""));
        assert!(!t("   "));
    }

    #[test]
    fn typing_is_strict_and_undefined_is_never_true() {
        assert!(t("tags.building = 9"));
        assert!(!t("tags.building = '9'"));
        assert!(!t("tags.missing = 'x'"));
        assert!(!t("tags.missing != 'x'"), "undefined compared is undefined, not true");
        assert!(!t("NOT (tags.missing = 'x')"));
        assert!(t("NOT IS_DEFINED(tags.missing)"));
        assert!(t("IS_DEFINED(properties.reported.nothing)"), "null is defined");
        assert!(t("IS_NULL(properties.reported.nothing)"));
        assert!(!t("tags.nested = tags.nested"), "objects do not compare");
        assert!(t("tags.environment = 'prod' OR tags.missing = 1"), "true OR undefined");
        assert!(!t("tags.environment = 'PROD'"), "ordinal, case-sensitive");
        assert!(t("tags.building > 8 AND tags.building <= 9 AND tags.building <> 10"));
        assert!(!t("tags.environment > 5"));
        assert!(t("tags.building * 2 + 1 = 19 AND tags.building % 2 = 1 AND -tags.building = -9"));
        assert!(t("tags.building = 0x9 AND tags.building = 9.0 AND tags.building < 1e3"));
    }

    #[test]
    fn functions_and_lists() {
        assert!(t("STARTSWITH(properties.reported.fw, '1.2') AND ENDSWITH(deviceId, 'Device')"));
        assert!(t("startswith(deviceId, 'op')"), "function names are case-insensitive");
        assert!(t("tags.location IN ['eastus', 'westus']"));
        assert!(t("tags.location NIN ['eastus']"));
        assert!(!t("tags.missing NIN ['eastus']"));
        assert!(t("tags.building in [1, 9]"));
        assert!(!t("tags.building IN ['9']"));
        assert!(t(
            "IS_NUMBER(tags.building) AND IS_STRING(deviceId) AND IS_BOOL(capabilities.iotEdge)"
        ));
        assert!(t(
            "IS_OBJECT(tags.nested) AND IS_ARRAY(tags.list) AND IS_PRIMITIVE(tags.building)"
        ));
        assert!(t("tags.nested.x.y = 1"));
    }

    /// Runs `f` on a thread with a small stack: what a flat chain costs must not grow with it.
    pub(crate) fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        on_stack(256 * 1024, f);
    }

    /// Runs `f` on a thread with a stack of `bytes`. Nesting is bounded ([`MAX_DEPTH`]), a few
    /// frames a level: 1 MiB holds it even in a debug build (serve's threads have 2 MiB).
    pub(crate) fn on_stack(bytes: usize, f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new().stack_size(bytes).spawn(f).unwrap().join().unwrap();
    }

    fn err(cond: &str) -> ConditionError {
        Target::parse(cond).expect_err(cond)
    }

    #[test]
    fn the_deepest_nesting_allowed_is_evaluated_within_1_mib_of_stack() {
        on_stack(1 << 20, || {
            let twin = twin();
            for (open, close) in [("(", ")"), ("NOT (", ")")] {
                let nested =
                    |n: usize| format!("{}tags.building = 8{}", open.repeat(n), close.repeat(n));
                let deepest = (1..=MAX_DEPTH).rev().find(|n| Expr::parse(&nested(*n)).is_ok());
                let deepest = deepest.expect("some nesting parses");
                assert!(deepest >= MAX_DEPTH / 4, "{open}: {deepest}");
                assert!(!Expr::parse(&nested(deepest)).unwrap().matches(&twin));
                assert!(Expr::parse(&nested(MAX_DEPTH + 1)).is_err(), "{open}");
            }
        });
    }

    #[test]
    fn long_flat_chains_are_evaluated_without_deep_recursion() {
        // Found by an attacker's pass: 7,000 ORs in a twin query overflowed serve's stack.
        on_small_stack(|| {
            let twin = twin();
            let chain = |op: &str, term: &str, n: usize| vec![term; n].join(op);
            let e = Expr::parse(&chain(" OR ", "tags.building = 8", 20_000)).unwrap();
            assert!(!e.matches(&twin));
            let e =
                Expr::parse(&format!("{} OR tags.building = 9", chain(" OR ", "a = 1", 20_000)))
                    .unwrap();
            assert!(e.matches(&twin), "a true term anywhere makes an OR chain true");
            let e = Expr::parse(&chain(" AND ", "tags.building = 9", 20_000)).unwrap();
            assert!(e.matches(&twin));
            let e = Expr::parse(&format!("{} = 20000", chain(" + ", "1", 20_000))).unwrap();
            assert!(e.matches(&twin));
            let e = Expr::parse(&format!("{} = 1", chain(" * ", "1", 20_000))).unwrap();
            assert!(e.matches(&twin));
            assert_eq!(e.clone(), e);
            let t = Target::parse(&chain(" or ", "tags.x = 1", 20_000)).unwrap();
            assert!(!t.matches(&twin));
        });
    }

    #[test]
    fn errors_give_the_position_and_the_fix() {
        let e = err("tags.environment = \"prod\"");
        assert_eq!(e.position, 20);
        assert!(e.message.contains("double quotes"), "{e}");
        let e = err("tags.environment = 'prod");
        assert_eq!(e.position, 20);
        let e = err("tags.env = 'a' AND");
        assert!(e.message.contains("ends where a value"), "{e}");
        let e = err("STARTS_WITH(deviceId, 'a')");
        assert_eq!(e.position, 1);
        assert!(e.message.contains("STARTSWITH"), "{e}");
        let e = err("tags.a = 'x' tags.b = 'y'");
        assert_eq!(e.position, 14);
        let e = err("(tags.a = 'x'");
        assert_eq!(e.position, 1);
        let e = err("tags.group.and = 1 AND tags.x IN ['a' 'b']");
        assert!(e.message.contains("`]`"), "{e}");
        let e = err("9 = '9'");
        assert!(e.message.contains("never true"), "{e}");
        let e = err("IS_DEFINED(tags.a, tags.b)");
        assert!(e.message.contains("takes 1"), "{e}");
        let e = err("tags.[[a");
        assert_eq!(e.position, 6);
        let deep = format!("{}tags.a = 1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(err(&deep).message.contains("nests deeper"));
        let deep = format!("{}tags.a = 1", "NOT ".repeat(10_000));
        assert!(err(&deep).message.contains("nests deeper"));
        let deep = format!("tags.a = {}1", "-".repeat(10_000));
        assert!(err(&deep).message.contains("nests deeper"));
        let e = err("tags.a = 'x' AND OR");
        assert_eq!(e.position, 18);
        assert!(e.message.contains("[[OR]]"), "{e}");
    }
}
