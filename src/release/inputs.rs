//! What a release reads from the firmware repository, and what it refuses to ship: artifact
//! globs expanded without following a directory symlink loop and with a bound on the work,
//! files kept inside the repository (the folder of `otaforge.toml`) unless the description
//! opts out, and private keys recognised by their content (PEM blocks of any `… PRIVATE KEY`
//! label, PKCS#8 DER as RFC 5208 and RFC 5958 define it, and OpenSSH's `openssh-key-v1`
//! format) so that none is ever shipped.

use std::path::{Path, PathBuf};

/// At most this many directory entries are looked at to expand one artifact glob: far more
/// than a build folder holds, and small enough that a glob through a tree of symlinks ends in
/// well under a second.
pub const MAX_GLOB_ENTRIES: usize = 100_000;

/// A PEM block farther than this from its `BEGIN` line is not looked for (a 16,384-bit RSA key
/// in PEM is about 13 KB).
const MAX_PEM_BODY: usize = 64 * 1024;

/// A file the release cannot take.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The glob does not parse.
    #[error("`{pattern}` is not a valid glob: {message} at character {position}")]
    BadGlob {
        /// The glob as written.
        pattern: String,
        /// What is wrong.
        message: &'static str,
        /// Where, 0-based.
        position: usize,
    },
    /// Expanding the glob looks at too many entries (a tree of symlinks, or a glob too wide).
    #[error(
        "`{pattern}` looks at more than {MAX_GLOB_ENTRIES} files and folders; name the folder the file is in more precisely"
    )]
    TooWide {
        /// The glob as written.
        pattern: String,
    },
    /// The file resolves outside the repository and the description does not allow that.
    #[error(
        "`{written}` resolves to {}, outside the repository {}; move the file into it, or set outside-repository = true if shipping it from there is intended",
        resolved.display(),
        root.display()
    )]
    Outside {
        /// The path as written.
        written: String,
        /// Where it leads.
        resolved: PathBuf,
        /// The repository (the folder of otaforge.toml).
        root: PathBuf,
    },
    /// The file is the signing key.
    #[error("`{written}` is the signing key ([signing] key); a release never ships a private key")]
    SigningKey {
        /// The path as written.
        written: String,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Every regular file `pattern` (relative to `root`, or absolute) matches, sorted. A literal
/// path is looked up directly. `*`, `?` and `[…]` stay within one path component and `**`
/// spans any number; a directory reached again below itself through a symlink is not entered
/// a second time, and at most [`MAX_GLOB_ENTRIES`] entries are looked at.
pub fn expand(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, InputError> {
    let written = Path::new(pattern);
    let start = if written.is_absolute() { PathBuf::new() } else { root.to_owned() };
    // The literal leading components are walked to directly; the rest is matched.
    let (mut base, mut rest) = (PathBuf::new(), Vec::new());
    for c in written.components() {
        let text = c.as_os_str().to_string_lossy();
        if rest.is_empty() && !has_meta(&text) {
            base.push(c);
        } else {
            rest.push(text.into_owned());
        }
    }
    if rest.is_empty() {
        let path = start.join(&base);
        return Ok(if path.is_file() { vec![path] } else { Vec::new() });
    }
    let normalized: PathBuf = written.components().collect();
    let matcher = glob::Pattern::new(&normalized.to_string_lossy()).map_err(|e| {
        InputError::BadGlob { pattern: pattern.to_owned(), message: e.msg, position: e.pos }
    })?;
    let max_depth = if rest.iter().any(|c| c.contains("**")) { usize::MAX } else { rest.len() };
    let mut walk = Walk {
        start: &start,
        pattern,
        matcher: &matcher,
        max_depth,
        seen: 0,
        ancestors: Vec::new(),
        found: Vec::new(),
    };
    if let Some(id) = dir_id(&start.join(&base)) {
        walk.ancestors.push(id);
        walk.dir(&base, 1)?;
    }
    let mut found = walk.found;
    found.sort();
    Ok(found)
}

fn has_meta(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// A directory's identity (device and inode), following symlinks; None when it is not one.
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs_err::metadata(path).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

/// One glob's expansion in progress.
struct Walk<'a> {
    start: &'a Path,
    pattern: &'a str,
    matcher: &'a glob::Pattern,
    max_depth: usize,
    seen: usize,
    /// The directories from the base down to the one being read, to notice a loop.
    ancestors: Vec<(u64, u64)>,
    found: Vec<PathBuf>,
}

impl Walk<'_> {
    /// Reads the directory `rel` (relative to `start`), `depth` components below the base.
    fn dir(&mut self, rel: &Path, depth: usize) -> Result<(), InputError> {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        // An unreadable folder holds no match, as for the shell's globs.
        let Ok(entries) = fs_err::read_dir(self.start.join(rel)) else { return Ok(()) };
        let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            self.seen += 1;
            if self.seen > MAX_GLOB_ENTRIES {
                return Err(InputError::TooWide { pattern: self.pattern.to_owned() });
            }
            let child = rel.join(&name);
            let path = self.start.join(&child);
            // A dangling symlink is no file.
            let Ok(meta) = fs_err::metadata(&path) else { continue };
            if meta.is_file() && self.matcher.matches_path_with(&child, options) {
                self.found.push(path);
            } else if meta.is_dir() && depth < self.max_depth {
                use std::os::unix::fs::MetadataExt as _;
                let id = (meta.dev(), meta.ino());
                // A symlink back to a folder above: everything below it is already being read.
                if self.ancestors.contains(&id) {
                    continue;
                }
                self.ancestors.push(id);
                let r = self.dir(&child, depth + 1);
                self.ancestors.pop();
                r?;
            }
        }
        Ok(())
    }
}

