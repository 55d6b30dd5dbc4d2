//! `cargo xtask tidy`: rules of the house that a compiler and clippy do not check, read from the
//! source text (as rust-analyzer's `xtask tidy` does), run by `cargo xtask ci` after clippy:
//!
//! - environment variable names are spelled only in `src/env.rs`: no other file under `src/`
//!   has a string literal that is one of its names, or passes a literal to `env::var`,
//!   `var_os`, `set_var`, `remove_var`, `.env` or `.env_remove`;
//! - `--help`'s environment list (`ENV_HELP` in `src/cli/mod.rs`) names every one of them;
//! - the library (`src/` but the CLI) has no more `Result<_, String>` than the baseline in
//!   `xtask/tidy/result-string-baseline.txt`, which only ever goes down;
//! - no function in `src/` is longer than [`MAX_FN_LINES`] lines, but those in
//!   `xtask/tidy/long-functions.txt` (the lexers, and code other work is splitting now);
//! - every `#[ignore]` in `src/`, `tests/` and `xtask/` says why (`#[ignore = "needs TOOL"]`).
//!
//! A small lexer of Rust's surface syntax (comments, strings, raw strings, chars and
//! lifetimes) keeps comments and string contents from being read as code.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The longest a function may be, from `fn` to its closing brace.
pub(crate) const MAX_FN_LINES: usize = 120;

/// The allow-list of long functions, relative to the workspace root.
const LONG_FUNCTIONS: &str = "xtask/tidy/long-functions.txt";
/// The committed count of `Result<_, String>` in the library.
const RESULT_STRING_BASELINE: &str = "xtask/tidy/result-string-baseline.txt";
const VALUE_INDEX_BASELINE: &str = "xtask/tidy/value-index-baseline.txt";

pub(crate) fn run() -> anyhow::Result<()> {
    let root = crate::root();
    let src = rust_files(&root.join("src"))?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();

    let env_rs = read(&root.join("src/env.rs"))?;
    let names = env_names(&env_rs);
    if names.is_empty() {
        bail!("src/env.rs declares no environment variable (pub const NAME: &str = \"NAME\")");
    }
    for (path, text) in &src {
        if path.ends_with("src/env.rs") {
            continue;
        }
        for (line, what) in env_literals(text, &names) {
            problems.push(format!(
                "{}:{line}: {what}: environment variable names live in src/env.rs (use otaforge::env::NAME)",
                rel(&root, path)
            ));
        }
    }
    let cli = read(&root.join("src/cli/mod.rs"))?;
    for missing in missing_from_help(&cli, &names)? {
        problems.push(format!(
            "src/cli/mod.rs: ENV_HELP does not list {missing}, which src/env.rs declares"
        ));
    }

    let library = src.iter().filter(|(p, _)| !is_cli(&root, p));
    let count: usize = library.map(|(_, t)| result_strings(t)).sum();
    let baseline = baseline_number(&root, RESULT_STRING_BASELINE)?;
    if count > baseline {
        problems.push(format!(
            "the library has {count} `Result<_, String>`, more than the baseline {baseline}: \
             give the new ones an error type (thiserror, one enum per module)"
        ));
    } else if count < baseline {
        notes.push(format!(
            "the library has {count} `Result<_, String>`, fewer than the baseline {baseline}: \
             lower the number in {RESULT_STRING_BASELINE} to {count}"
        ));
    }

    // Documents of known shape are typed; a string-key index (`v["key"]`) is for user content
    // only (conventions: "Nobody indexes serde_json::Value with string keys outside a
    // parser"), and the count may only go down.
    // Test modules in files of their own (`tests.rs`) build documents as they like.
    let code = || src.iter().filter(|(p, _)| !p.ends_with("tests.rs"));
    let indexed: usize = code().map(|(_, t)| string_indexings(t).len()).sum();
    let allowed_index = baseline_number(&root, VALUE_INDEX_BASELINE)?;
    if indexed > allowed_index {
        let mut at = Vec::new();
        for (path, text) in code() {
            at.extend(
                string_indexings(text).into_iter().map(|l| format!("{}:{l}", rel(&root, path))),
            );
        }
        problems.push(format!(
            "src has {indexed} string-key indexings (`x[\"key\"]`), more than the baseline \
             {allowed_index}: give the document a type (serde), keep Value for user content only ({})",
            at.join(", ")
        ));
    } else if indexed < allowed_index {
        notes.push(format!(
            "src has {indexed} string-key indexings, fewer than the baseline {allowed_index}: \
             lower the number in {VALUE_INDEX_BASELINE} to {indexed}"
        ));
    }

    let allowed = long_function_allow_list(&read(&root.join(LONG_FUNCTIONS))?);
    let mut seen = Vec::new();
    for (path, text) in &src {
        let file = rel(&root, path);
        for f in functions(text) {
            if f.lines <= MAX_FN_LINES {
                continue;
            }
            let key = format!("{file}::{}", f.name);
            if allowed.contains(&key) {
                seen.push(key);
            } else {
                problems.push(format!(
                    "{file}:{}: fn {} is {} lines, over the budget of {MAX_FN_LINES}: split it into named steps",
                    f.line, f.name, f.lines
                ));
            }
        }
    }
    for stale in allowed.iter().filter(|a| !seen.contains(a)) {
        notes.push(format!(
            "{stale} is in {LONG_FUNCTIONS} but no longer over {MAX_FN_LINES} lines (or gone): \
             take it off the list"
        ));
    }

    let mut all = src;
    all.extend(rust_files(&root.join("tests"))?);
    all.extend(rust_files(&root.join("xtask/src"))?);
    for (path, text) in &all {
        for line in bare_ignores(text) {
            problems.push(format!(
                "{}:{line}: #[ignore] without a reason: write #[ignore = \"needs TOOL: ...\"]",
                rel(&root, path)
            ));
        }
    }

    for n in &notes {
        eprintln!("tidy: note: {n}");
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("tidy: {} problem(s)", problems.len());
    }
    eprintln!("tidy: ok ({count} Result<_, String> in the library, baseline {baseline})");
    Ok(())
}

