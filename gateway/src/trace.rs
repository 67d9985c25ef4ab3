//! W3C Trace Context (`traceparent`): the gateway is one hop of the
//! caller's trace. A valid incoming `traceparent` keeps its trace id and
//! flags and gets the gateway's own span id as the parent of the upstream
//! request; a missing or malformed one starts a new trace (flags `00`: the
//! gateway records no spans itself). `tracestate` passes through unchanged.
//! The trace id is written to the access log, so a request can be found by
//! the trace it belongs to.

use http::HeaderValue;

use crate::request_head::RequestHead;

/// The trace context of one request, as sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (kept from the caller, or new).
    pub trace_id: [u8; 16],
    /// The gateway's span: the upstream request's parent.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled), kept from the caller.
    pub flags: u8,
}

/// Parsed once: looked up in every request.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

impl TraceContext {
    /// The caller's context (its span is `span_id`), when `req` carries a
    /// valid `traceparent`.
    pub fn incoming(req: &dyn RequestHead) -> Option<Self> {
        let (trace_id, span_id, flags) = req.field(&TRACEPARENT).and_then(parse)?;
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The context for the upstream request of `req` when no spans are
    /// recorded: the caller's trace with a new span id, or a new trace.
    pub fn for_request(req: &dyn RequestHead) -> Self {
        let span_id = nonzero(fastrand::u64(..)).to_be_bytes();
        match Self::incoming(req) {
            Some(caller) => Self { span_id, ..caller },
            None => Self {
                trace_id: nonzero_u128(fastrand::u128(..)).to_be_bytes(),
                span_id,
                flags: 0,
            },
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> Option<HeaderValue> {
        HeaderValue::from_bytes(&self.header_bytes()?).ok()
    }

    /// The `traceparent` header value's bytes: `00-` trace `-` span `-`
    /// flags, in lower-case hex, written in place (no formatting).
    pub fn header_bytes(&self) -> Option<[u8; 55]> {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex::encode_to_slice(self.trace_id, &mut buf[3..35]).ok()?;
        hex::encode_to_slice(self.span_id, &mut buf[36..52]).ok()?;
        hex::encode_to_slice([self.flags], &mut buf[53..55]).ok()?;
        Some(buf)
    }
}

fn nonzero(v: u64) -> u64 {
    v.max(1)
}

fn nonzero_u128(v: u128) -> u128 {
    v.max(1)
}

/// The trace id, parent id and flags of a valid `traceparent`
/// (`VV-TTTT...(32)-PPPP...(16)-FF`, lower-case hex, ids not all zero,
/// version not `ff`; a later version may add fields after a `-`).
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let lower_hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if ![version, trace, parent, flags].iter().all(|p| lower_hex(p)) || version == b"ff" {
        return None;
    }
    if version == b"00" && value.len() != 55 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    let mut parent_id = [0u8; 8];
    hex::decode_to_slice(parent, &mut parent_id).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    let mut flag = [0u8; 1];
    hex::decode_to_slice(flags, &mut flag).ok()?;
    Some((trace_id, parent_id, flag[0]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use pingora_http::RequestHeader;

    fn req(traceparent: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(t) = traceparent {
            r.insert_header("traceparent", t).unwrap();
        }
        r
    }

    #[test]
    fn a_valid_parent_keeps_its_trace_and_flags_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::for_request(&req(Some(incoming)));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        let out = t.header().unwrap();
        let out = out.to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert!(parse(out.as_bytes()).is_some());
    }

    #[test]
    fn a_missing_or_malformed_parent_starts_a_new_trace() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
        ] {
            let t = TraceContext::for_request(&req(bad));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad:?}"
            );
            assert_eq!(t.flags, 0);
            assert!(parse(t.header().unwrap().as_bytes()).is_some());
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(parse(later.as_bytes()).is_some());
    }
}