/// `file` (which exists), resolved with every symlink followed, when it is inside `root`;
/// else [`InputError::Outside`] naming where it leads.
pub fn inside(root: &Path, written: &str, file: &Path) -> Result<PathBuf, InputError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| InputError::Io { path, source }
    };
    let root = fs_err::canonicalize(root).map_err(io(root))?;
    let resolved = fs_err::canonicalize(file).map_err(io(file))?;
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(InputError::Outside { written: written.to_owned(), resolved, root })
    }
}

/// A private key format found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivateKey {
    /// A PEM block whose label ends in `PRIVATE KEY` (PKCS#8, PKCS#1, SEC1, OpenSSH,
    /// encrypted), anywhere in the file.
    Pem(String),
    /// The whole file is a DER PKCS#8 `PrivateKeyInfo` / `OneAsymmetricKey`, or an
    /// `EncryptedPrivateKeyInfo`.
    Pkcs8Der,
    /// The whole file is OpenSSH's binary private key format.
    OpenSsh,
}

impl std::fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pem(label) => write!(f, "a PEM \"{label}\" block"),
            Self::Pkcs8Der => f.write_str("a PKCS#8 private key (DER)"),
            Self::OpenSsh => f.write_str("an OpenSSH private key"),
        }
    }
}

/// The private key `bytes` hold, if any. A PEM block counts only with its body (base64 of at
/// least 24 bytes) and its matching `END` line, so a program that merely contains the strings
/// `-----BEGIN EC PRIVATE KEY-----` (a TLS library's PEM parser does) is not one.
pub fn private_key(bytes: &[u8]) -> Option<PrivateKey> {
    if bytes.starts_with(b"openssh-key-v1\0") {
        return Some(PrivateKey::OpenSsh);
    }
    if is_pkcs8_der(bytes) {
        return Some(PrivateKey::Pkcs8Der);
    }
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], BEGIN) {
        let start = at + i + BEGIN.len();
        at = start;
        let Some(label) = pem_label(&bytes[start..]) else { continue };
        if !label.ends_with("PRIVATE KEY") {
            continue;
        }
        let body_start = start + label.len() + 5;
        let end_line = format!("-----END {label}-----");
        let window = &bytes[body_start..bytes.len().min(body_start + MAX_PEM_BODY)];
        if let Some(n) = find(window, end_line.as_bytes())
            && is_pem_body(&window[..n])
        {
            return Some(PrivateKey::Pem(label));
        }
    }
    None
}

/// The label of a `-----BEGIN LABEL-----` line whose `-----BEGIN ` is just before `b`.
fn pem_label(b: &[u8]) -> Option<String> {
    let end = find(&b[..b.len().min(80)], b"-----")?;
    let label = std::str::from_utf8(&b[..end]).ok()?;
    label
        .bytes()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ')
        .then(|| label.to_owned())
}