/// The number a baseline file holds (its first line that is not a comment).
fn baseline_number(root: &Path, file: &str) -> anyhow::Result<usize> {
    read(&root.join(file))?
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{file} holds no number"))
}

/// The lines of `text` (before its `#[cfg(test)]` module) that index a value with a string
/// key: an expression's end (a name, `)` or `]`) followed by `["..."]`. Slice patterns and
/// array literals (`["*"] =>`, `&["a"]`, `vec!["a"]`) are not indexing.
fn string_indexings(text: &str) -> Vec<usize> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let toks = lex(code);
    let mut lines = Vec::new();
    for w in toks.windows(4) {
        let ends_expression = matches!(&w[0].0, Tok::Ident(_) | Tok::Punct(')' | ']'));
        if ends_expression
            && w[1].0 == Tok::Punct('[')
            && matches!(w[2].0, Tok::Str(_))
            && w[3].0 == Tok::Punct(']')
        {
            lines.push(w[1].1);
        }
    }
    lines
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// The CLI (`src/main.rs`, `src/cli/`), which may use `String` errors through anyhow.
fn is_cli(root: &Path, path: &Path) -> bool {
    let r = path.strip_prefix(root).unwrap_or(path);
    r.starts_with("src/cli") || r == Path::new("src/main.rs")
}

/// Every `.rs` file under `dir`, sorted, with its text.
fn rust_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?;
        for e in entries {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = read(&path)?;
                out.push((path, text));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A token of Rust's surface syntax, with its line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier or keyword.
    Ident(String),
    /// A string literal's contents (escapes left as written), raw and byte strings included.
    Str(String),
    /// Any other character that is not white space (numbers come out digit by digit).
    Punct(char),
}

/// Splits `text` into tokens, dropping comments, white space, chars and lifetimes.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let newlines = |s: &[u8]| s.iter().filter(|&&c| c == b'\n').count();
    while i < b.len() {
        let c = b[i];
        let start_line = line;
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            // Block comments nest.
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            line += newlines(&b[i..j.min(b.len())]);
            i = j;
        } else if let Some((len, body)) = raw_string(&b[i..]) {
            out.push((Tok::Str(String::from_utf8_lossy(body).into_owned()), start_line));
            line += newlines(&b[i..i + len]);
            i += len;
        } else if c == b'"' || (c == b'b' && b.get(i + 1) == Some(&b'"')) {
            let open = if c == b'b' { i + 1 } else { i };
            let mut j = open + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let body = &b[open + 1..j.min(b.len())];
            out.push((Tok::Str(String::from_utf8_lossy(body).into_owned()), start_line));
            line += newlines(&b[i..j.min(b.len())]);
            i = j + 1;
        } else if c == b'\'' {
            // A char literal ('a', '\n', '\u{1F600}', b'x' was taken as an ident + this) or a
            // lifetime ('a): a char closes within a few bytes, a lifetime never does.
            let close = if b.get(i + 1) == Some(&b'\\') {
                // The escaped character itself may be a quote ('\'').
                b.get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&x| x == b'\''))
                    .map(|p| i + 3 + p)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 1 + ch)
            };
            match close {
                Some(end) => i = end + 1,
                None => {
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Ident(text[s..i].to_owned()), start_line));
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push((Tok::Punct(ch), start_line));
            i += ch.len_utf8();
        }
    }
    out
}

