use super::*;
use crate::forward::{Downstream, NO_EDITS};
use crate::table::PathRule;

fn ends(parts: &[&[u8]]) -> Result<Option<(usize, usize)>, ()> {
    let mut c = ChunkedEnd::default();
    for (k, p) in parts.iter().enumerate() {
        if let Some(n) = c.feed(p)? {
            return Ok(Some((k, n)));
        }
    }
    Ok(None)
}

#[test]
fn chunked_end_is_found_in_one_piece_and_across_splits() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
    assert_eq!(ends(&[body]), Ok(Some((0, body.len() - 4))));
    // Every split point gives the same end.
    for cut in 1..body.len() - 4 {
        let (a, b) = body.split_at(cut);
        assert_eq!(ends(&[a, b]), Ok(Some((1, body.len() - 4 - cut))), "cut at {cut}");
    }
    // Byte by byte.
    let bytes: Vec<&[u8]> = body[..body.len() - 4].chunks(1).collect();
    assert_eq!(ends(&bytes), Ok(Some((bytes.len() - 1, 1))));
}

#[test]
fn chunked_trailers_are_part_of_the_body() {
    let body = b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
    assert_eq!(ends(&[body]), Ok(Some((0, body.len()))));
    assert_eq!(ends(&[b"3\r\nabc\r\n0\r\nx-sum: 1\r\n"]), Ok(None));
}

#[test]
fn a_malformed_chunk_size_is_an_error() {
    assert_eq!(ends(&[b"zz\r\nabc\r\n"]), Err(()));
    assert_eq!(ends(&[&[b'1'; MAX_CHUNK_LINE + 10]]), Err(()));
}

fn framing(head: &[u8], head_request: bool) -> Result<(Framing, bool), &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).unwrap();
    response_framing(&resp, head_request).map(|f| (f.body, f.keep_alive)).map_err(|e| e.0)
}

#[test]
fn response_framing_follows_rfc_9112() {
    assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false), Ok((Framing::Length(5), true)));
    assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true), Ok((Framing::None, true)));
    assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n", false), Ok((Framing::None, true)));
    assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false), Ok((Framing::None, true)));
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n", false),
        Ok((Framing::Chunked, true))
    );
    assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n", false), Ok((Framing::UntilClose, false)));
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n", false),
        Ok((Framing::Length(1), false))
    );
    assert_eq!(framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false), Ok((Framing::Length(1), false)));
    assert_eq!(
        framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n", false),
        Ok((Framing::Length(1), true))
    );
    assert!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
    assert!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", false).is_err());
}

#[test]
fn the_client_gets_the_response_head_without_hop_by_hop_fields() {
    let head = |raw: &[u8]| {
        let mut buf = raw.to_vec();
        let mut filled = buf.len();
        let mut out = Vec::new();
        match response_head(&mut buf, &mut filled, &http::Method::GET, &mut out) {
            Ok(Some(_)) => String::from_utf8(out).unwrap(),
            _ => panic!("a final response"),
        }
    };
    assert_eq!(
        head(
            b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 2\r\nKeep-Alive: t=5\r\n\r\nok"
        ),
        "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n"
    );
    assert_eq!(
        head(b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
    );
    assert_eq!(
        head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\nx-a:\r\n\r\n"),
        "HTTP/1.1 200 OK\r\nx-a:\r\ntransfer-encoding: chunked\r\n"
    );
    assert_eq!(head(b"HTTP/1.1 204 No Content\r\n\r\n"), "HTTP/1.1 204 No Content\r\n");
    assert_eq!(head(b"HTTP/1.1 200 OK\nconnection: close\nx: y\n\n"), "HTTP/1.1 200 OK\r\nx: y\n");
}

#[test]
fn only_one_valid_content_length_up_to_the_limit_is_read_whole() {
    let body = |fields: &[(&str, &str)]| {
        let headers: Vec<httparse::Header<'_>> =
            fields.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect();
        buffered_body(&headers)
    };
    assert_eq!(body(&[("host", "a")]), Some(0));
    assert_eq!(body(&[("Content-Length", "12")]), Some(12));
    assert_eq!(body(&[("content-length", &MAX_BUFFERED_BODY.to_string())]), Some(MAX_BUFFERED_BODY));
    assert_eq!(body(&[("content-length", &(MAX_BUFFERED_BODY + 1).to_string())]), None);
    assert_eq!(body(&[("content-length", "3"), ("content-length", "3")]), None);
    assert_eq!(body(&[("content-length", "+3")]), None);
    assert_eq!(body(&[("content-length", "")]), None);
    assert_eq!(body(&[("content-length", "99999999999999999999999")]), None);
    assert_eq!(body(&[("transfer-encoding", "chunked")]), None);
    assert_eq!(body(&[("content-length", "3"), ("expect", "100-continue")]), None);
}

#[test]
fn tokens_are_matched_whole_and_without_case() {
    assert!(has_token(b"keep-alive, Close", "close"));
    assert!(!has_token(b"closed", "close"));
}

fn forwarding(rewrite: Option<(&str, &str)>, add: &[(&str, &str)], remove: &[&str]) -> Forwarding {
    let path = rewrite.map_or(PathRule::Any, |(prefix, _)| PathRule::Prefix(prefix.into()));
    Forwarding::new(
        &path,
        rewrite.map(|(_, to)| to),
        add.iter()
            .map(|(n, v)| (n.parse().expect("a field name"), http::HeaderValue::from_str(v).expect("a value")))
            .collect(),
        remove.iter().map(|n| n.parse().expect("a field name")).collect(),
    )
}

/// The upstream head the fast path writes for `head` (from 10.0.0.9, plain HTTP), and the request's id.
fn upstream(head: &str, rules: &Forwarding) -> Option<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let req = client_request(head.as_bytes(), &mut headers)?;
    let mut out = Vec::new();
    let id = write_upstream_head(&mut out, &req, rules, &Downstream { client: Some("10.0.0.9"), tls: false });
    Some((String::from_utf8(out).expect("text"), id.as_str().to_string()))
}