/// Base64 lines (and RFC 1421 headers such as `Proc-Type:`) holding at least 24 bytes.
fn is_pem_body(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else { return false };
    let mut chars = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains(':') {
            continue;
        }
        if !line.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
            return false;
        }
        chars += line.len();
    }
    chars >= 32
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut at = 0;
    while let Some(i) = haystack.get(at..)?.iter().position(|&b| b == first) {
        let p = at + i;
        if haystack.get(p + 1..p + needle.len()) == Some(rest) {
            return Some(p);
        }
        at = p + 1;
    }
    None
}

/// One DER element: its tag, its content and what follows it.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |acc, &x| acc << 8 | usize::from(x));
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The whole of `b` is `SEQUENCE { INTEGER 0|1, SEQUENCE { OID … }, OCTET STRING … }`
/// (RFC 5958 `OneAsymmetricKey`) or `SEQUENCE { SEQUENCE { OID … }, OCTET STRING }`
/// (`EncryptedPrivateKeyInfo`).
fn is_pkcs8_der(b: &[u8]) -> bool {
    let Some((0x30, body, [])) = der(b) else { return false };
    let algorithm =
        |b: &[u8]| matches!(der(b), Some((0x30, alg, _)) if matches!(der(alg), Some((0x06, _, _))));
    match der(body) {
        Some((0x02, [0 | 1], rest)) => {
            let Some((0x30, _, after)) = der(rest).filter(|_| algorithm(rest)) else {
                return false;
            };
            matches!(der(after), Some((0x04, _, _)))
        }
        Some((0x30, _, after)) if algorithm(body) => matches!(der(after), Some((0x04, _, []))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIF2bN3Cr1sJ2S5bo3n1SRVXfkIgHfOtsMOiNWxcf4Y1+\n-----END PRIVATE KEY-----\n";

    fn b64(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }

    #[test]
    fn private_keys_are_found_by_content_and_tls_strings_are_not() {
        assert_eq!(private_key(PKCS8_PEM.as_bytes()), Some(PrivateKey::Pem("PRIVATE KEY".into())));
        let mut image = vec![0u8; 5000];
        image.extend_from_slice(PKCS8_PEM.replace("PRIVATE", "EC PRIVATE").as_bytes());
        image.extend_from_slice(&[0xff; 300]);
        assert_eq!(private_key(&image), Some(PrivateKey::Pem("EC PRIVATE KEY".into())));
        assert_eq!(private_key(&b64(PKCS8_PEM)), Some(PrivateKey::Pkcs8Der));
        assert_eq!(private_key(b"openssh-key-v1\0\0\0\0\x04none"), Some(PrivateKey::OpenSsh));
        // What mbed TLS's PEM parser holds: the lines, no key.
        let tls = b"\x00-----BEGIN EC PRIVATE KEY-----\x00-----END EC PRIVATE KEY-----\x00\
            -----BEGIN RSA PRIVATE KEY-----\r\n-----END RSA PRIVATE KEY-----\x00";
        assert_eq!(private_key(tls), None);
        assert_eq!(private_key(b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"), None);
        // The DER of a public key, and a DER prefix of a longer file, are not private keys.
        let mut der_then_more = b64(PKCS8_PEM);
        der_then_more.push(0);
        assert_eq!(private_key(&der_then_more), None);
        assert_eq!(private_key(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
    }

    #[test]
    fn globs_stay_in_one_component_and_double_star_spans_many() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["build/a.bin", "build/sub/b.bin", "build/sub/deep/c.bin", "other/d.bin"] {
            fs_err::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            fs_err::write(root.join(f), b"x").unwrap();
        }
        let names = |p: &str| -> Vec<String> {
            expand(root, p)
                .unwrap()
                .iter()
                .map(|f| f.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names("build/*.bin"), ["build/a.bin"]);
        assert_eq!(names("build/*/*.bin"), ["build/sub/b.bin"]);
        assert_eq!(
            names("build/**/*.bin"),
            ["build/a.bin", "build/sub/b.bin", "build/sub/deep/c.bin"]
        );
        assert_eq!(names("*/d.bin"), ["other/d.bin"]);
        assert_eq!(names("build/a.bin"), ["build/a.bin"]);
        assert!(names("build/none.bin").is_empty());
        assert!(matches!(expand(root, "build/[.bin"), Err(InputError::BadGlob { .. })));
        // Two links back to the folder itself: each folder is read once.
        std::os::unix::fs::symlink(".", root.join("build/l1")).unwrap();
        std::os::unix::fs::symlink("..", root.join("build/sub/l2")).unwrap();
        assert_eq!(names("build/**/c.bin"), ["build/sub/deep/c.bin"]);
    }
}
