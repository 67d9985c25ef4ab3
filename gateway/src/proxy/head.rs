//! An upstream answer's head as the hooks read and change it
//! ([`AnswerHead`]): Pingora's `ResponseHeader` on its path, and on the
//! direct path a [`RawAnswer`], the head's bytes as the upstream sent them
//! with the gateway's changes kept as edits beside them. Writing a raw
//! answer copies the upstream's field lines as they are (their names in
//! the upstream's case, as nginx and HAProxy pass them) and then the
//! fields the edits set: no header map is built, grown and dropped for an
//! answer that the hooks only read and decorate.

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_error::Result;
use pingora_http::{ResponseHeader, StaticHeaderName};

use super::fields::{FieldEdits, FieldValue, name_bit};

/// What the hooks need of an answer's head.
pub(super) trait AnswerHead {
    /// The answer's status.
    fn status(&self) -> StatusCode;
    /// The (first) value of the field `name` (lower case), as the answer
    /// now stands.
    fn field(&self, name: &str) -> Option<&[u8]>;
    /// Sets `name` to `value` alone.
    fn set(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()>;
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);

    /// Sets one of the gateway's own fields to a value it made.
    fn set_static_value(
        &mut self,
        name: &'static StaticHeaderName,
        value: &FieldValue,
    ) -> Result<()> {
        self.set_static(name, value.to_header_value()?)
    }

    /// Whether the answer has a field `name` (lower case).
    fn has(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    /// Sets one of the gateway's own fields to `value` alone.
    fn set_static(&mut self, name: &'static StaticHeaderName, value: HeaderValue) -> Result<()> {
        self.set(name.name(), value)
    }
}

impl AnswerHead for ResponseHeader {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn field(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(HeaderValue::as_bytes)
    }

    fn set(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name.clone(), value)
    }

    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }

    // The name's case is static: nothing is copied into a case-keeping
    // map (Pingora patch 6).
    fn set_static(&mut self, name: &'static StaticHeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }
}

/// An answer's head as the upstream sent it, less its connection's own
/// (hop-by-hop) fields, with the gateway's edits.
pub(super) struct RawAnswer {
    /// The head's bytes (status line to blank line).
    head: Bytes,
    status: StatusCode,
    /// The reason phrase, as sent.
    reason: Option<Range<usize>>,
    /// Where each kept field's name and value lie in `head`.
    fields: Vec<(Range<usize>, Range<usize>)>,
    /// A bit for each kept field's name ([`name_bit`]): a name whose bit
    /// is clear is not among them, with no walk through them (most names
    /// the hooks ask an answer for are not in it).
    names: u64,
    edits: FieldEdits,
}

impl RawAnswer {
    /// An answer of `status` over `head`, with the spans of its reason
    /// phrase and of the fields kept.
    pub(super) fn new(
        head: Bytes,
        status: StatusCode,
        reason: Option<Range<usize>>,
        fields: Vec<(Range<usize>, Range<usize>)>,
    ) -> Self {
        let names = fields
            .iter()
            .filter_map(|(name, _)| head.get(name.clone()))
            .fold(0, |bits, name| bits | name_bit(name));
        Self {
            head,
            status,
            reason,
            fields,
            names,
            edits: FieldEdits::with_capacity(6),
        }
    }

    /// The upstream's fields not decided by an edit, as (name, value).
    #[cfg(test)]
    fn kept(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().filter_map(|(name, value)| {
            let name = self.head.get(name.clone())?;
            let value = self.head.get(value.clone())?;
            (!self.edits.decides_raw(name)).then_some((name, value))
        })
    }

    /// Writes the answer's head as HTTP/1.1: the status line (the
    /// upstream's reason phrase, else the status's own), the upstream's
    /// fields as sent, then those the edits set.
    pub(super) fn write_h1(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        match self.reason.clone().and_then(|r| self.head.get(r)) {
            Some(reason) => out.extend_from_slice(reason),
            None => out.extend_from_slice(
                self.status
                    .canonical_reason()
                    .unwrap_or_default()
                    .as_bytes(),
            ),
        }
        out.extend_from_slice(b"\r\n");
        self.edits.write_h1(&self.head, &self.fields, |_| true, out);
        out.extend_from_slice(b"\r\n");
    }
}

impl AnswerHead for RawAnswer {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn field(&self, name: &str) -> Option<&[u8]> {
        if let Some(decided) = self.edits.decided(name) {
            return decided;
        }
        if self.names & name_bit(name.as_bytes()) == 0 {
            return None;
        }
        self.fields.iter().find_map(|(n, v)| {
            let found = self.head.get(n.clone())?;
            crate::request_head::same_name(found, name.as_bytes())
                .then(|| self.head.get(v.clone()))
                .flatten()
        })
    }

    fn set(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.edits.set(name, value);
        Ok(())
    }

    fn remove(&mut self, name: &HeaderName) {
        self.edits.remove(name);
    }

