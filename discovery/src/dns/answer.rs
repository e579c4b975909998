//! From one query packet to one response packet, shared by the UDP and TCP transports.
//!
//! The query is decoded with hickory-proto (header, question, then each remaining record so that an OPT
//! record is found and anything malformed is caught). Answers come from the [`Table`]: a positive answer
//! is a pre-encoded response copied into the output buffer, with a freshly emitted header (the client's
//! ID, RD and CD bits) and the client's own spelling of the question name (for 0x20 case randomisation);
//! negative answers are a header, the question and the pre-encoded SOA. Errors (FORMERR, NOTIMP,
//! REFUSED, BADVERS) are built as hickory `Message`s, which allocates, but only off the hot path.
//!
//! The output buffer is reused by the caller, so the common case does not allocate (hickory may
//! allocate while decoding names longer than its inline capacity).

use super::key::NameKey;
use super::metrics::Outcome;
use super::table::{Lookup, Table};
use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

/// How a query arrived, which bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `out` holds the response.
    Reply,
    /// The name is outside the zone and an upstream is configured: forward the packet as it came.
    Forward,
    /// Not worth a response (too short to carry an ID, or a response rather than a query).
    Drop,
}

/// The size Berth advertises in its own OPT record.
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// Our OPT record (no options), appended when the client sent EDNS.
pub(crate) fn opt_record() -> Vec<u8> {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    let mut buf = Vec::with_capacity(16);
    let mut enc = BinEncoder::new(&mut buf);
    // Emitting a root-named OPT into an empty buffer cannot fail.
    let _ = Record::from(&edns).emit(&mut enc);
    buf
}

/// Answer `query` from `table` into `out`.
pub(crate) fn answer(
    table: &Table,
    opt: &[u8],
    can_forward: bool,
    query: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> (Verdict, Outcome) {
    out.clear();
    let mut dec = BinDecoder::new(query);
    let Ok(header) = Header::read(&mut dec) else {
        return (Verdict::Drop, Outcome::dropped(None));
    };
    let meta = header.metadata;
    if meta.message_type != MessageType::Query {
        return (Verdict::Drop, Outcome::dropped(None));
    }
    if meta.op_code != OpCode::Query {
        return error(&meta, None, false, ResponseCode::NotImp, out);
    }
    if header.counts.queries != 1 {
        return error(&meta, None, false, ResponseCode::FormErr, out);
    }
    let q_start = dec.index();
    let Ok(question) = Query::read(&mut dec) else {
        return error(&meta, None, false, ResponseCode::FormErr, out);
    };
    let q_end = dec.index();
    let q = Some(&question);

    let mut edns: Option<Edns> = None;
    let skipped = usize::from(header.counts.answers) + usize::from(header.counts.authorities);
    for _ in 0..skipped {
        if Record::read(&mut dec).is_err() {
            return error(&meta, q, false, ResponseCode::FormErr, out);
        }
    }
    for _ in 0..header.counts.additionals {
        let Ok(record) = Record::read(&mut dec) else {
            return error(&meta, q, false, ResponseCode::FormErr, out);
        };
        if record.record_type() != RecordType::OPT {
            continue;
        }
        // RFC 6891: more than one OPT is FORMERR; an OPT whose data is not OPT data is malformed too.
        if edns.is_some() || !matches!(&record.data, RData::OPT(_) | RData::Update0(_) | RData::NULL(_)) {
            return error(&meta, q, false, ResponseCode::FormErr, out);
        }
        edns = Some(Edns::from(&record));
    }
    let has_edns = edns.is_some();
    if edns.as_ref().is_some_and(|e| e.version() > 0) {
        return error(&meta, q, true, ResponseCode::BADVERS, out);
    }
    let qtype = question.query_type();
    if question.query_class() != DNSClass::IN {
        return error(&meta, q, has_edns, ResponseCode::Refused, out);
    }
    let Some(key) = NameKey::of(question.name()) else {
        return error(&meta, q, has_edns, ResponseCode::FormErr, out);
    };
    let limit = match transport {
        Transport::Udp => edns.as_ref().map_or(512, |e| usize::from(e.max_payload().max(512))),
        Transport::Tcp => usize::from(u16::MAX),
    };
    // The client's own bytes for the question, usable when its name is uncompressed (it always is in
    // practice); then the response echoes the client's letter case.
    let raw_question = &query[q_start..q_end];
    let raw = raw_question.len() == key.wire_len() + 4
        && raw_question[key.wire_len() - 1] == 0
        && raw_question[..key.wire_len() - 1].eq_ignore_ascii_case(key.as_bytes());
    let raw_question = raw.then_some(raw_question);

    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return error(&meta, q, has_edns, ResponseCode::Refused, out);
    }
    let ok = Outcome::new(Some(qtype), ResponseCode::NoError);
    match table.lookup(&key, qtype) {
        Lookup::Answer(encoded) => {
            let extra = if has_edns { opt.len() } else { 0 };
            if encoded.bytes.len() + extra > limit {
                truncated(&meta, &question, raw_question, has_edns.then_some(opt), out);
                return (Verdict::Reply, ok);
            }
            out.extend_from_slice(&encoded.bytes);
            if let Some(rq) = raw_question {
                // Same length, same name modulo case, same type and class (IN, checked above).
                out[12..12 + rq.len()].copy_from_slice(rq);
            }
            let mut counts = encoded.counts;
            if has_edns {
                out.extend_from_slice(opt);
                counts.additionals += 1;
            }
            write_header(out, &meta, ResponseCode::NoError, false, counts);
            (Verdict::Reply, ok)
        }
        Lookup::NoData => {
            negative(&meta, &question, raw_question, table, has_edns.then_some(opt), ResponseCode::NoError, out);
            (Verdict::Reply, ok)
        }
        Lookup::NxDomain => {
            negative(&meta, &question, raw_question, table, has_edns.then_some(opt), ResponseCode::NXDomain, out);
            (Verdict::Reply, Outcome::new(Some(qtype), ResponseCode::NXDomain))
        }
        Lookup::OutOfZone if can_forward => (Verdict::Forward, ok),
        Lookup::OutOfZone => error(&meta, q, has_edns, ResponseCode::Refused, out),
    }
}

