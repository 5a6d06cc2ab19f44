//! Semantic checks of a parsed [`Config`]: everything serde's types cannot say. Every problem is
//! collected (not just the first), each with its key path.

use super::{BackendConfig, Config, ConfigError, Upstream};
use std::collections::HashSet;
use std::time::Duration;

/// Statuses and kinds that `retry.on` may name.
const RETRY_KINDS: [&str; 3] = ["connect-failure", "reset", "timeout"];

impl Config {
    /// Checks ranges, uniqueness and addresses; returns every error found.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Errors::default();
        // Port 0 asks the OS for a free port: two of them never collide.
        if self.listen.address == self.admin.address && self.listen.address.port() != 0 {
            errs.push(
                "admin.address",
                format!(
                    "must differ from listen.address (both are {})",
                    self.listen.address
                ),
            );
        }
        errs.positive(
            "listen.header_read_timeout",
            self.listen.header_read_timeout,
        );
        errs.positive("listen.idle_timeout", self.listen.idle_timeout);
        errs.positive("listen.body_read_timeout", self.listen.body_read_timeout);
        errs.positive("listen.send_timeout", self.listen.send_timeout);
        if self.listen.max_connections == 0 {
            errs.push(
                "listen.max_connections",
                "must be at least 1, got 0".to_string(),
            );
        }
        // hyper's HTTP/1 read buffer cannot be smaller than this.
        const MIN_HEADER_BYTES: usize = 8192;
        if self.listen.max_header_bytes < MIN_HEADER_BYTES {
            errs.push(
                "listen.max_header_bytes",
                format!(
                    "must be at least {MIN_HEADER_BYTES}, got {}",
                    self.listen.max_header_bytes
                ),
            );
        }
        if self.listen.max_uri_bytes == 0 {
            errs.push(
                "listen.max_uri_bytes",
                "must be at least 1, got 0".to_string(),
            );
        }
        match &self.admin.token {
            Some(t)
                if t.trim().is_empty()
                    || t.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                errs.push(
                    "admin.token",
                    "must be non-empty, without spaces or control characters".to_string(),
                )
            }
            Some(_) => {}
            None if !self.admin.address.ip().is_loopback() => errs.push(
                "admin.token",
                format!(
                    "required when admin.address ({}) is not a loopback address: the admin API \
                     can change the pools",
                    self.admin.address
                ),
            ),
            None => {}
        }
        for (i, h) in self.admin.hosts.iter().enumerate() {
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
            {
                errs.push(
                    &format!("admin.hosts[{i}]"),
                    format!("{h:?} is not a host name (letters, digits, '-' and '.')"),
                );
            }
        }
        if self.upstreams.is_empty() {
            errs.push(
                "upstreams",
                "at least one [[upstreams]] table is required".to_string(),
            );
        }
        let mut names = HashSet::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            if !names.insert(up.name.as_str()) {
                errs.push(
                    &format!("{at}.name"),
                    format!("duplicate upstream name {:?}", up.name),
                );
            }
            validate_upstream(&at, up, &mut errs);
        }
        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(errs.0)
        }
    }
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2), as an `Upgrade` protocol's name is.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: &str, reason: String) {
        self.0.push(ConfigError {
            key: key.to_string(),
            reason,
        });
    }

    fn positive(&mut self, key: &str, d: Duration) {
        if d.is_zero() {
            self.push(key, "must be greater than 0".to_string());
        }
    }

    fn at_least_one(&mut self, key: &str, n: u32) {
        if n == 0 {
            self.push(key, "must be at least 1, got 0".to_string());
        }
    }

    fn ratio(&mut self, key: &str, v: f64) {
        if !(v > 0.0 && v <= 1.0) {
            self.push(key, format!("must be in (0, 1], got {v}"));
        }
    }
}

