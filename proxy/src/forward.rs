//! What the proxy changes in a request on its way upstream, written once for both HTTP/1 paths: the fast path
//! writes the upstream head by these rules ([`crate::h1`]), pingora's `upstream_request_filter` edits its
//! header map by them ([`crate::http`]). Neither representation is known here: a path asks what becomes of
//! each client field ([`Forwarding::client_field`]) and which fields to add ([`Forwarding::added`]), and
//! encodes the answers its own way.
//!
//! The rules:
//! - The client's hop-by-hop fields are not forwarded (RFC 9110 §7.6.1: `Connection`, `Keep-Alive`,
//!   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`,
//!   `Upgrade`, `HTTP2-Settings`, the set pingora's default upstream request policy strips too), nor its
//!   `X-Forwarded-Proto` and `X-Forwarded-Host`: those are the proxy's to say. (Fields a `Connection` option
//!   names are hop-by-hop too; the fast path leaves such requests to pingora's path, which drops them.)
//! - `X-Forwarded-For`: the client's address, after the value the client sent (its last field line).
//! - `X-Forwarded-Proto`: `https` on a TLS listener, else `http`. `X-Forwarded-Host`: the `Host` the client
//!   addressed.
//! - `X-Request-Id`: the client's is kept; when it sent none, a new one, the same for every attempt.
//! - The route rule's edits: the fields it removes are not forwarded, the fields it adds replace the client's
//!   (and the proxy's) of the same name, and its prefix rewrite changes the target.
//!
//! Everything that depends on the rule alone is computed once, when the route table is built
//! ([`Forwarding::new`]); per request, a client field costs one classification by its name.

use crate::table::PathRule;
use http::{HeaderName, HeaderValue};
use std::net::IpAddr;

/// What becomes of a field of the client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientField {
    /// Forwarded as sent.
    Forward,
    /// Not forwarded: it describes the client's connection. On pingora's path its upstream request policy
    /// has dealt with these before the filter runs: what is left is what it sends on purpose (the
    /// `Connection` and `Upgrade` of a WebSocket upgrade).
    HopByHop,
    /// Not forwarded: the proxy's own to set, or removed or replaced by the rule.
    Drop,
    /// `X-Forwarded-For`: not forwarded as sent; its value (of the last such field) leads the proxy's.
    ForwardedFor,
    /// `X-Request-Id`: the client's id stands (no new one is made); `forward`: the rule keeps the field.
    RequestId { forward: bool },
}

/// The forwarding rules of one route rule, computed when the route table is built.
#[derive(Debug)]
pub struct Forwarding {
    /// Names of the client's fields the rule drops: those it removes and those it adds, once each.
    drop: Vec<HeaderName>,
    add: Vec<(HeaderName, HeaderValue)>,
    /// Which of the proxy's own fields are sent: those the rule neither removes nor sets itself.
    own: Own,
    rewrite: Option<Rewrite>,
}

#[derive(Debug, Clone, Copy)]
struct Own {
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
    request_id: bool,
}

/// A prefix rewrite: the first `matched` bytes of the path (the rule's prefix without its trailing `/`)
/// become `to`.
#[derive(Debug)]
struct Rewrite {
    matched: usize,
    to: Box<str>,
}

/// The rules of a request without route rule edits.
pub(crate) static NO_EDITS: Forwarding = Forwarding {
    drop: Vec::new(),
    add: Vec::new(),
    own: Own { forwarded_for: true, forwarded_proto: true, forwarded_host: true, request_id: true },
    rewrite: None,
};