#[test]
fn the_upstream_head_follows_the_forwarding_rules() {
    let api = forwarding(Some(("/api", "/v2")), &[("x-via", "berth")], &["x-drop"]);
    let own_id = forwarding(None, &[("x-forwarded-proto", "wss")], &["x-request-id", "x-forwarded-for"]);
    let cases: [(&str, &Forwarding, &str); 4] = [
        (
            "GET /a?b HTTP/1.1\r\nHost: example.test\r\nX-Request-Id: r1\r\nAccept: */*\r\n\r\n",
            &NO_EDITS,
            "GET /a?b HTTP/1.1\r\nHost: example.test\r\nX-Request-Id: r1\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: example.test\r\n\r\n",
        ),
        (
            "POST /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Authorization: Basic eA==\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: elsewhere\r\nx-request-id: r2\r\n\
             Content-Length: 0\r\n\r\n",
            &NO_EDITS,
            "POST /p HTTP/1.1\r\nHost: h\r\nx-request-id: r2\r\nContent-Length: 0\r\n\
             x-forwarded-for: 2.2.2.2, 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\n\r\n",
        ),
        (
            "GET /api/users?q=1 HTTP/1.1\r\nhost: h\r\nx-drop: 1\r\nX-Via: client\r\nx-request-id: r3\r\n\r\n",
            &api,
            "GET /v2/users?q=1 HTTP/1.1\r\nhost: h\r\nx-request-id: r3\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-via: berth\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nX-Request-Id: r4\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
            &own_id,
            "GET / HTTP/1.1\r\nx-forwarded-proto: wss\r\n\r\n",
        ),
    ];
    for (head, rules, want) in cases {
        let (got, id) = upstream(head, rules).expect("served by the fast path");
        assert_eq!(got, want, "for {head:?}");
        assert!(id.starts_with('r'), "the client's id is the request's: {id}");
    }
}

#[test]
fn a_request_without_an_id_gets_one_made() {
    let (head, id) = upstream("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &NO_EDITS).expect("served");
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(head.contains(&format!("\r\nx-request-id: {id}\r\n")), "{head}");
    // A rule that removes the field still leaves the request an id, for the access log.
    let (head, id) = upstream("GET / HTTP/1.1\r\n\r\n", &forwarding(None, &[], &["x-request-id"])).expect("served");
    assert_eq!(id.len(), 16);
    assert!(!head.contains("x-request-id"), "{head}");
}

#[test]
fn requests_the_fast_path_does_not_serve_go_to_pingora() {
    let nine_options = format!("GET / HTTP/1.1\r\nConnection: {}\r\n\r\n", ["keep-alive"; 9].join(", "));
    let ten_options = format!("GET / HTTP/1.1\r\nConnection: {}\r\n\r\n", ["keep-alive"; 10].join(", "));
    // (head, Some(close) when served here, None when handed over)
    let cases: [(&str, Option<bool>); 16] = [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(false)),
        ("GET /x?y HTTP/1.1\r\nConnection: Close\r\n\r\n", Some(true)),
        ("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", Some(true)),
        ("GET / HTTP/1.1\r\nConnection: , ,close,,\r\n\r\n", Some(true)),
        ("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", None),
        (&nine_options, Some(false)),
        (&ten_options, None),
        ("GET / HTTP/1.0\r\n\r\n", None),
        ("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", None),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", None),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", None),
        ("GET / HTTP/1.1\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n", None),
        ("GET / HTTP/1.1\r\nConnection: close, X-Forwarded-For\r\n\r\n", None),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", None),
        ("GET / HTTP/1.1\r\nHost: a\r\n", None),
        ("G@T / HTTP/1.1\r\n\r\n", None),
    ];
    for (head, want) in cases {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        assert_eq!(client_request(head.as_bytes(), &mut headers).map(|r| r.close), want, "{head:?}");
    }
}

