//! Header rewriting between client and backend: hop-by-hop headers (RFC 9110 §7.6.1, plus those
//! the `Connection` header names) are dropped both ways; `X-Forwarded-For`, `-Proto` and `-Host`
//! and `X-Request-Id` are set on the way in, beside the client's map ([`Added`]); `Via` is
//! appended both ways. `Forwarded` and `X-Real-IP` pass only from a trusted proxy
//! (`listen.trusted_proxies`): from anyone else they would be a client's word about itself.

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static REQUEST_ID: HeaderName = crate::telemetry::access::REQUEST_ID;

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

/// The headers fulcrum adds to every request it forwards, kept beside the client's header map
/// rather than inserted into it, and written after the map's: each insert hashes its name, and
/// these five were 3% of fulcrum's user time. [`forward_request`] makes them.
#[derive(Debug, Clone)]
pub struct Added {
    forwarded_for: HeaderValue,
    forwarded_proto: HeaderValue,
    forwarded_host: Option<HeaderValue>,
    via: Option<HeaderValue>,
    request_id: HeaderValue,
}

impl Added {
    /// Each header, name and value, in the order they are written.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            Some((&X_FORWARDED_FOR, &self.forwarded_for)),
            Some((&X_FORWARDED_PROTO, &self.forwarded_proto)),
            self.forwarded_host.as_ref().map(|v| (&X_FORWARDED_HOST, v)),
            self.via.as_ref().map(|v| (&VIA, v)),
            Some((&REQUEST_ID, &self.request_id)),
        ]
        .into_iter()
        .flatten()
    }

    /// Puts them into `headers`, for a request built whole (hyper's path).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Whether `name` is one of the headers [`Added`] writes, or one only a trusted proxy may send.
fn is_added(name: &HeaderName) -> bool {
    name == VIA
        || name == FORWARDED
        || name == X_REAL_IP
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
        || name == REQUEST_ID
}

/// Rewrites a client request's headers for a backend: drops the hop-by-hop ones, and returns
/// what fulcrum adds. The client is appended to `X-Forwarded-For`, `X-Forwarded-Proto` is
/// `proto`, `X-Forwarded-Host` the host the client named, `via` (`1.1 fulcrum`) is appended to
/// `Via`, and `X-Request-Id` is `request_id`. Whatever of these the client sent is folded in
/// and taken out of the map, so that each goes to the backend once.
pub fn forward_request(
    headers: &mut HeaderMap,
    client: HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
    via: Option<HeaderValue>,
    request_id: HeaderValue,
    trusted: bool,
) -> Added {
    // One pass over the names; most requests carry none of these, and then nothing is hashed.
    let (mut hop, mut ours) = (false, false);
    for name in headers.keys() {
        hop |= is_hop_by_hop(name);
        ours |= is_added(name);
    }
    if hop {
        strip_hop_by_hop(headers);
    }
    let mut added = Added {
        forwarded_for: client,
        forwarded_proto: HeaderValue::from_static(proto),
        forwarded_host: host.cloned(),
        via,
        request_id,
    };
    if ours {
        if let Some(v) = appended(headers, &X_FORWARDED_FOR, &added.forwarded_for) {
            added.forwarded_for = v;
        }
        if let Some(v) = added
            .via
            .as_ref()
            .and_then(|hop| appended(headers, &VIA, hop))
        {
            added.via = Some(v);
        }
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&REQUEST_ID);
        // Without a value of fulcrum's, the client's goes through as it is.
        if added.forwarded_host.is_some() {
            headers.remove(&X_FORWARDED_HOST);
        }
        if added.via.is_some() {
            headers.remove(&VIA);
        }
        if !trusted {
            headers.remove(FORWARDED);
            headers.remove(&X_REAL_IP);
        }
    }
    added
}

/// The list in every `name` header, with `last` appended, when there is a non-blank value to
/// append to.
fn appended(headers: &HeaderMap, name: &HeaderName, last: &HeaderValue) -> Option<HeaderValue> {
    appended_to(headers.get_all(name).iter(), last)
}

/// The list in `values`, with `last` appended, when there is a non-blank value to append to.
fn appended_to<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    last: &HeaderValue,
) -> Option<HeaderValue> {
    let mut values: Vec<&str> = values
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return None;
    }
    values.push(last.to_str().ok()?);
    HeaderValue::from_str(&values.join(", ")).ok()
}

/// `ip` as an `X-Forwarded-For` value.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 64];
    // An address written out is always a valid header value.
    HeaderValue::from_str(ip_text(ip, &mut buf)).unwrap_or(HeaderValue::from_static("-"))
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
    // Through the entry: most messages carry no `Via`, and then the name is hashed once.
    match headers.entry(VIA) {
        Entry::Vacant(slot) => {
            slot.insert(hop);
        }
        Entry::Occupied(mut slot) => {
            let list = appended_to(slot.iter(), &hop).unwrap_or(hop);
            slot.insert(list);
        }
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

    fn written(added: &Added) -> Vec<(String, String)> {
        added
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// `forward_request` as the proxy calls it, with fulcrum's `Via` when `via`.
    fn rewrite(h: &mut HeaderMap, client: &str, host: Option<&'static str>, via: bool) -> Added {
        let host = host.map(HeaderValue::from_static);
        forward_request(
            h,
            ip_value(client.parse().unwrap()),
            "http",
            host.as_ref(),
            via.then(|| HeaderValue::from_static("1.1 fulcrum")),
            HeaderValue::from_static("id-1"),
            false,
        )
    }

    #[test]
    fn forwarding_headers_are_added_beside_the_clients() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        let added = rewrite(&mut h, "127.0.0.1", Some("a.test"), true);
        assert_eq!(h.len(), 1, "only accept stays in the map: {h:?}");
        assert_eq!(
            written(&added),
            pairs(&[
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "a.test"),
                ("via", "1.1 fulcrum"),
                ("x-request-id", "id-1"),
            ])
        );
        let added = rewrite(&mut HeaderMap::new(), "::1", None, false);
        assert_eq!(
            written(&added),
            pairs(&[
                ("x-forwarded-for", "::1"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "id-1"),
            ]),
            "no host, no via"
        );
    }

    #[test]
    fn what_the_client_sent_of_them_is_folded_in_once() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        h.insert("via", HeaderValue::from_static("1.0 fred"));
        h.insert("x-request-id", HeaderValue::from_static("id-1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let added = rewrite(&mut h, "127.0.0.1", Some("a.test"), true);
        assert_eq!(h.len(), 1, "the client's copies are taken out: {h:?}");
        assert_eq!(
            written(&added),
            pairs(&[
                ("x-forwarded-for", "203.0.113.7, 198.51.100.1, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "a.test"),
                ("via", "1.0 fred, 1.1 fulcrum"),
                ("x-request-id", "id-1"),
            ])
        );
        let mut h = HeaderMap::new();
        h.insert("via", HeaderValue::from_static("1.0 fred"));
        h.insert("x-forwarded-host", HeaderValue::from_static("theirs"));
        let without = rewrite(&mut h, "127.0.0.1", None, false);
        assert_eq!(
            h.len(),
            2,
            "with nothing of fulcrum's to add, the client's stay: {h:?}"
        );
        assert_eq!(without.iter().count(), 3);
        let mut map = HeaderMap::new();
        added.insert_into(&mut map);
        assert_eq!(map.len(), 5);
        assert_eq!(map["via"], "1.0 fred, 1.1 fulcrum");
    }
}
