//! What `serve` fetches when it imports, and how: the one place its outgoing requests are made.
//!
//! Import requests name URLs; a service that fetched any of them could be pointed at a cloud
//! metadata address, an internal admin port or the developer's other local services (server-side
//! request forgery), and its error messages and timing would tell the requester what answered.
//! So, by default, `serve` fetches only from its own blob store (`http://<loopback>:<its port>/
//! blobs/…`), and beyond that only from hosts the operator names with `--allow-fetch
//! HOST[:PORT]` (without a port: the scheme's default). In every case:
//! - only `http` and `https`; a URL with credentials (`user:pass@`) is refused, never sent;
//! - a redirect is followed (at most 5) only to a URL these same rules allow;
//! - a host name is fetched only from the addresses it resolves to that are not link-local
//!   (`169.254.0.0/16`, `fe80::/10`: where cloud metadata services live), unspecified or
//!   multicast, and not loopback unless the name itself is a loopback name;
//! - a fetch that makes no progress for the stall timeout fails (the whole fetch has a longer
//!   cap), so a URL that trickles cannot hold an operation slot for long.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::guard::is_loopback_name;

/// The hosts beyond its own store that `serve` may fetch from.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    own_port: u16,
    /// The host and port of `--public-url`, when serve is reached under another name.
    public: Option<(String, u16)>,
    allowed: Vec<AllowedHost>,
}

/// One `--allow-fetch` entry: `HOST` (the scheme's default port), `HOST:PORT` or `HOST:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    host: String,
    port: PortRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    Default,
    Exact(u16),
    Any,
}

impl std::str::FromStr for AllowedHost {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not HOST, HOST:PORT or HOST:* (e.g. mirror.example.com:8443)");
        if s.contains(['/', '@', '?', '#']) || s.trim().is_empty() {
            return Err(bad());
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, "*")) if !h.contains(':') || h.ends_with(']') => (h, PortRule::Any),
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h, PortRule::Exact(p.parse::<u16>().map_err(|_| bad())?))
            }
            _ => (s, PortRule::Default),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self { host, port })
    }
}

impl FetchPolicy {
    /// The policy of a service listening on `own_port`, also allowing `allowed`.
    pub fn new(own_port: u16, allowed: Vec<AllowedHost>) -> Self {
        Self { own_port, public: None, allowed }
    }

    /// This policy, also taking `url` (serve's `--public-url`) as its own store's address.
    pub fn with_public_url(mut self, url: &url::Url) -> Self {
        if let (Some(h), Some(p)) = (url.host_str(), url.port_or_known_default()) {
            let h = h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
            self.public = Some((h, p));
        }
        self
    }

    /// Whether `url` may be fetched; the error says why not and how to allow it.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let u = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("only http and https URLs are fetched, not {}:", u.scheme()));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("URLs with credentials (user:pass@) are refused and never sent; use a \
                        signed URL (SAS) instead"
                .into());
        }
        let host = u.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let port = u.port_or_known_default().unwrap_or(0);
        let own = (is_loopback_name(&host) && port == self.own_port)
            || self.public.as_ref().is_some_and(|(h, p)| *h == host && *p == port);
        if own && u.path().contains("/blobs/") {
            return Ok(());
        }
        let allowed = self.allowed.iter().any(|a| {
            a.host == host
                && match a.port {
                    PortRule::Exact(p) => p == port,
                    PortRule::Any => true,
                    // No port given: the scheme's default only (`Url::port` is None for it).
                    PortRule::Default => u.port().is_none(),
                }
        });
        if allowed {
            return Ok(());
        }
        Err(format!(
            "serve fetches only from its own blob store and from hosts given with --allow-fetch; \
             {host}:{port} is not one (start serve with --allow-fetch {host}:{port} to allow it)"
        ))
    }

    /// An HTTP client that applies this policy to redirects and resolved addresses, gives up on
    /// a fetch that makes no progress for `stall`, and on any fetch after `whole`.
    pub fn client(&self, stall: Duration, whole: Duration) -> reqwest::Result<reqwest::Client> {
        let policy = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            match policy.check(attempt.url().as_str()) {
                Ok(()) => attempt.follow(),
                Err(why) => {
                    attempt.error(format!("a redirect to a URL serve does not fetch: {why}"))
                }
            }
        });
        reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(Arc::new(GuardedResolver))
            .connect_timeout(stall.min(Duration::from_secs(10)))
            .read_timeout(stall)
            .timeout(whole)
            .build()
    }
}

/// Whether serve may connect to `ip` for the host `name`.
pub fn address_allowed(name: &str, ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    !(link_local || ip.is_unspecified() || ip.is_multicast())
        && (!ip.is_loopback() || is_loopback_name(name))
}

/// Resolves with the system resolver, then drops the addresses [`address_allowed`] refuses.
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| address_allowed(&host, a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no address serve fetches from (link-local, loopback \
                     and unspecified addresses are refused for names)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> FetchPolicy {
        FetchPolicy::new(8080, allowed.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn only_the_own_store_and_allowed_hosts_are_fetched() {
        let p = policy(&[]);
        assert!(p.check("http://127.0.0.1:8080/blobs/c/a.bin?sig=x").is_ok());
        assert!(p.check("http://localhost:8080/blobs/c/a.bin").is_ok());
        for bad in [
            "http://127.0.0.1:8080/deviceUpdate/default/updates",
            "http://127.0.0.1:8081/blobs/c/a.bin",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://10.0.0.5/x",
            "https://example.com/x",
            "file:///etc/passwd",
            "ftp://example.com/x",
        ] {
            assert!(p.check(bad).is_err(), "{bad}");
        }
        let p = policy(&["mirror.example.com", "LOCALHOST:9000", "10.0.0.5:8443"]);
        assert!(p.check("https://mirror.example.com/a").is_ok());
        assert!(p.check("http://mirror.example.com/a").is_ok());
        assert!(p.check("https://mirror.example.com:8443/a").is_err());
        assert!(p.check("http://localhost:9000/a").is_ok());
        assert!(p.check("http://localhost:9001/a").is_err());
        assert!(p.check("https://10.0.0.5:8443/a").is_ok());
        let any = policy(&["127.0.0.1:*"]);
        assert!(any.check("http://127.0.0.1:1234/a").is_ok());
        assert!(any.check("http://127.0.0.2:1234/a").is_err());
        let creds = p.check("https://user:pass@mirror.example.com/a").unwrap_err();
        assert!(creds.contains("credentials"), "{creds}");
        for bad in ["", "a/b", "user@host", "host:port", "host:70000"] {
            assert!(bad.parse::<AllowedHost>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_never_reach_link_local_or_loopback_addresses() {
        assert!(!address_allowed("mirror.example.com", "169.254.169.254".parse().unwrap()));
        assert!(!address_allowed("mirror.example.com", "fe80::1".parse().unwrap()));
        assert!(!address_allowed("mirror.example.com", "127.0.0.1".parse().unwrap()));
        assert!(!address_allowed("mirror.example.com", "0.0.0.0".parse().unwrap()));
        assert!(address_allowed("localhost", "127.0.0.1".parse().unwrap()));
        assert!(address_allowed("mirror.example.com", "10.0.0.5".parse().unwrap()));
    }
}
