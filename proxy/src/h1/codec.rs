//! The HTTP/1 codec of the fast path: bytes to request and response heads and body framing, and heads to
//! bytes. Pure functions, no IO: everything here meets bytes a client or an endpoint chose, so nothing here
//! may panic on them, and reading input in pieces gives the same result as reading it whole.

use crate::http::{random_u64, Ctx};

/// Header fields parsed per request or response; more is answered 431 (request) or 502 (response).
pub(super) const MAX_HEADERS: usize = 128;
/// A request body with a content-length up to this size is read whole and sent with the head, so the request
/// can go again to another endpoint as a bodiless one can (nginx buffers request bodies likewise). Larger
/// bodies, and chunked ones, are streamed by pingora's path.
pub(super) const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// An endpoint's response this path cannot relay (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadResponse(pub(super) &'static str);

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The length of the request body to read whole before sending the request: `Some(0)` when there is none;
/// `None` when pingora's path takes the request (chunked, `Expect`, a length that is invalid, repeated or above
/// [`MAX_BUFFERED_BODY`]), which also answers the malformed ones.
pub(super) fn buffered_body(headers: &[httparse::Header<'_>]) -> Option<usize> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() || h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = Some(std::str::from_utf8(h.value).ok()?.parse::<usize>().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") || h.name.eq_ignore_ascii_case("expect") {
            return None;
        }
    }
    let n = length.unwrap_or(0);
    (n <= MAX_BUFFERED_BODY).then_some(n)
}

/// A response head parsed from the start of a buffer.
pub(super) enum Parsed {
    /// An interim 1xx response, `len` bytes long.
    Interim(usize),
    Final {
        head_len: usize,
        status: u16,
        framing: Framing,
        keep_alive: bool,
    },
}

/// Parse the response head at the start of `buf`; `None` while incomplete. A final response's head, as the
/// client gets it (hop-by-hop fields dropped, HTTP/1.1, no final empty line), is written to `head`.
pub(super) fn parse_response(
    buf: &[u8],
    method: &http::Method,
    head: &mut Vec<u8>,
) -> Result<Option<Parsed>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse("too many header fields")),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        // This path never sends `Upgrade` (those requests go to pingora).
        return Err(BadResponse("a protocol switch that was not asked for"));
    }
    if (100..200).contains(&status) {
        return Ok(Some(Parsed::Interim(head_len)));
    }
    let (framing, keep_alive) = response_framing(&resp, *method == http::Method::HEAD)?;
    head.clear();
    // The status line as sent, in version 1.1 ("HTTP/1.x" is its first 8 bytes; httparse checked).
    let line_end = buf.iter().position(|&b| b == b'\n').map_or(head_len, |i| i + 1);
    head.extend_from_slice(b"HTTP/1.1");
    head.extend_from_slice(&buf[8..line_end]);
    if !head.ends_with(b"\r\n") {
        head.pop();
        head.extend_from_slice(b"\r\n");
    }
    // The header lines are copied in runs, skipping the lines of dropped fields.
    let base = buf.as_ptr() as usize;
    let line_after =
        |from: usize| buf[from..head_len].iter().position(|&b| b == b'\n').map_or(head_len, |i| from + i + 1);
    let (mut run, mut block_end) = (line_end, line_end);
    for h in resp.headers.iter() {
        let start = h.name.as_ptr() as usize - base;
        block_end = line_after(h.value.as_ptr() as usize - base + h.value.len());
        if hop_by_hop(h.name) || (framing == Framing::Chunked && h.name.eq_ignore_ascii_case("content-length")) {
            head.extend_from_slice(&buf[run..start]);
            run = block_end;
        }
    }
    head.extend_from_slice(&buf[run..block_end.max(run)]);
    if framing == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    Ok(Some(Parsed::Final { head_len, status, framing, keep_alive }))
}