/// The fields (lower-case name, value) of an upstream request, sorted by name, in order within a name.
fn sorted_fields(mut fields: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

/// A request as sent upstream: its target and its fields.
type Sent = (String, Vec<(String, Vec<u8>)>);

/// `head` as each HTTP/1 path sends it upstream; `None` when the fast path hands it over. Pingora's
/// upstream request policy, which strips the hop-by-hop fields before the filter runs, is played by
/// dropping them from its input.
fn both_paths(head: &str, rules: &Forwarding) -> Option<[Sent; 2]> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let req = client_request(head.as_bytes(), &mut headers)?;
    let mut out = Vec::new();
    let sent = write_upstream_head(&mut out, &req, rules, &Downstream { client: Some("10.0.0.9"), tls: true });
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut up = httparse::Request::new(&mut parsed);
    assert!(matches!(up.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()), "{out:?}");
    let fast_target = up.path.expect("a target").to_string();
    let fast = up.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();

    let mut pingora_req =
        pingora::http::RequestHeader::build(req.method.clone(), req.target.as_bytes(), None).expect("a head");
    for h in req.headers {
        if rules.client_field(h.name) != ClientField::HopByHop {
            pingora_req.append_header(h.name.to_string(), h.value).expect("a field");
        }
    }
    // The id the fast path made, so both say the same.
    let mut made = match sent {
        SentId::Made(id) => Some(id),
        SentId::Client(_) => None,
    };
    let from = Downstream { client: Some("10.0.0.9"), tls: true };
    crate::http::forward_request(rules, &mut pingora_req, &from, &mut made).expect("edited");
    let pingora_target = pingora_req.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let pingora = pingora_req
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    Some([(fast_target, sorted_fields(fast)), (pingora_target, sorted_fields(pingora))])
}

#[test]
fn both_http1_paths_forward_the_same_request() {
    let api = forwarding(Some(("/api", "/")), &[("x-via", "berth"), ("x-via", "again")], &["x-drop", "accept"]);
    let own = forwarding(None, &[("x-forwarded-host", "internal"), ("host", "backend")], &["x-forwarded-for"]);
    let rules = [&NO_EDITS, &api, &own];
    let heads = [
        "GET /api/users?q=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Drop: 1\r\n\r\n",
        "GET /api HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\n\
         X-Forwarded-Proto: http\r\nX-Forwarded-Host: elsewhere\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\
         Connection: keep-alive\r\nTE: trailers\r\nProxy-Authorization: x\r\nTrailer: x-sum\r\n\r\n",
        "DELETE /api/x HTTP/1.1\r\nX-Via: client\r\nCookie: a=1\r\nCookie: b=2\r\nContent-Length: 0\r\n\r\n",
    ];
    for rules in rules {
        for head in heads {
            let [fast, pingora] = both_paths(head, rules).expect("served by the fast path");
            assert_eq!(fast, pingora, "{head:?} with {rules:?}");
        }
    }
}

/// Field names the forwarding rules treat apart, and some they do not.
const NAMES: [&str; 14] = [
    "host",
    "x-forwarded-for",
    "X-Forwarded-Proto",
    "x-forwarded-host",
    "X-Request-Id",
    "connection",
    "te",
    "proxy-authorization",
    "trailer",
    "keep-alive",
    "accept",
    "x-a",
    "X-B",
    "cookie",
];

proptest::proptest! {
    /// Whatever the request and the rule's edits, the fast path sends upstream what pingora's path sends.
    #[test]
    fn both_http1_paths_agree(
        fields in proptest::collection::vec((0..NAMES.len(), "[a-z0-9.=]{0,6}"), 0..12),
        add in proptest::collection::vec((0..NAMES.len(), "[a-z0-9]{1,4}"), 0..3),
        remove in proptest::collection::vec(0..NAMES.len(), 0..3),
        rewrite in proptest::option::of(("/[a-z]{0,2}", "/?[a-z]{0,2}/?")),
        target in "/[a-z/]{0,6}(\\?[a-z=]{0,3})?",
    ) {
        let mut head = format!("GET {target} HTTP/1.1\r\n");
        for (name, value) in &fields {
            // Connection options other than these hand the request over; the fast path serves the others.
            let value = if NAMES[*name] == "connection" { "keep-alive" } else { value.as_str() };
            head.push_str(&format!("{}: {value}\r\n", NAMES[*name]));
        }
        head.push_str("\r\n");
        let add: Vec<(&str, &str)> = add.iter().map(|(n, v)| (NAMES[*n], v.as_str())).collect();
        let remove: Vec<&str> = remove.iter().map(|n| NAMES[*n]).collect();
        let prefix_matches = rewrite.as_ref().is_none_or(|(prefix, _)| {
            crate::table::prefix_matches(prefix, target.split('?').next().unwrap_or(""))
        });
        proptest::prop_assume!(prefix_matches);
        let rules = forwarding(rewrite.as_ref().map(|(p, t)| (p.as_str(), t.as_str())), &add, &remove);
        let lowered: Vec<_> = remove.iter().map(|n| n.to_ascii_lowercase()).collect();
        // A rule that removes `Host` is left out: pingora puts an empty one back after the filter.
        proptest::prop_assume!(!lowered.iter().any(|n| n == "host"));
        if let Some([fast, pingora]) = both_paths(&head, &rules) {
            proptest::prop_assert_eq!(fast, pingora, "{:?}", head);
        }
    }
}
