//! The HTTP/1 codec of the fast path: bytes to request and response heads and body framing, and heads to
//! bytes. Pure functions, no IO: everything here meets bytes a client or an endpoint chose, so nothing here
//! may panic on them, and reading input in pieces gives the same result as reading it whole.

use crate::forward::{Added, ClientField, Downstream, Facts, Forwarding, RequestId};

/// Header fields parsed per request or response; more is answered 431 (request) or 502 (response).
pub(super) const MAX_HEADERS: usize = 128;
/// A request body with a content-length up to this size is read whole and sent with the head, so the request
/// can go again to another endpoint as a bodiless one can (nginx buffers request bodies likewise). Larger
/// bodies, and chunked ones, are streamed by pingora's path.
const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// Largest response head read; a larger one is answered 502.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// Why a client's request head is refused: the client gets [`BadRequest::status`] and the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadRequest {
    /// Not complete within the head size limit.
    TooLarge,
    /// More than [`MAX_HEADERS`] fields.
    TooManyFields,
    Malformed,
}

impl BadRequest {
    pub(super) fn status(self) -> u16 {
        match self {
            BadRequest::TooLarge | BadRequest::TooManyFields => 431,
            BadRequest::Malformed => 400,
        }
    }
}

/// An endpoint's response this path cannot relay (answered 502, or cut short once the client has its head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadResponse(pub(super) &'static str);

/// A complete request head read from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RequestHead {
    pub(super) len: usize,
    /// The length of the body to read whole before the request is sent (0: none); `None` when pingora's path
    /// takes the body (see [`buffered_body`]).
    pub(super) body: Option<usize>,
}

/// The request head at the start of `buf`, the bytes a client sent so far; `None` while it is incomplete.
/// A head longer than `max_len` bytes is refused, however its bytes arrived: once `max_len` bytes are not a
/// complete head, or when a complete one is longer.
pub(super) fn request_head(buf: &[u8], max_len: usize) -> Result<Option<RequestHead>, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_len => Err(BadRequest::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(RequestHead { len, body: buffered_body(req.headers) })),
        Ok(httparse::Status::Partial) if buf.len() >= max_len => Err(BadRequest::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(BadRequest::TooManyFields),
        Err(_) => Err(BadRequest::Malformed),
    }
}

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
            if length.is_some() {
                return None;
            }
            length = Some(digits(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") || h.name.eq_ignore_ascii_case("expect") {
            return None;
        }
    }
    let n = length.unwrap_or(0);
    (n <= MAX_BUFFERED_BODY as u64).then_some(n as usize)
}

/// A content-length value: 1*DIGIT (RFC 9110 §8.6), no sign, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// A final response head at the start of the upstream read buffer, `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ResponseHead {
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The endpoint keeps the connection open after the body.
    pub(super) keep_alive: bool,
}

/// The final response head in `buf[..*filled]`, the bytes an endpoint sent so far; `None` while it is
/// incomplete. Interim (1xx) responses before it are dropped from the buffer (`*filled` shrinks). The head
/// as the client gets it (hop-by-hop fields dropped, HTTP/1.1, no final empty line) is written to `head`.
pub(super) fn response_head(
    buf: &mut [u8],
    filled: &mut usize,
    method: &http::Method,
    head: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, BadResponse> {
    while *filled > 0 {
        match parse_response(&buf[..*filled], method, head)? {
            Parsed::Partial if *filled >= MAX_RESPONSE_HEAD => return Err(BadResponse("response head too large")),
            Parsed::Partial => return Ok(None),
            // What follows an interim response may already be here.
            Parsed::Interim(len) => {
                buf.copy_within(len..*filled, 0);
                *filled -= len;
            }
            Parsed::Final(response) => return Ok(Some(response)),
        }
    }
    Ok(None)
}

/// A response head parsed from the start of a buffer.
enum Parsed {
    Partial,
    /// An interim 1xx response, `len` bytes long.
    Interim(usize),
    Final(ResponseHead),
}

/// Parse the response head at the start of `buf`. A final response's head, as the client gets it, is
/// written to `head`.
fn parse_response(buf: &[u8], method: &http::Method, head: &mut Vec<u8>) -> Result<Parsed, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse("too many header fields")),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        // This path never sends `Upgrade` (those requests go to pingora).
        return Err(BadResponse("a protocol switch that was not asked for"));
    }
    if (100..200).contains(&status) {
        return Ok(Parsed::Interim(head_len));
    }
    let framing = response_framing(&resp, *method == http::Method::HEAD)?;
    head.clear();
    // The status line as sent, in version 1.1. httparse skips empty lines before it, and checked that it
    // starts with "HTTP/1.x".
    let line_start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(0);
    let line_end = buf[line_start..].iter().position(|&b| b == b'\n').map_or(head_len, |i| line_start + i + 1);
    head.extend_from_slice(b"HTTP/1.1");
    head.extend_from_slice(&buf[line_start + 8..line_end]);
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
        if hop_by_hop(h.name) || (framing.drops_length && h.name.eq_ignore_ascii_case("content-length")) {
            head.extend_from_slice(&buf[run..start]);
            run = block_end;
        }
    }
    head.extend_from_slice(&buf[run..block_end.max(run)]);
    if framing.body == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    Ok(Parsed::Final(ResponseHead { len: head_len, status, framing: framing.body, keep_alive: framing.keep_alive }))
}