/// A raw string (`r"…"`, `r#"…"#`, `br#"…"#`) at the start of `b`: its length and contents.
fn raw_string(b: &[u8]) -> Option<(usize, &[u8])> {
    let after_prefix = if b.starts_with(b"br") {
        2
    } else if b.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = b[after_prefix..].iter().take_while(|&&c| c == b'#').count();
    let open = after_prefix + hashes;
    if b.get(open) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let end = b[open + 1..].windows(close.len()).position(|w| w == close.as_slice())?;
    Some((open + 1 + end + close.len(), &b[open + 1..open + 1 + end]))
}

/// The names `src/env.rs` declares: the values of its `pub const NAME: &str = "...";`.
fn env_names(env_rs: &str) -> Vec<String> {
    let toks = lex(env_rs);
    let mut out = Vec::new();
    for (i, (t, _)) in toks.iter().enumerate() {
        let is_const = *t == Tok::Ident("const".into())
            && matches!(toks.get(i + 1), Some((Tok::Ident(_), _)))
            && toks.get(i + 2).map(|t| &t.0) == Some(&Tok::Punct(':'));
        if !is_const {
            continue;
        }
        let value = toks[i..].iter().take_while(|(t, _)| *t != Tok::Punct(';')).find_map(
            |(t, _)| match t {
                Tok::Str(s) => Some(s.clone()),
                _ => None,
            },
        );
        out.extend(value);
    }
    out
}

/// The functions that read or set the environment by name.
const ENV_FUNCTIONS: [&str; 6] = ["var", "var_os", "set_var", "remove_var", "env", "env_remove"];

/// Literals in `text` that spell an environment variable name: `(line, what)`.
fn env_literals(text: &str, names: &[String]) -> Vec<(usize, String)> {
    let toks = lex(text);
    let mut out = Vec::new();
    for (i, (t, line)) in toks.iter().enumerate() {
        let Tok::Str(s) = t else { continue };
        let passed = i >= 2
            && toks[i - 1].0 == Tok::Punct('(')
            && matches!(&toks[i - 2].0, Tok::Ident(f) if ENV_FUNCTIONS.contains(&f.as_str()))
            && i >= 3
            && matches!(toks[i - 3].0, Tok::Punct('.') | Tok::Punct(':'));
        if names.contains(s) {
            out.push((*line, format!("\"{s}\"")));
        } else if passed {
            out.push((*line, format!("\"{s}\" passed to an environment function")));
        }
    }
    out
}

/// The names `ENV_HELP` in the CLI's `mod.rs` does not mention.
fn missing_from_help(cli_mod: &str, names: &[String]) -> anyhow::Result<Vec<String>> {
    let toks = lex(cli_mod);
    let at = toks
        .iter()
        .position(|(t, _)| *t == Tok::Ident("ENV_HELP".into()))
        .context("src/cli/mod.rs has no ENV_HELP")?;
    let help = toks[at..]
        .iter()
        .find_map(|(t, _)| match t {
            Tok::Str(s) => Some(s.clone()),
            _ => None,
        })
        .context("ENV_HELP is not a string literal")?;
    let words: Vec<&str> = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
    Ok(names.iter().filter(|n| !words.contains(&n.as_str())).cloned().collect())
}

/// How many `Result<…, String>` types `text` spells (the error type at the top level of the
/// angle brackets).
fn result_strings(text: &str) -> usize {
    let toks = lex(text);
    let mut n = 0;
    for (i, (t, _)) in toks.iter().enumerate() {
        if *t != Tok::Ident("Result".into())
            || toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Punct('<'))
        {
            continue;
        }
        let mut depth = 0i32;
        let mut last_top: Vec<&Tok> = Vec::new();
        for (t, _) in &toks[i + 1..] {
            match t {
                Tok::Punct('<') => depth += 1,
                // `->` inside `Result<fn() -> T, E>` is not a closing bracket; rare enough to
                // ignore, but never let depth go below the opening one.
                Tok::Punct('>') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Tok::Punct(',') if depth == 1 => last_top.clear(),
                other if depth >= 1 => last_top.push(other),
                _ => {}
            }
        }
        if last_top == [&Tok::Ident("String".into())] {
            n += 1;
        }
    }
    n
}

/// A function found in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Function {
    name: String,
    /// The line of `fn`.
    line: usize,
    /// Lines from `fn` to the closing brace, both included.
    lines: usize,
}