fn response_metadata(request: &Metadata, rcode: ResponseCode, truncation: bool) -> Metadata {
    let mut meta = Metadata::response_from_request(request);
    meta.authoritative = true;
    meta.truncation = truncation;
    meta.response_code = rcode;
    meta
}

fn write_header(out: &mut Vec<u8>, request: &Metadata, rcode: ResponseCode, truncation: bool, counts: HeaderCounts) {
    let header = Header { metadata: response_metadata(request, rcode, truncation), counts };
    let mut enc = BinEncoder::new(out);
    // Overwrites the first 12 bytes, which the caller has already reserved.
    let _ = header.emit(&mut enc);
}

fn push_question(out: &mut Vec<u8>, question: &Query, raw: Option<&[u8]>) {
    match raw {
        Some(rq) => out.extend_from_slice(rq),
        None => {
            let at = out.len() as u32;
            let mut enc = BinEncoder::with_offset(out, at);
            let _ = question.emit(&mut enc);
        }
    }
}

fn negative(
    meta: &Metadata,
    question: &Query,
    raw: Option<&[u8]>,
    table: &Table,
    opt: Option<&[u8]>,
    rcode: ResponseCode,
    out: &mut Vec<u8>,
) {
    out.resize(12, 0);
    push_question(out, question, raw);
    let mut counts = HeaderCounts { queries: 1, answers: 0, authorities: 0, additionals: 0 };
    if !table.soa_tail.is_empty() {
        out.extend_from_slice(&table.soa_tail);
        counts.authorities = 1;
    }
    if let Some(opt) = opt {
        out.extend_from_slice(opt);
        counts.additionals = 1;
    }
    write_header(out, meta, rcode, false, counts);
}

fn truncated(meta: &Metadata, question: &Query, raw: Option<&[u8]>, opt: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    out.resize(12, 0);
    push_question(out, question, raw);
    let mut counts = HeaderCounts { queries: 1, answers: 0, authorities: 0, additionals: 0 };
    if let Some(opt) = opt {
        out.extend_from_slice(opt);
        counts.additionals = 1;
    }
    write_header(out, meta, ResponseCode::NoError, true, counts);
}

/// An error response through hickory's `Message` (allocates; errors are not the hot path).
pub(crate) fn error(
    meta: &Metadata,
    question: Option<&Query>,
    edns: bool,
    rcode: ResponseCode,
    out: &mut Vec<u8>,
) -> (Verdict, Outcome) {
    let mut msg = Message::response(meta.id, meta.op_code);
    msg.metadata = response_metadata(meta, rcode, false);
    msg.metadata.authoritative = false;
    if let Some(q) = question {
        msg.add_query(q.clone());
    }
    if edns || rcode.high() > 0 {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(e);
    }
    out.clear();
    let mut enc = BinEncoder::new(out);
    if msg.emit(&mut enc).is_err() {
        return (Verdict::Drop, Outcome::dropped(question.map(Query::query_type)));
    }
    (Verdict::Reply, Outcome::new(question.map(Query::query_type), rcode))
}

/// A SERVFAIL for a query that could not be forwarded.
pub(crate) fn servfail(query: &[u8], out: &mut Vec<u8>) -> Option<Outcome> {
    let mut dec = BinDecoder::new(query);
    let header = Header::read(&mut dec).ok()?;
    let question = if header.counts.queries == 1 { Query::read(&mut dec).ok() } else { None };
    let (verdict, outcome) = error(&header.metadata, question.as_ref(), false, ResponseCode::ServFail, out);
    (verdict == Verdict::Reply).then_some(outcome)
}