/// Response fields that describe one hop, not the message (RFC 9110 §7.6.1); never relayed.
/// `Transfer-Encoding` is handled by the framing. (The request's are in [`crate::forward`].)
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "transfer-encoding"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// How a response's body is framed and what its connection does after it (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ResponseFraming {
    body: Framing,
    /// The endpoint keeps the connection open after the body.
    keep_alive: bool,
    /// The response has a `Transfer-Encoding`, so its `Content-Length` means nothing and is not relayed
    /// (RFC 9112 §6.3: an intermediary MUST remove it).
    drops_length: bool,
}

/// The framing of a response body and whether the endpoint keeps the connection open (RFC 9112 §6.3).
fn response_framing(resp: &httparse::Response<'_, '_>, head_request: bool) -> Result<ResponseFraming, BadResponse> {
    let status = resp.code.unwrap_or(0);
    let mut close = false;
    let mut keep_alive_token = false;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = digits(h.value.trim_ascii()).ok_or(BadResponse("invalid content-length"))?;
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
            for option in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive_token |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
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
    // `close` wins wherever it is; HTTP/1.0 persists only when asked to (RFC 9112 §9.3).
    let keep_alive = !close && (resp.version == Some(1) || keep_alive_token) && body != Framing::UntilClose;
    Ok(ResponseFraming { body, keep_alive, drops_length: transfer_encoding })
}

/// Most `Connection` options pingora's path accepts in a request (it refuses more).
const MAX_CONNECTION_OPTIONS: usize = 9;

/// A request this path serves itself, read from its head.
pub(super) struct ClientRequest<'a> {
    pub(super) method: http::Method,
    /// The request target, origin-form.
    pub(super) target: &'a str,
    pub(super) headers: &'a [httparse::Header<'a>],
    /// The `Host` field, when it is UTF-8.
    pub(super) host: Option<&'a str>,
    /// The client asked to close the connection after this request.
    pub(super) close: bool,
}

impl ClientRequest<'_> {
    /// The target's path, without the query.
    pub(super) fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }
}

/// Read a complete request `head` as a request this path serves, or `None`: pingora's path takes it. That is
/// HTTP/1.0, an `Upgrade`, a target not in origin-form, a method `http` does not know, more than one `Host`
/// (pingora answers 400), and `Connection` options other than `close` and `keep-alive`: those name fields
/// to drop (RFC 9110 §7.6.1), which pingora's path drops, or refuses when they are the proxy's own.
pub(super) fn client_request<'a>(head: &'a [u8], headers: &'a mut [httparse::Header<'a>]) -> Option<ClientRequest<'a>> {
    let mut req = httparse::Request::new(headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let httparse::Request { method: Some(method), path: Some(target), version: Some(1), headers } = req else {
        return None;
    };
    let headers: &'a [httparse::Header<'a>] = headers;
    let mut host = None;
    let mut hosts = 0;
    let mut close = false;
    let mut options = 0;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = std::str::from_utf8(h.value).ok();
            hosts += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|o| !o.is_empty()) {
                options += 1;
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            }
        }
    }
    if hosts > 1 || options > MAX_CONNECTION_OPTIONS || !target.starts_with('/') {
        return None;
    }
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    Some(ClientRequest { method, target, headers, host, close })
}

/// The id a request went upstream with.
pub(super) enum SentId<'a> {
    /// The client's own.
    Client(&'a [u8]),
    /// Made by the proxy.
    Made(RequestId),
}

impl SentId<'_> {
    pub(super) fn as_str(&self) -> &str {
        match self {
            SentId::Client(id) => std::str::from_utf8(id).unwrap_or(""),
            SentId::Made(id) => id.as_str(),
        }
    }
}