/// A field the proxy adds to the request, in the form each path encodes. `V` is a client field value as the
/// path holds it (bytes for the fast path, a `HeaderValue` for pingora's), so neither path copies one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Added<'a, V: ?Sized> {
    /// `X-Forwarded-For`: the client's value and the client's address, joined by `, ` when both are there.
    ForwardedFor { prev: Option<&'a V>, client: Option<&'a str> },
    /// `X-Forwarded-Proto`.
    ForwardedProto(&'static str),
    /// `X-Forwarded-Host`.
    ForwardedHost(&'a V),
    /// `X-Request-Id`, made by the proxy.
    RequestId(&'a RequestId),
    /// A field the route rule adds.
    Rule(&'a HeaderName, &'a HeaderValue),
}

/// The client's connection, as the forwarding fields tell it upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream<'a> {
    /// The client's address as text; `None` when the connection is not over IP.
    pub(crate) client: Option<&'a str>,
    /// Whether the client connected over TLS.
    pub(crate) tls: bool,
}

/// What the added fields are made of, besides the rule: facts of the request and of its connection.
pub(crate) struct Facts<'a, V: ?Sized> {
    pub(crate) from: Downstream<'a>,
    /// The `Host` the client addressed.
    pub(crate) host: Option<&'a V>,
    /// The client's `X-Forwarded-For` (its last field line).
    pub(crate) forwarded_for: Option<&'a V>,
    /// The id made for this request; `None` when the client sent its own.
    pub(crate) new_request_id: Option<&'a RequestId>,
}

impl Forwarding {
    /// The rules of a route rule matching `path`, with its `rewrite_to` prefix and its field edits.
    pub fn new(
        path: &PathRule,
        rewrite_to: Option<&str>,
        add: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    ) -> Forwarding {
        let mut drop = remove;
        drop.extend(add.iter().map(|(name, _)| name.clone()));
        drop.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        drop.dedup();
        let sent = |name: &str| !drop.iter().any(|d| d.as_str() == name);
        let own = Own {
            forwarded_for: sent("x-forwarded-for"),
            forwarded_proto: sent("x-forwarded-proto"),
            forwarded_host: sent("x-forwarded-host"),
            request_id: sent("x-request-id"),
        };
        let rewrite = match (path, rewrite_to) {
            (PathRule::Prefix(prefix), Some(to)) => {
                Some(Rewrite { matched: prefix.trim_end_matches('/').len(), to: to.into() })
            }
            _ => None,
        };
        Forwarding { drop, add, own, rewrite }
    }

    /// What becomes of the client's field `name` (any case).
    #[inline]
    pub(crate) fn client_field(&self, name: &str) -> ClientField {
        match known(name) {
            Known::HopByHop => ClientField::HopByHop,
            Known::Own => ClientField::Drop,
            Known::ForwardedFor => ClientField::ForwardedFor,
            Known::RequestId => ClientField::RequestId { forward: self.own.request_id },
            Known::Other if self.drop.iter().any(|d| d.as_str().eq_ignore_ascii_case(name)) => ClientField::Drop,
            Known::Other => ClientField::Forward,
        }
    }

    /// The fields the proxy adds, in order, given to `add`.
    #[inline]
    pub(crate) fn added<'a, V: ?Sized>(&'a self, facts: &Facts<'a, V>, mut add: impl FnMut(Added<'a, V>)) {
        let own = self.own;
        let client = facts.from.client;
        if own.forwarded_for && (client.is_some() || facts.forwarded_for.is_some()) {
            add(Added::ForwardedFor { prev: facts.forwarded_for, client });
        }
        if own.forwarded_proto {
            add(Added::ForwardedProto(if facts.from.tls { "https" } else { "http" }));
        }
        if let (true, Some(host)) = (own.forwarded_host, facts.host) {
            add(Added::ForwardedHost(host));
        }
        if let (true, Some(id)) = (own.request_id, facts.new_request_id) {
            add(Added::RequestId(id));
        }
        for (name, value) in &self.add {
            add(Added::Rule(name, value));
        }
    }

    /// The upstream request target for the client's `target` (origin-form; the query is kept), in parts
    /// to write one after another; `None` when the rule does not rewrite.
    pub(crate) fn rewrite<'a>(&'a self, target: &'a str) -> Option<[&'a str; 5]> {
        let r = self.rewrite.as_ref()?;
        let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
        // The rule matched this path by its prefix, so `matched` is within it.
        let rest = path.get(r.matched..).unwrap_or("");
        let mut to = &*r.to;
        if rest.starts_with('/') {
            to = to.strip_suffix('/').unwrap_or(to);
        }
        let sep =
            if !to.is_empty() && !to.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') { "/" } else { "" };
        let rooted = to.starts_with('/') || (to.is_empty() && rest.starts_with('/'));
        Some([if rooted { "" } else { "/" }, to, sep, rest, query])
    }
}