/// Fields that describe one hop, not the message (RFC 9110 §7.6.1); never forwarded. `Transfer-Encoding` is
/// handled by the framing.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "transfer-encoding"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
pub(super) fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The framing of a response body and whether the endpoint keeps the connection open (RFC 9112 §6.3).
fn response_framing(resp: &httparse::Response<'_, '_>, head_request: bool) -> Result<(Framing, bool), BadResponse> {
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(BadResponse("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse("conflicting content-length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((framing, keep_alive && framing != Framing::UntilClose))
}

/// Write the upstream request head into `out`: the client's fields minus hop-by-hop ones, the forwarding
/// fields, a request id when the client sent none, the rule's edits and its path rewrite. Returns the
/// request id sent (for the access log).
#[allow(clippy::too_many_arguments)]
pub(super) fn build_request(
    out: &mut Vec<u8>,
    tls: bool,
    ctx: &Ctx,
    method: &http::Method,
    target: &str,
    headers: &[httparse::Header<'_>],
    host: Option<&str>,
    client_ip: Option<&str>,
    want_id: bool,
) -> Option<Vec<u8>> {
    let rule = ctx.rule.as_deref();
    let removed = |name: &str| {
        rule.is_some_and(|r| {
            r.remove_headers.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
                || r.add_headers.iter().any(|(h, _)| h.as_str().eq_ignore_ascii_case(name))
        })
    };
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match rule.and_then(|r| r.rewrite(target)) {
        Some(new) => out.extend_from_slice(new.as_bytes()),
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut request_id = None;
    for h in headers {
        let name = h.name;
        if hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = Some(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-proto") || name.eq_ignore_ascii_case("x-forwarded-host") {
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") && request_id.is_none() {
            request_id = Some(if want_id { h.value.to_vec() } else { Vec::new() });
        }
        if removed(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = client_ip {
        if !removed("x-forwarded-for") {
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = forwarded_for {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(ip.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    } else if let (Some(prev), false) = (forwarded_for, removed("x-forwarded-for")) {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(prev);
        out.extend_from_slice(b"\r\n");
    }
    if !removed("x-forwarded-proto") {
        out.extend_from_slice(if tls { b"x-forwarded-proto: https\r\n" } else { b"x-forwarded-proto: http\r\n" });
    }
    if let (Some(host), false) = (host, removed("x-forwarded-host")) {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if request_id.is_none() {
        let id = hex16(random_u64());
        if !removed("x-request-id") {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(&id);
            out.extend_from_slice(b"\r\n");
        }
        request_id = want_id.then(|| id.to_vec());
    }
    if let Some(rule) = rule {
        for (name, value) in &rule.add_headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    request_id
}

/// `n` as 16 lower-case hex digits.
fn hex16(n: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize])
}

/// Finds where a chunked body ends in bytes fed piece by piece (RFC 9112 §7.1), so the body can be relayed
/// unchanged. Sizes are parsed by `httparse`; trailer fields are passed through.
#[derive(Default)]
pub(super) struct ChunkedEnd {
    state: ChunkState,
    /// A size or trailer line split across reads.
    line: Vec<u8>,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    /// Bytes of chunk data and its CRLF still to come.
    Data(u64),
    Trailer,
}

/// Longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 8 * 1024;

impl ChunkedEnd {
    /// Feed the next bytes; `Some(n)`: the body ends after the first `n` of them.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                ChunkState::Data(left) => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left { ChunkState::Size } else { ChunkState::Data(left - take) };
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(nl) = data[i..].iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(&data[i..]);
                        if self.line.len() > MAX_CHUNK_LINE {
                            return Err(());
                        }
                        return Ok(None);
                    };
                    let end = i + nl + 1;
                    let line: &[u8] = if self.line.is_empty() {
                        &data[i..end]
                    } else {
                        self.line.extend_from_slice(&data[i..end]);
                        &self.line
                    };
                    i = end;
                    match self.state {
                        ChunkState::Size => match httparse::parse_chunk_size(line) {
                            Ok(httparse::Status::Complete((_, 0))) => self.state = ChunkState::Trailer,
                            Ok(httparse::Status::Complete((_, size))) => {
                                self.state = ChunkState::Data(size.checked_add(2).ok_or(())?)
                            }
                            _ => return Err(()),
                        },
                        _ => {
                            if line == b"\r\n" || line == b"\n" {
                                self.line.clear();
                                return Ok(Some(i));
                            }
                        }
                    }
                    self.line.clear();
                }
            }
        }
        Ok(None)
    }
}

/// Where the handed-over request ends, counted from the start of `buf` (its head is `head_len` bytes long;
/// the end may lie beyond `buf`, in bytes not read yet): pingora gets no byte beyond it, so requests pipelined
/// after it stay for this path. `None` when the end is not known: an upgrade, or a chunked body not complete
/// in `buf`; pingora reads on from the socket then.
pub(super) fn handoff_end(buf: &[u8], head_len: usize) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&buf[..head_len]), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut end = head_len;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok()?;
            end = head_len.checked_add(n)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return match ChunkedEnd::default().feed(&buf[head_len..]) {
                Ok(Some(n)) => Some(head_len + n),
                _ => None,
            };
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        response_framing(&resp, head_request).map_err(|e| e.0)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false), Ok((Framing::Length(5), true)));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true), Ok((Framing::None, true)));
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n", false), Ok((Framing::None, true)));
        assert_eq!(
            framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false),
            Ok((Framing::None, true))
        );
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
            let mut out = Vec::new();
            match parse_response(raw, &http::Method::GET, &mut out) {
                Ok(Some(Parsed::Final { .. })) => String::from_utf8(out).unwrap(),
                _ => panic!("a final response"),
            }
        };
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 2\r\nKeep-Alive: t=5\r\n\r\nok"),
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
    fn request_ids_are_16_hex_digits() {
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex16(0), b"0000000000000000");
    }

    #[test]
    fn tokens_are_matched_whole_and_without_case() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
    }
}