/// Write the head of the request sent upstream into `out`: `request`'s, changed by the forwarding `rules`
/// (see [`crate::forward`]) for a client connected as `from` says. Returns the id the request goes with.
pub(super) fn write_upstream_head<'a>(
    out: &mut Vec<u8>,
    request: &ClientRequest<'a>,
    rules: &Forwarding,
    from: &Downstream<'_>,
) -> SentId<'a> {
    out.clear();
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    match rules.rewrite(request.target) {
        Some(parts) => parts.iter().for_each(|part| out.extend_from_slice(part.as_bytes())),
        None => out.extend_from_slice(request.target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = None;
    let mut client_id = None;
    for h in request.headers {
        match rules.client_field(h.name) {
            ClientField::Forward => write_field(out, h.name.as_bytes(), h.value),
            ClientField::HopByHop | ClientField::Drop => {}
            ClientField::ForwardedFor => forwarded_for = Some(h.value),
            ClientField::RequestId { forward } => {
                client_id = client_id.or(Some(h.value));
                if forward {
                    write_field(out, h.name.as_bytes(), h.value);
                }
            }
        }
    }
    let sent = match client_id {
        Some(id) => SentId::Client(id),
        None => SentId::Made(RequestId::new()),
    };
    let facts = Facts {
        from: *from,
        host: request.host.map(str::as_bytes),
        forwarded_for,
        new_request_id: match &sent {
            SentId::Made(id) => Some(id),
            SentId::Client(_) => None,
        },
    };
    rules.added(&facts, |field| match field {
        Added::ForwardedFor { prev, client } => {
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = prev {
                out.extend_from_slice(prev);
                if client.is_some() {
                    out.extend_from_slice(b", ");
                }
            }
            out.extend_from_slice(client.unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Added::ForwardedProto(proto) => write_field(out, b"x-forwarded-proto", proto.as_bytes()),
        Added::ForwardedHost(host) => write_field(out, b"x-forwarded-host", host),
        Added::RequestId(id) => write_field(out, b"x-request-id", id.as_bytes()),
        Added::Rule(name, value) => write_field(out, name.as_str().as_bytes(), value.as_bytes()),
    });
    out.extend_from_slice(b"\r\n");
    sent
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Finds where a chunked body ends in bytes fed piece by piece (RFC 9112 §7.1), so the body can be relayed
/// unchanged. Sizes are parsed by `httparse`; trailer fields are passed through.
#[derive(Default)]
pub(super) struct ChunkedEnd {
    state: ChunkState,
    /// A size or trailer line split across pieces.
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    /// Bytes of chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data: how many of its bytes came.
    DataEnd(u8),
    Trailer,
}

/// A chunked body that is not one; `.0` says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadChunk(pub(super) &'static str);

/// Longest chunk-size or trailer line accepted, its line end included.
const MAX_CHUNK_LINE: usize = 8 * 1024;

impl ChunkedEnd {
    /// Feed the next bytes; `Some(n)`: the body ends after the first `n` of them.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                ChunkState::Data(left) => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left { ChunkState::DataEnd(0) } else { ChunkState::Data(left - take) };
                }
                ChunkState::DataEnd(seen) => {
                    if data[i] != b"\r\n"[usize::from(seen)] {
                        return Err(BadChunk("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = if seen == 0 { ChunkState::DataEnd(1) } else { ChunkState::Size };
                }
                ChunkState::Size | ChunkState::Trailer => {
                    // The limit counts the whole line, however it was split.
                    let Some(nl) = data[i..].iter().position(|&b| b == b'\n') else {
                        if self.line.len() + (data.len() - i) > MAX_CHUNK_LINE {
                            return Err(BadChunk("chunk line too long"));
                        }
                        self.line.extend_from_slice(&data[i..]);
                        return Ok(None);
                    };
                    let end = i + nl + 1;
                    if self.line.len() + (end - i) > MAX_CHUNK_LINE {
                        return Err(BadChunk("chunk line too long"));
                    }
                    let line: &[u8] = if self.line.is_empty() {
                        &data[i..end]
                    } else {
                        self.line.extend_from_slice(&data[i..end]);
                        &self.line
                    };
                    i = end;
                    match self.state {
                        // httparse takes a line without digits for size 0: chunk-size is 1*HEXDIG.
                        ChunkState::Size if !line.first().is_some_and(u8::is_ascii_hexdigit) => {
                            return Err(BadChunk("malformed chunk size"));
                        }
                        ChunkState::Size => match httparse::parse_chunk_size(line) {
                            Ok(httparse::Status::Complete((_, 0))) => self.state = ChunkState::Trailer,
                            Ok(httparse::Status::Complete((_, size))) => self.state = ChunkState::Data(size),
                            _ => return Err(BadChunk("malformed chunk size")),
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
/// after it stay for this path. `None` when the end is not known: an upgrade, a chunked body not complete in
/// `buf`, a length pingora refuses (it answers 400 then); pingora reads on from the socket then. The length
/// is read as pingora reads it: `Transfer-Encoding` wins, and repeated `Content-Length` values, also in one
/// comma-separated field, must agree (RFC 9110 §8.6).
pub(super) fn handoff_end(buf: &[u8], head_len: usize) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(buf.get(..head_len)?), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    // `Err`: a length pingora refuses, unless a `Transfer-Encoding` makes it moot.
    let mut length: Result<u64, ()> = Ok(0);
    let mut seen_length = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return match ChunkedEnd::default().feed(&buf[head_len..]) {
                Ok(Some(n)) => Some(head_len + n),
                _ => None,
            };
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for value in h.value.split(|&b| b == b',') {
                length = match (length, digits(value.trim_ascii())) {
                    (Ok(l), Some(n)) if !seen_length || l == n => Ok(n),
                    _ => Err(()),
                };
                seen_length = true;
            }
        }
    }
    head_len.checked_add(usize::try_from(length.ok()?).ok()?)
}

#[cfg(test)]
mod tests;
