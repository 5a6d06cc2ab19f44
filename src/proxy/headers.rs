//! Header rewriting between client and backend: hop-by-hop headers (RFC 9110 §7.6.1, plus those
//! the `Connection` header names) are dropped both ways; `X-Forwarded-For`, `-Proto` and `-Host`
//! are set on the way in; `Via` is appended both ways.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, VIA};
use std::net::IpAddr;

/// Hop-by-hop headers, which describe one connection and must not be forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Drops the hop-by-hop headers and any header the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and, when the client
/// named a host, `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    let client = client.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {client}"),
        _ => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// Appends `hop` (`1.1 fulcrum`) to the message's `Via` list (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, hop: HeaderValue) {
    let prior: Vec<&str> = headers
        .get_all(VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if prior.is_empty() {
        headers.insert(VIA, hop);
        return;
    }
    let joined = format!(
        "{}, {}",
        prior.join(", "),
        hop.to_str().unwrap_or("1.1 fulcrum")
    );
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(VIA, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_hop_by_hop_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn via_is_appended_to_what_earlier_hops_wrote() {
        let mut h = HeaderMap::new();
        append_via(&mut h, HeaderValue::from_static("1.1 fulcrum"));
        assert_eq!(h["via"], "1.1 fulcrum");
        let mut h = HeaderMap::new();
        h.append("via", HeaderValue::from_static("1.0 fred"));
        h.append("via", HeaderValue::from_static("1.1 cdn"));
        append_via(&mut h, HeaderValue::from_static("2 fulcrum"));
        assert_eq!(h.get_all("via").iter().count(), 1);
        assert_eq!(h["via"], "1.0 fred, 1.1 cdn, 2 fulcrum");
    }

    #[test]
    fn appends_to_an_existing_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", Some("a.test"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
    }
}