/// Every function with a body in `text` (nested ones too).
fn functions(text: &str) -> Vec<Function> {
    let toks = lex(text);
    let mut out = Vec::new();
    for (i, (t, line)) in toks.iter().enumerate() {
        if *t != Tok::Ident("fn".into()) {
            continue;
        }
        let Some((Tok::Ident(name), _)) = toks.get(i + 1) else { continue };
        // The body's `{`, unless a `;` at the signature's top level ends a declaration.
        let mut depth = 0i32;
        let mut open = None;
        for (j, (t, _)) in toks.iter().enumerate().skip(i + 2) {
            match t {
                Tok::Punct('(' | '[') => depth += 1,
                Tok::Punct(')' | ']') => depth -= 1,
                Tok::Punct(';') if depth == 0 => break,
                Tok::Punct('{') if depth == 0 => {
                    open = Some(j);
                    break;
                }
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let mut braces = 0i32;
        for (t, end_line) in &toks[open..] {
            match t {
                Tok::Punct('{') => braces += 1,
                Tok::Punct('}') => {
                    braces -= 1;
                    if braces == 0 {
                        out.push(Function {
                            name: name.clone(),
                            line: *line,
                            lines: end_line - line + 1,
                        });
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The allow-list's entries (`path::fn`), comments and blank lines skipped.
fn long_function_allow_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lines of `#[ignore]` attributes that give no reason.
fn bare_ignores(text: &str) -> Vec<usize> {
    let toks = lex(text);
    toks.windows(4)
        .filter(|w| {
            w[0].0 == Tok::Punct('#')
                && w[1].0 == Tok::Punct('[')
                && w[2].0 == Tok::Ident("ignore".into())
                && w[3].0 == Tok::Punct(']')
        })
        .map(|w| w[0].1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lexer_skips_comments_strings_chars_and_lifetimes() {
        let text = "fn a<'x>(s: &'x str) -> char { /* { */ let _ = \"}\"; '}' }\n// fn b() {\nfn c() { r#\"}\"#; b\"{\"; '\\''; }";
        let fns = functions(text);
        let names: Vec<&str> = fns.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!((fns[1].line, fns[1].lines), (3, 1));
        let toks = lex("let s = r##\"a \"# b\"##; x");
        assert_eq!(toks[3].0, Tok::Str("a \"# b".into()));
    }

    #[test]
    fn a_function_counts_from_fn_to_its_closing_brace() {
        let long =
            format!("/// doc\nfn long() {{\n{}}}\nfn decl(x: [u8; 4]);\n", "    x;\n".repeat(130));
        assert_eq!(functions(&long), [Function { name: "long".into(), line: 2, lines: 132 }]);
    }

    #[test]
    fn environment_names_are_found_as_literals_and_as_arguments() {
        let names =
            env_names("/// d\npub const CI: &str = \"CI\";\npub const HOME: &str = \"HOME\";\n");
        assert_eq!(names, ["CI", "HOME"]);
        let code = "let a = std::env::var(\"FOO\");\nlet b = x.get(\"CI\");\nlet c = cmd.env(otaforge::env::CI, \"1\");\n// std::env::var(\"BAR\")\nlet d = \"CI is set\";";
        let found: Vec<usize> = env_literals(code, &names).into_iter().map(|(l, _)| l).collect();
        assert_eq!(found, [1, 2]);
    }

    #[test]
    fn the_help_must_name_every_variable() {
        let cli = "const ENV_HELP: &str = \"\\\nEnvironment:\n  CI  when set\n  NO_COLORS typo\";";
        let names = vec!["CI".to_owned(), "NO_COLOR".to_owned()];
        assert_eq!(missing_from_help(cli, &names).unwrap(), ["NO_COLOR"]);
    }

    #[test]
    fn result_string_counts_only_a_string_error() {
        let text = "fn a() -> Result<(), String> {}\nfn b() -> Result<Vec<String>, E> {}\nfn c() -> std::result::Result<HashMap<String, u8>, String> {}\n// Result<(), String>\ntype R = Result<String, Error>;";
        assert_eq!(result_strings(text), 2);
    }

    #[test]
    fn string_indexings_are_told_from_patterns_and_literals() {
        let text = "let a = v[\"k\"];\nlet b = f()[\"x\"][\"y\"];\nmatch s { [\"*\"] => 1 }\nlet c = &[\"a\"];\nlet d = vec![\"a\"];\n#[cfg(test)]\nmod tests { let e = v[\"t\"]; }";
        assert_eq!(string_indexings(text), [1, 2, 2]);
    }

    #[test]
    fn an_ignore_needs_a_reason() {
        let text = "#[test]\n#[ignore]\nfn a() {}\n#[ignore = \"needs bsdiff: cargo xtask ci provisions it\"]\nfn b() {}\n// #[ignore]\n";
        assert_eq!(bare_ignores(text), [2]);
    }

    #[test]
    fn the_allow_list_reads_entries_and_skips_comments() {
        let list = "# why\nsrc/a.rs::f  # the lexer\n\nsrc/b.rs::g\n";
        assert_eq!(long_function_allow_list(list), ["src/a.rs::f", "src/b.rs::g"]);
    }
}