/// A client field name as the rules know it, before the route rule's edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    HopByHop,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host`: set by the proxy only.
    Own,
    ForwardedFor,
    RequestId,
    Other,
}

/// Classify a field name: by its length first, so most names cost one comparison or none.
#[inline]
fn known(name: &str) -> Known {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is("te") => Known::HopByHop,
        7 if is("upgrade") || is("trailer") => Known::HopByHop,
        10 if is("connection") || is("keep-alive") => Known::HopByHop,
        12 if is("x-request-id") => Known::RequestId,
        14 if is("http2-settings") => Known::HopByHop,
        15 if is("x-forwarded-for") => Known::ForwardedFor,
        16 if is("x-forwarded-host") => Known::Own,
        16 if is("proxy-connection") => Known::HopByHop,
        17 if is("x-forwarded-proto") => Known::Own,
        17 if is("transfer-encoding") => Known::HopByHop,
        18 if is("proxy-authenticate") => Known::HopByHop,
        19 if is("proxy-authorization") => Known::HopByHop,
        _ => Known::Other,
    }
}

/// A request id made by the proxy: 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestId([u8; 16]);

impl RequestId {
    /// A new id from this thread's generator.
    pub(crate) fn new() -> RequestId {
        RequestId::from_u64(crate::http::random_u64())
    }

    fn from_u64(n: u64) -> RequestId {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        RequestId(std::array::from_fn(|i| DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize]))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// An IP address as text, kept without allocating (for `X-Forwarded-For`).
#[derive(Clone, Copy)]
pub(crate) struct IpText {
    buf: [u8; 46],
    len: u8,
}

impl IpText {
    pub(crate) fn new(ip: IpAddr) -> IpText {
        use std::io::Write as _;
        let mut buf = [0u8; 46];
        let mut rest = &mut buf[..];
        // The longest address, an IPv4-mapped IPv6 one, has 45 characters.
        let _ = write!(rest, "{ip}");
        let len = 46 - rest.len();
        IpText { buf, len: len as u8 }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(path: PathRule, rewrite: Option<&str>, add: &[(&str, &str)], remove: &[&str]) -> Forwarding {
        Forwarding::new(
            &path,
            rewrite,
            add.iter()
                .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
                .collect(),
            remove.iter().map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()).collect(),
        )
    }

    /// The hop-by-hop request fields: those pingora's default upstream request policy strips
    /// (`strip_standard_hop_by_hop_headers` in pingora-proxy).
    const HOP_BY_HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    ];

    #[test]
    fn every_hop_by_hop_field_is_dropped_in_any_case() {
        for name in HOP_BY_HOP {
            assert_eq!(NO_EDITS.client_field(name), ClientField::HopByHop, "{name}");
            assert_eq!(NO_EDITS.client_field(&name.to_ascii_uppercase()), ClientField::HopByHop, "{name}");
        }
    }

    #[test]
    fn client_fields_by_name() {
        let r = rules(PathRule::Any, None, &[("x-via", "berth"), ("X-Request-Id", "fixed")], &["x-drop"]);
        let cases = [
            ("host", NO_EDITS.client_field("host"), ClientField::Forward),
            ("accept", r.client_field("accept"), ClientField::Forward),
            ("X-Forwarded-Proto", r.client_field("X-Forwarded-Proto"), ClientField::Drop),
            ("x-forwarded-host", r.client_field("x-forwarded-host"), ClientField::Drop),
            ("X-Forwarded-For", r.client_field("X-Forwarded-For"), ClientField::ForwardedFor),
            ("X-Drop", r.client_field("X-Drop"), ClientField::Drop),
            ("x-via", r.client_field("x-via"), ClientField::Drop),
            ("x-request-id (rule sets it)", r.client_field("x-request-id"), ClientField::RequestId { forward: false }),
            ("x-request-id", NO_EDITS.client_field("X-Request-ID"), ClientField::RequestId { forward: true }),
            ("te-like", NO_EDITS.client_field("tf"), ClientField::Forward),
            ("proxy-authorization", NO_EDITS.client_field("Proxy-Authorization"), ClientField::HopByHop),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
    }

    /// The added fields as `name: value` lines.
    fn added(r: &Forwarding, facts: &Facts<'_, [u8]>) -> Vec<String> {
        let mut out = Vec::new();
        r.added(facts, |f| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            out.push(match f {
                Added::ForwardedFor { prev, client } => format!(
                    "x-forwarded-for: {}",
                    [prev.map(text), client.map(str::to_string)].into_iter().flatten().collect::<Vec<_>>().join(", ")
                ),
                Added::ForwardedProto(v) => format!("x-forwarded-proto: {v}"),
                Added::ForwardedHost(v) => format!("x-forwarded-host: {}", text(v)),
                Added::RequestId(id) => format!("x-request-id: {}", id.as_str()),
                Added::Rule(n, v) => format!("{n}: {}", text(v.as_bytes())),
            })
        });
        out
    }