fn validate_upstream(at: &str, up: &Upstream, errs: &mut Errors) {
    if up.name.trim().is_empty() {
        errs.push(&format!("{at}.name"), "must not be empty".to_string());
    } else if !up
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errs.push(
            &format!("{at}.name"),
            format!(
                "{:?} may contain only letters, digits, '-', '_' and '.'",
                up.name
            ),
        );
    }
    if up.hosts.is_empty() {
        errs.push(
            &format!("{at}.hosts"),
            "must name at least one host (\"*\" matches any)".to_string(),
        );
    }
    for (j, h) in up.hosts.iter().enumerate() {
        if let Err(reason) = check_host_pattern(h) {
            errs.push(&format!("{at}.hosts[{j}]"), reason);
        }
    }
    if !up.path_prefix.starts_with('/') {
        errs.push(
            &format!("{at}.path_prefix"),
            format!("must start with '/', got {:?}", up.path_prefix),
        );
    }

    if up.backends.is_empty() {
        errs.push(
            &format!("{at}.backends"),
            "at least one [[upstreams.backends]] is required".to_string(),
        );
    }
    let mut seen = HashSet::new();
    for (j, b) in up.backends.iter().enumerate() {
        let bat = format!("{at}.backends[{j}]");
        validate_backend(&bat, b, &mut seen, errs);
    }

    let h = &up.health;
    let hat = format!("{at}.health");
    if !h.path.starts_with('/') {
        errs.push(
            &format!("{hat}.path"),
            format!("must start with '/', got {:?}", h.path),
        );
    }
    errs.positive(&format!("{hat}.interval"), h.interval);
    errs.positive(&format!("{hat}.timeout"), h.timeout);
    errs.positive(&format!("{hat}.backoff_base"), h.backoff_base);
    errs.at_least_one(&format!("{hat}.healthy_threshold"), h.healthy_threshold);
    errs.at_least_one(&format!("{hat}.unhealthy_threshold"), h.unhealthy_threshold);
    if h.backoff_max < h.backoff_base {
        errs.push(
            &format!("{hat}.backoff_max"),
            format!(
                "must be at least backoff_base ({}), got {}",
                humantime::format_duration(h.backoff_base),
                humantime::format_duration(h.backoff_max)
            ),
        );
    }

    let cb = &up.circuit_breaker;
    let cat = format!("{at}.circuit_breaker");
    errs.at_least_one(
        &format!("{cat}.consecutive_failures"),
        cb.consecutive_failures,
    );
    errs.at_least_one(
        &format!("{cat}.consecutive_connect_failures"),
        cb.consecutive_connect_failures,
    );
    errs.ratio(&format!("{cat}.failure_rate"), cb.failure_rate);
    errs.at_least_one(&format!("{cat}.minimum_requests"), cb.minimum_requests);
    errs.positive(&format!("{cat}.window"), cb.window);
    errs.positive(&format!("{cat}.open_base"), cb.open_base);
    errs.at_least_one(&format!("{cat}.half_open_requests"), cb.half_open_requests);
    if cb.open_max < cb.open_base {
        errs.push(
            &format!("{cat}.open_max"),
            format!(
                "must be at least open_base ({}), got {}",
                humantime::format_duration(cb.open_base),
                humantime::format_duration(cb.open_max)
            ),
        );
    }
    if cb.max_ejection_percent > 100 {
        errs.push(
            &format!("{cat}.max_ejection_percent"),
            format!("must be in [0, 100], got {}", cb.max_ejection_percent),
        );
    }

    let ad = &up.adaptive;
    let aat = format!("{at}.adaptive");
    errs.positive(&format!("{aat}.ewma_decay"), ad.ewma_decay);
    errs.ratio(&format!("{aat}.min_weight_ratio"), ad.min_weight_ratio);

    let r = &up.retry;
    let rat = format!("{at}.retry");
    if r.budget_ratio.is_nan() || r.budget_ratio < 0.0 {
        errs.push(
            &format!("{rat}.budget_ratio"),
            format!("must be 0 or more, got {}", r.budget_ratio),
        );
    }
    for (j, kind) in r.on.iter().enumerate() {
        let is_5xx = kind.len() == 3
            && kind.starts_with('5')
            && kind.parse::<u16>().is_ok_and(|s| (500..=599).contains(&s));
        if !RETRY_KINDS.contains(&kind.as_str()) && !is_5xx {
            errs.push(
                &format!("{rat}.on[{j}]"),
                format!(
                    "unknown retry condition {kind:?}; expected one of connect-failure, reset, \
                     timeout, or a 5xx status such as \"503\""
                ),
            );
        }
    }

    let t = &up.timeouts;
    let tat = format!("{at}.timeouts");
    errs.positive(&format!("{tat}.connect"), t.connect);
    errs.positive(&format!("{tat}.response"), t.response);
    errs.positive(&format!("{tat}.idle"), t.idle);
    errs.positive(&format!("{tat}.request"), t.request);
    errs.positive(&format!("{tat}.read"), t.read);
    for (j, p) in up.upgrades.iter().enumerate() {
        if !is_token(p) {
            errs.push(
                &format!("{at}.upgrades[{j}]"),
                format!("{p:?} is not a protocol name such as \"websocket\""),
            );
        }
    }
}

fn validate_backend(at: &str, b: &BackendConfig, seen: &mut HashSet<String>, errs: &mut Errors) {
    match b.authority() {
        Ok(authority) => {
            if !seen.insert(authority.to_ascii_lowercase()) {
                errs.push(
                    &format!("{at}.address"),
                    format!("duplicate backend {authority:?} in this upstream"),
                );
            }
        }
        Err(reason) => errs.push(&format!("{at}.address"), reason),
    }
    if b.weight == 0 {
        errs.push(
            &format!("{at}.weight"),
            "must be greater than 0, got 0".to_string(),
        );
    }
}

impl BackendConfig {
    /// Checks one backend on its own (a backend added through the admin API); the first
    /// problem, its key relative to the backend (`address`, `weight`).
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut errs = Errors::default();
        validate_backend("", self, &mut HashSet::new(), &mut errs);
        match errs.0.into_iter().next() {
            None => Ok(()),
            Some(mut e) => {
                e.key = e.key.trim_start_matches('.').to_string();
                Err(e)
            }
        }
    }

    /// The `host:port` this backend is reached at, without the optional `http://`.
    pub fn authority(&self) -> Result<&str, String> {
        let raw = self.address.trim();
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "http" {
                return Err(format!(
                    "scheme {scheme:?} is not supported; backends are reached over plain http"
                ));
            }
        }
        let hostport = raw.strip_prefix("http://").unwrap_or(raw);
        let bad = |why: &str| Err(format!("{why} in {:?}; expected host:port", self.address));
        if hostport.contains('/') {
            return bad("a path is not allowed");
        }
        let Some((host, port)) = hostport.rsplit_once(':') else {
            return bad("no port");
        };
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return bad("bad port");
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !host_ok {
            return bad("bad host");
        }
        Ok(hostport)
    }
}

fn check_host_pattern(h: &str) -> Result<(), String> {
    if h == "*" {
        return Ok(());
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host pattern; use \"*\", an exact name, or \"*.example.com\""
        ))
    }
}
