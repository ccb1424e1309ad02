//! Which browser pages may act here, decided from configuration alone, never
//! from what a request says about itself (its `Host` is the attacker's to
//! choose under DNS rebinding).
//!
//! The instance's own origins are its `--public-url`s, or, when none is
//! given, the loopback origins on its port (the page at
//! `http://localhost:8082`). Trusted origins are those and the ones of
//! `--allowed-origins`. With neither flag every origin is trusted, as in the
//! demo. A WebSocket upgrade, and every request that changes a room over
//! HTTP, is refused when its `Origin` is not trusted; an `Origin` that is not
//! a plain `scheme://host[:port]` (not ASCII, `null`, a path) is foreign. A
//! change marked `Sec-Fetch-Site: cross-site` is refused unless its origin is
//! listed by name: parlor sends no CORS headers, so the only cross-site
//! requests a browser lets through are forms, which is what forgery uses.
//! With `--public-url`, a request addressed by a host name that is not one
//! of the public URLs' is refused (an IP address or `localhost` is fine: DNS
//! rebinding always comes with a name).

use url::{Host, Url};

/// What a request from a page wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Open a WebSocket.
    Connect,
    /// Change a room by HTTP (POST, PATCH, PUT, DELETE).
    Change,
}

/// The origin policy of an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Origins {
    /// The instance's own origins, serialised as browsers send them.
    own: Vec<String>,
    /// `--allowed-origins`, serialised; `None` or a `*` in it: every origin.
    listed: Option<Vec<String>>,
    /// The host names of `--public-url`s; empty: any host.
    hosts: Vec<String>,
}