    #[test]
    fn added_fields_follow_the_facts_and_the_rule() {
        let id = RequestId::from_u64(0x0123_4567_89ab_cdef);
        let facts = Facts {
            from: Downstream { client: Some("10.0.0.2"), tls: true },
            host: Some(&b"example.test"[..]),
            forwarded_for: Some(&b"10.0.0.1"[..]),
            new_request_id: Some(&id),
        };
        assert_eq!(
            added(&NO_EDITS, &facts),
            [
                "x-forwarded-for: 10.0.0.1, 10.0.0.2",
                "x-forwarded-proto: https",
                "x-forwarded-host: example.test",
                "x-request-id: 0123456789abcdef"
            ]
        );
        let bare = Facts {
            from: Downstream { client: None, tls: false },
            host: None,
            forwarded_for: None,
            new_request_id: None,
        };
        assert_eq!(added(&NO_EDITS, &bare), ["x-forwarded-proto: http"]);
        let relayed = Facts { forwarded_for: Some(&b"10.0.0.1"[..]), ..bare };
        assert_eq!(added(&NO_EDITS, &relayed), ["x-forwarded-for: 10.0.0.1", "x-forwarded-proto: http"]);

        // A rule's own value replaces the proxy's; a removed field is not sent; added fields keep their order
        // and repeats.
        let r = rules(
            PathRule::Any,
            None,
            &[("x-forwarded-proto", "wss"), ("x-a", "1"), ("x-a", "2")],
            &["x-forwarded-for", "x-request-id", "X-Forwarded-Host"],
        );
        assert_eq!(added(&r, &facts), ["x-forwarded-proto: wss", "x-a: 1", "x-a: 2"]);
    }

    #[test]
    fn prefix_rewrite() {
        let cases = [
            ("/api", "/", "/api/users?x=1", "/users?x=1"),
            ("/api", "/", "/api", "/"),
            ("/api", "/", "/api?q", "/?q"),
            ("/api/", "/v2", "/api/users", "/v2/users"),
            ("/api", "/v2/", "/api/users", "/v2/users"),
            ("/api", "v2", "/api/users", "/v2/users"),
            ("/api", "", "/api/users", "/users"),
            ("/api", "", "/api", "/"),
            ("/", "/base", "/x", "/base/x"),
            ("/", "/base/", "/", "/base/"),
        ];
        for (prefix, to, input, want) in cases {
            let r = rules(PathRule::Prefix(prefix.into()), Some(to), &[], &[]);
            assert_eq!(r.rewrite(input).map(|p| p.concat()).as_deref(), Some(want), "{prefix} -> {to} on {input}");
        }
        let exact = rules(PathRule::Exact("/api".into()), Some("/v2"), &[], &[]);
        assert_eq!(exact.rewrite("/api"), None);
    }

    #[test]
    fn ip_text_holds_the_longest_address() {
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        assert_eq!(IpText::new(v6).as_str(), v6.to_string());
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(IpText::new(v4).as_str(), "127.0.0.1");
        assert_eq!(RequestId::from_u64(0).as_str(), "0000000000000000");
    }
}