    fn set_static_value(
        &mut self,
        name: &'static StaticHeaderName,
        value: &FieldValue,
    ) -> Result<()> {
        self.edits.set_value(name.name(), value.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::header;

    /// A raw answer over `head` with every field kept.
    fn raw(head: &'static str) -> RawAnswer {
        let bytes = Bytes::from_static(head.as_bytes());
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut fields);
        parsed.parse(head.as_bytes()).unwrap();
        let at = |piece: &[u8]| {
            let start = piece.as_ptr() as usize - bytes.as_ptr() as usize;
            start..start + piece.len()
        };
        let spans = parsed
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value)))
            .collect();
        let reason = parsed.reason.map(|r| at(r.as_bytes()));
        let status = StatusCode::from_u16(parsed.code.unwrap()).unwrap();
        RawAnswer::new(bytes.clone(), status, reason, spans)
    }

    /// The same answer as a `ResponseHeader`.
    fn built(head: &'static str) -> ResponseHeader {
        let answer = raw(head);
        let mut resp = ResponseHeader::build_no_case(answer.status.as_u16(), None).unwrap();
        for (name, value) in answer.kept() {
            resp.append_header(
                HeaderName::from_bytes(name).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            )
            .unwrap();
        }
        resp
    }

    /// The same changes, through the trait.
    fn change(head: &mut impl AnswerHead) {
        head.set(
            &header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        )
        .unwrap();
        head.remove(&header::CONTENT_LENGTH);
        head.set(
            &HeaderName::from_static("x-weir-route"),
            HeaderValue::from_static("chat"),
        )
        .unwrap();
        head.remove(&HeaderName::from_static("x-gone"));
        let id = FieldValue::inline(b"req-1").unwrap();
        head.set_static_value(&crate::headers::X_REQUEST_ID, &id)
            .unwrap();
        head.set(
            &header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        )
        .unwrap();
        head.remove(&header::TRANSFER_ENCODING);
    }

    /// The fields of a written head (its status line left out).
    fn fields(wire: &[u8]) -> Vec<(String, String)> {
        let line = wire.iter().position(|b| *b == b'\n').unwrap();
        super::super::fields::tests::fields(&wire[line + 1..])
    }

    const ANSWER: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Gone: 1\r\nContent-Length: 2\r\nX-Twice: a\r\nx-twice: b\r\n\r\n";

    #[test]
    fn a_raw_answer_reads_and_changes_as_a_response_header() {
        let mut direct = raw(ANSWER);
        let mut pingora = built(ANSWER);
        for name in [
            "content-type",
            "x-twice",
            "x-gone",
            "content-length",
            "x-none",
        ] {
            assert_eq!(direct.field(name), pingora.field(name), "{name}");
        }
        change(&mut direct);
        change(&mut pingora);
        for name in [
            "content-type",
            "x-twice",
            "x-gone",
            "content-length",
            "x-weir-route",
            "x-request-id",
            "transfer-encoding",
        ] {
            assert_eq!(direct.field(name), pingora.field(name), "{name}");
        }
        assert_eq!(direct.status(), pingora.status());

        let mut wire = Vec::new();
        direct.write_h1(&mut wire);
        let mut expected = Vec::new();
        pingora.header_to_h1_wire(&mut expected);
        let mut expected_head = b"HTTP/1.1 200 OK\r\n".to_vec();
        expected_head.extend_from_slice(&expected);
        assert_eq!(fields(&wire), fields(&expected_head));
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        // The upstream's names as it sent them; values of one name in order.
        assert!(text.contains("X-Twice: a\r\nx-twice: b\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain\r\n"), "{text}");
        assert!(text.contains("x-request-id: req-1\r\n"), "{text}");
    }

    #[test]
    fn a_name_has_one_bit_in_any_case() {
        for (a, b) in [
            ("content-length", "Content-Length"),
            ("x-weir-queue-depth", "X-WEIR-QUEUE-DEPTH"),
            ("te", "TE"),
            ("x-1", "X-1"),
        ] {
            assert_eq!(name_bit(a.as_bytes()), name_bit(b.as_bytes()), "{a}");
        }
        // An answer's names found in any case; others not.
        let answer = raw(ANSWER);
        for name in ["content-type", "x-gone", "content-length", "x-twice"] {
            assert!(answer.has(name), "{name}");
        }
        for name in ["transfer-encoding", "x-weir-queue-depth", "date", "x-twic"] {
            assert!(!answer.has(name), "{name}");
        }
    }

    #[test]
    fn an_untouched_answer_is_written_as_it_came() {
        let mut wire = Vec::new();
        raw(ANSWER).write_h1(&mut wire);
        assert_eq!(wire, ANSWER.as_bytes());
    }

    #[test]
    fn lines_are_copied_as_sent_and_bare_lf_ends_become_crlf() {
        let mut wire = Vec::new();
        raw("HTTP/1.1 200 OK\nA: 1\nB:2\n\n").write_h1(&mut wire);
        assert_eq!(wire, b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n");
        wire.clear();
        let mut answer = raw("HTTP/1.1 200 OK\r\nA:1\r\nB: 2\nX-Gone: 1\r\nC:  3\r\nD: 4\r\n\r\n");
        answer.remove(&HeaderName::from_static("x-gone"));
        answer.write_h1(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 200 OK\r\nA:1\r\nB: 2\r\nC:  3\r\nD: 4\r\n\r\n"
        );
    }

    #[test]
    fn the_reason_phrase_is_the_upstreams_else_the_statuss_own() {
        let mut wire = Vec::new();
        raw("HTTP/1.1 404 Gone Fishing\r\n\r\n").write_h1(&mut wire);
        assert_eq!(wire, b"HTTP/1.1 404 Gone Fishing\r\n\r\n");
        let mut answer = raw("HTTP/1.1 404 Gone Fishing\r\n\r\n");
        answer.reason = None;
        wire.clear();
        answer.write_h1(&mut wire);
        assert_eq!(wire, b"HTTP/1.1 404 Not Found\r\n\r\n");
    }
}
