//! Header rewriting between client and backend: hop-by-hop headers (RFC 9110 §7.6.1, plus those
//! the `Connection` header names) are dropped both ways; `X-Forwarded-For`, `-Proto` and `-Host`
//! are set on the way in; `Via` is appended both ways.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` is hop-by-hop: it describes one connection and must not be forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Standard names compare as an enum tag; only the two non-standard ones compare bytes.
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones skipped.
pub fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a comma-separated header (`Connection`, say) lists `token`, in any case.
pub fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Drops the hop-by-hop headers and any header the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds what to drop; most messages carry none, and then nothing
    // is hashed or allocated (this runs twice per proxied request).
    let mut drop: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            drop.push(name.clone());
        }
    }
    if drop.is_empty() {
        return;
    }
    let listed: Vec<HeaderName> = tokens(headers, CONNECTION)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    drop.extend(listed);
    for name in drop {
        headers.remove(name);
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and, when the client
/// named a host, `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut buf = [0u8; 64];
    let client = ip_text(client, &mut buf);
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prior}, {client}"))
        }
        _ => HeaderValue::from_str(client),
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(v) = host {
        headers.insert(X_FORWARDED_HOST.clone(), v.clone());
    }
}

/// `ip` as text, written into `buf`: IPv4 by hand, as it is on every request and the
/// formatting machinery costs more than the rest of this module together.
fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // An IPv6 address is at most 45 characters: it always fits.
            let _ = write!(cursor, "{v6}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    std::str::from_utf8(&buf[..len]).unwrap_or("")
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
    fn a_message_without_hop_by_hop_headers_keeps_them_all() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        let mut h = HeaderMap::new();
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn client_addresses_are_written_as_std_writes_them() {
        let mut buf = [0u8; 64];
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(parsed, &mut buf), parsed.to_string(), "{ip}");
        }
    }

    #[test]
    fn appends_to_an_existing_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let host = HeaderValue::from_static("a.test");
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test");
    }
}
