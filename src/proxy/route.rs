//! Routing: the Host header (or HTTP/2 `:authority`) and the path choose an upstream. Among the
//! upstreams whose hosts match, the longest `path_prefix` wins; at equal length an exact host
//! beats a `*.suffix` pattern, which beats `*`; then config order. Prefixes match as plain string
//! prefixes, as Envoy's `prefix` and nginx's prefix `location` do.

use crate::config::Upstream;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `.example.com` for `*.example.com`: any depth of subdomain, not the bare name.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    fn parse(p: &str) -> HostPattern {
        let p = p.trim().trim_end_matches('.').to_ascii_lowercase();
        if p == "*" {
            HostPattern::Any
        } else if let Some(rest) = p.strip_prefix('*') {
            HostPattern::Suffix(rest.to_string())
        } else {
            HostPattern::Exact(p)
        }
    }

    /// How specifically this pattern matches `host`: None when it does not.
    fn score(&self, host: Option<&str>) -> Option<u8> {
        match (self, host) {
            (HostPattern::Any, _) => Some(0),
            (HostPattern::Suffix(s), Some(h)) if h.len() > s.len() && h.ends_with(s.as_str()) => {
                Some(1)
            }
            (HostPattern::Exact(e), Some(h)) if h == e => Some(2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    hosts: Vec<HostPattern>,
    prefix: String,
}

/// Maps (host, path) to the index of an upstream in the config.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    /// Whether any route names a host: if none does, the Host header is never looked at.
    by_host: bool,
}

impl Router {
    /// Compiles the routes of `upstreams`, in config order.
    pub fn new(upstreams: &[Upstream]) -> Router {
        let routes: Vec<Route> = upstreams
            .iter()
            .map(|u| Route {
                hosts: u.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
                prefix: u.path_prefix.clone(),
            })
            .collect();
        let by_host = routes
            .iter()
            .any(|r| r.hosts.iter().any(|h| *h != HostPattern::Any));
        Router { routes, by_host }
    }

    /// The upstream for a request with this `host` (as the client sent it, port and case
    /// included) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        // Normalising allocates; a config without host patterns does not need it.
        let host = host.filter(|_| self.by_host).map(normalize_host);
        let host = host.as_deref();
        let mut best: Option<(usize, u8, usize)> = None;
        for (i, r) in self.routes.iter().enumerate() {
            if !path.starts_with(r.prefix.as_str()) {
                continue;
            }
            let Some(score) = r.hosts.iter().filter_map(|h| h.score(host)).max() else {
                continue;
            };
            let rank = (r.prefix.len(), score);
            if best.is_none_or(|(len, s, _)| rank > (len, s)) {
                best = Some((rank.0, rank.1, i));
            }
        }
        best.map(|(_, _, i)| i)
    }
}

/// Lowercases and drops the port and a trailing dot: `Example.COM.:8080` → `example.com`.
fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let without_port = if h.starts_with('[') {
        // [v6]:port
        h.split_once(']')
            .map_or(h, |(v6, _)| v6)
            .trim_start_matches('[')
    } else {
        h.rsplit_once(':').map_or(h, |(name, _)| name)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(toml: &str) -> Router {
        Router::new(&Config::parse(toml).unwrap().upstreams)
    }

    const ROUTES: &str = r#"
        [[upstreams]]
        name = "any"
        [[upstreams.backends]]
        address = "127.0.0.1:1"
        [[upstreams]]
        name = "api"
        path_prefix = "/api"
        [[upstreams.backends]]
        address = "127.0.0.1:2"
        [[upstreams]]
        name = "shop"
        hosts = ["shop.example.com"]
        [[upstreams.backends]]
        address = "127.0.0.1:3"
        [[upstreams]]
        name = "wild"
        hosts = ["*.example.com"]
        [[upstreams.backends]]
        address = "127.0.0.1:4"
        [[upstreams]]
        name = "shop-api"
        hosts = ["shop.example.com"]
        path_prefix = "/api/v2"
        [[upstreams.backends]]
        address = "127.0.0.1:5"
    "#;

    #[test]
    fn longest_prefix_among_matching_hosts() {
        let r = router(ROUTES);
        assert_eq!(r.route(Some("x.org"), "/"), Some(0));
        assert_eq!(r.route(Some("x.org"), "/api/users"), Some(1));
        assert_eq!(r.route(Some("x.org"), "/api/v2/users"), Some(1));
        assert_eq!(r.route(Some("shop.example.com"), "/api/v2/users"), Some(4));
        assert_eq!(r.route(None, "/anything"), Some(0));
    }

    #[test]
    fn exact_beats_wildcard_beats_any_at_equal_prefix() {
        let r = router(ROUTES);
        assert_eq!(r.route(Some("shop.example.com"), "/"), Some(2));
        assert_eq!(r.route(Some("Shop.Example.COM:8080"), "/"), Some(2));
        assert_eq!(r.route(Some("a.b.example.com"), "/"), Some(3));
        // The bare name is not a subdomain of itself.
        assert_eq!(r.route(Some("example.com"), "/"), Some(0));
    }

    #[test]
    fn no_match_without_a_catch_all() {
        let r = router(
            r#"
            [[upstreams]]
            name = "only"
            hosts = ["a.test"]
            path_prefix = "/app"
            [[upstreams.backends]]
            address = "127.0.0.1:1"
        "#,
        );
        assert_eq!(r.route(Some("a.test"), "/app/x"), Some(0));
        assert_eq!(r.route(Some("a.test"), "/other"), None);
        assert_eq!(r.route(Some("b.test"), "/app"), None);
        assert_eq!(r.route(None, "/app"), None);
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("EXAMPLE.com."), "example.com");
    }
}