impl Origins {
    /// The policy from `--public-url`s, `--allowed-origins` (`None`: not
    /// given) and the port the instance listens on. The error names the
    /// value that is not an origin.
    pub fn new(
        public: &[String],
        allowed: Option<&[String]>,
        port: u16,
    ) -> Result<Origins, String> {
        let mut own = Vec::new();
        let mut hosts = Vec::new();
        for url in public {
            let parsed = parse(url).ok_or_else(|| {
                format!("--public-url: `{url}` is not a URL such as https://chat.example.com")
            })?;
            own.push(parsed.origin().ascii_serialization());
            if let Some(Host::Domain(name)) = parsed.host() {
                hosts.push(name.to_owned());
            }
        }
        if own.is_empty() {
            own = ["localhost", "127.0.0.1", "[::1]"]
                .map(|host| format!("http://{host}:{port}"))
                .into();
        }
        let listed = match allowed {
            Some(list) if !list.iter().any(|o| o == "*") => Some(
                list.iter()
                    .map(|o| {
                        origin_of(o).ok_or_else(|| {
                            format!("--allowed-origins: `{o}` is not an origin such as https://chat.example.com, or *")
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => None,
            None if public.is_empty() => None,
            None => Some(Vec::new()),
        };
        Ok(Origins { own, listed, hosts })
    }

    /// Whether a request addressed to `host` (its `Host` header) is for this
    /// deployment.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Ok(());
        }
        let name = host.and_then(|h| Url::parse(&format!("http://{h}")).ok());
        match name.as_ref().and_then(Url::host) {
            Some(Host::Ipv4(_) | Host::Ipv6(_)) => Ok(()),
            Some(Host::Domain(d)) if d == "localhost" || self.hosts.iter().any(|h| h == d) => {
                Ok(())
            }
            _ => Err(format!(
                "this instance answers to {} (--public-url), not to {}",
                self.hosts.join(", "),
                host.unwrap_or("a request without Host")
            )),
        }
    }

    /// Whether a request with this `Origin` and `Sec-Fetch-Site` (raw header
    /// values, when sent) may `act`.
    pub fn check(
        &self,
        origin: Option<&[u8]>,
        fetch_site: Option<&[u8]>,
        act: Act,
    ) -> Result<(), String> {
        let origin = origin.map(|raw| {
            std::str::from_utf8(raw)
                .ok()
                .and_then(origin_of)
                .ok_or_else(|| String::from_utf8_lossy(raw).into_owned())
        });
        let named = |o: &str| self.listed.iter().flatten().any(|l| l == o);
        let trusted =
            |o: &str| self.listed.is_none() || named(o) || self.own.iter().any(|own| own == o);
        let refused = |shown: &str| {
            Err(format!(
                "pages from {shown} may not {} here (--public-url, --allowed-origins)",
                match act {
                    Act::Connect => "connect",
                    Act::Change => "change rooms",
                }
            ))
        };
        match &origin {
            Some(Err(raw)) => return refused(raw),
            Some(Ok(o)) if !trusted(o) => return refused(o),
            _ => {}
        }
        let cross_site = fetch_site.is_some_and(|s| s.eq_ignore_ascii_case(b"cross-site"));
        if act == Act::Change
            && cross_site
            && !origin
                .as_ref()
                .is_some_and(|o| o.as_deref().is_ok_and(named))
        {
            return refused(
                origin
                    .and_then(Result::ok)
                    .as_deref()
                    .unwrap_or("another site"),
            );
        }
        Ok(())
    }
}

/// A URL of the web, http or https with a host.
fn parse(raw: &str) -> Option<Url> {
    let url = Url::parse(raw.trim()).ok()?;
    let web = matches!(url.scheme(), "http" | "https") && url.host().is_some();
    web.then_some(url)
}

/// An origin as browsers serialise it, from a value that must be exactly
/// `scheme://host[:port]` (a trailing `/` allowed, nothing more).
fn origin_of(raw: &str) -> Option<String> {
    let url = parse(raw)?;
    let bare = url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    bare.then(|| url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn policy(public: &[&str], allowed: Option<&[&str]>) -> Origins {
        let allowed = allowed.map(strings);
        Origins::new(&strings(public), allowed.as_deref(), 8082).unwrap()
    }

    fn may(p: &Origins, origin: Option<&str>, site: Option<&str>, act: Act) -> bool {
        p.check(origin.map(str::as_bytes), site.map(str::as_bytes), act)
            .is_ok()
    }

    #[test]
    fn without_flags_every_origin_connects_but_no_site_forges_a_change() {
        let p = policy(&[], None);
        assert!(may(&p, Some("https://evil.example"), None, Act::Connect));
        assert!(may(&p, None, None, Act::Change));
        assert!(may(
            &p,
            Some("http://localhost:8082"),
            Some("same-origin"),
            Act::Change
        ));
        assert!(!may(
            &p,
            Some("https://evil.example"),
            Some("cross-site"),
            Act::Change
        ));
        assert!(!may(&p, None, Some("cross-site"), Act::Change));
        assert!(p.check_host(Some("evil.example:8082")).is_ok());
    }

    #[test]
    fn listed_origins_and_own_ones_are_trusted_whatever_the_host_says() {
        let p = policy(&[], Some(&["https://good.example/"]));
        assert!(may(&p, Some("https://good.example"), None, Act::Connect));
        assert!(may(
            &p,
            Some("https://GOOD.example:443"),
            None,
            Act::Connect
        ));
        assert!(may(&p, Some("http://localhost:8082"), None, Act::Connect));
        assert!(may(&p, None, None, Act::Connect), "not a browser");
        for foreign in [
            "https://evil.example",
            "http://localhost:9999",
            "null",
            "https://good.example/path",
            "https://good.example\u{e9}",
            "good.example",
        ] {
            assert!(!may(&p, Some(foreign), None, Act::Connect), "{foreign}");
            assert!(!may(&p, Some(foreign), None, Act::Change), "{foreign}");
        }
        assert!(p.check(Some(b"https://\xff"), None, Act::Connect).is_err());
        assert!(may(
            &p,
            Some("https://good.example"),
            Some("cross-site"),
            Act::Change
        ));
        assert!(!may(
            &p,
            Some("http://localhost:8082"),
            Some("cross-site"),
            Act::Change
        ));
    }

    #[test]
    fn public_urls_are_the_own_origins_and_the_only_host_names() {
        let p = policy(&["https://chat.example.com"], None);
        assert!(may(
            &p,
            Some("https://chat.example.com"),
            None,
            Act::Connect
        ));
        assert!(!may(&p, Some("http://localhost:8082"), None, Act::Connect));
        assert!(!may(&p, Some("https://evil.example"), None, Act::Change));
        for host in [
            "chat.example.com",
            "chat.example.com:443",
            "127.0.0.1:8082",
            "[::1]:8082",
            "localhost:8082",
        ] {
            assert!(p.check_host(Some(host)).is_ok(), "{host}");
        }
        for host in [
            Some("evil.example:8082"),
            Some("chat.example.com.evil.example"),
            None,
        ] {
            assert!(p.check_host(host).is_err(), "{host:?}");
        }
    }

    #[test]
    fn a_star_trusts_every_origin_and_bad_values_are_named() {
        let p = policy(&["https://chat.example.com"], Some(&["*"]));
        assert!(may(&p, Some("https://anyone.example"), None, Act::Connect));
        let bad = Origins::new(&[], Some(&strings(&["chat.example.com"])), 1).unwrap_err();
        assert!(bad.contains("`chat.example.com`"), "{bad}");
        let bad = Origins::new(&strings(&["ftp://x"]), None, 1).unwrap_err();
        assert!(bad.contains("--public-url"), "{bad}");
    }
}
