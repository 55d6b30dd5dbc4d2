//! Container image references, by the grammar the IoT Edge runtime's container engine parses
//! them with (Moby and containerd use `distribution/reference`; edgeAgent trims the
//! reference and hands it to the engine):
//!
//! ```text
//! reference  := name [":" tag] ["@" digest]
//! name       := [domain "/"] path             (at most 255 characters)
//! domain     := host [":" port]               (the first component, when it has a "." or a
//!                                              ":", or is "localhost")
//! host       := domain-component ("." domain-component)* | "[" IPv6 "]"
//! path       := path-component ("/" path-component)*
//! path-component := [a-z0-9]+ (separator [a-z0-9]+)*,  separator := "." | "_" | "__" | "-"+
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex{32,}        (algorithm: [A-Za-z][A-Za-z0-9]* joined by + . _ -)
//! ```
//!
//! A nested Edge device's `$upstream:PORT/…` names its parent's registry, which edgeAgent
//! substitutes before pulling; it is taken as a domain.

/// Why an image reference is not one the runtime can pull.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// Nothing but spaces.
    #[error("the reference is empty")]
    Empty,
    /// A character no part of a reference may have (a space inside, a control character).
    #[error("`{0}` cannot appear in an image reference")]
    Character(char),
    /// The registry host or port is malformed.
    #[error("registry `{0}` is not a host name or address with an optional port")]
    Domain(String),
    /// A repository path component breaks the rules (upper case, an empty component, a
    /// separator at an end).
    #[error(
        "repository component `{0}` must be lower-case letters and digits, joined by `.`, `_`, `__` or dashes"
    )]
    Path(String),
    /// The tag breaks the rules.
    #[error(
        "tag `{0}` must be 1-128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
    )]
    Tag(String),
    /// The digest breaks the rules.
    #[error("digest `{0}` must be ALGORITHM:HEX with at least 32 hex digits")]
    Digest(String),
    /// The name is longer than the engine takes.
    #[error("the repository name has {0} characters; at most 255")]
    TooLong(usize),
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry, when the reference names one.
    pub domain: Option<String>,
    /// The repository path.
    pub path: String,
    /// The tag.
    pub tag: Option<String>,
    /// The digest.
    pub digest: Option<String>,
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separators `.`, `_`, `__`, `-`+.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

fn domain_ok(d: &str) -> bool {
    if d.starts_with("$upstream") {
        return d == "$upstream" || d.strip_prefix("$upstream:").is_some_and(port_ok);
    }
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (
            None,
            after.strip_prefix(':').map(Some).unwrap_or(if after.is_empty() {
                None
            } else {
                Some("")
            }),
        )
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    host.is_none_or(|h| h.split('.').all(domain_component)) && port.is_none_or(port_ok)
}

fn port_ok(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

fn tag_ok(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    (1..=128).contains(&b.len())
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

fn digest_ok(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else { return false };
    let alg_ok = alg.split(['+', '.', '_', '-']).all(|c| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses an image reference (surrounding white space is trimmed, as edgeAgent does).
pub fn parse(image: &str) -> Result<ImageRef, ImageRefError> {
    let t = image.trim();
    if t.is_empty() {
        return Err(ImageRefError::Empty);
    }
    if let Some(c) = t.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(ImageRefError::Character(c));
    }
    let (rest, digest) = match t.split_once('@') {
        Some((_, d)) if !digest_ok(d) => return Err(ImageRefError::Digest(d.to_owned())),
        Some((r, d)) => (r, Some(d.to_owned())),
        None => (t, None),
    };
    // The tag follows the last `:` after the last `/` (a port's `:` is before it).
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last..].rfind(':') {
        Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
        None => (rest, None),
    };
    if let Some(tg) = tag.filter(|tg| !tag_ok(tg)) {
        return Err(ImageRefError::Tag(tg.to_owned()));
    }
    if name.len() > 255 {
        return Err(ImageRefError::TooLong(name.len()));
    }
    let (first, more) = match name.split_once('/') {
        Some((f, m)) => (f, Some(m)),
        None => (name, None),
    };
    let is_domain = more.is_some()
        && (first.contains('.')
            || first.contains(':')
            || first == "localhost"
            || first.starts_with('$'));
    let (domain, path) =
        if is_domain { (Some(first), more.unwrap_or_default()) } else { (None, name) };
    if let Some(d) = domain.filter(|d| !domain_ok(d)) {
        return Err(ImageRefError::Domain(d.to_owned()));
    }
    if let Some(bad) = path.split('/').find(|c| !path_component(c)) {
        return Err(ImageRefError::Path(bad.to_owned()));
    }
    Ok(ImageRef {
        domain: domain.map(str::to_owned),
        path: path.to_owned(),
        tag: tag.map(str::to_owned),
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_the_engine_pulls_parse_and_others_say_what_is_wrong() {
        for ok in [
            "a",
            "a:1",
            "r.io/a/b:1.0",
            "localhost:5000/a:1",
            "localhost/a",
            "$upstream:443/azureiotedge-agent:1.5",
            "  a  ",
            "mcr.microsoft.com/azureiotedge-agent:1.5",
            "contoso.azurecr.io/filter:1.4.2-amd64",
            "MyRegistry.azurecr.io/team/sensor_v2:Latest",
            "a__b/c.d/e---f:_x",
            "[::1]:5000/a:1",
            "10.0.0.1:5000/x/y",
            "r.io/a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "r.io/a:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok));
        }
        let p = parse("localhost:5000/a/b:1").unwrap();
        assert_eq!(
            (p.domain.as_deref(), p.path.as_str(), p.tag.as_deref()),
            (Some("localhost:5000"), "a/b", Some("1"))
        );
        let bad: [(&str, ImageRefError); 12] = [
            ("", ImageRefError::Empty),
            ("contoso/My Image:1", ImageRefError::Character(' ')),
            ("contoso.azurecr.io/MyImage:1", ImageRefError::Path("MyImage".into())),
            ("Contoso/image", ImageRefError::Path("Contoso".into())),
            ("a:", ImageRefError::Tag(String::new())),
            ("a:b:c", ImageRefError::Path("a:b".into())),
            ("r.io/a/", ImageRefError::Path(String::new())),
            ("r.io/:1", ImageRefError::Path(String::new())),
            ("a:.x", ImageRefError::Tag(".x".into())),
            ("a-/b", ImageRefError::Path("a-".into())),
            ("r.io:x/a", ImageRefError::Domain("r.io:x".into())),
            ("a@sha256:beef", ImageRefError::Digest("sha256:beef".into())),
        ];
        for (image, why) in bad {
            assert_eq!(parse(image), Err(why), "{image}");
        }
        assert_eq!(parse(&format!("r.io/{}", "a".repeat(300))), Err(ImageRefError::TooLong(305)));
    }
}
