//! A request's head as the request logic reads and rewrites it
//! ([`RequestHead`]), whichever HTTP engine read it: Pingora's
//! `RequestHeader` (HTTP/2, gRPC, and what the direct path hands over), or
//! the direct HTTP/1 path's [`RawRequest`], the head's bytes with where its
//! fields lie. A raw request builds no header map: the hooks look its few
//! fields up by name, and its field lines go upstream as the client sent
//! them (`crate::proxy::fields`).

use std::ops::Range;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Uri, Version};
use pingora_http::RequestHeader;

/// What the request logic needs of a request's head.
pub trait RequestHead: Send + Sync {
    /// The request's method.
    fn method(&self) -> &Method;
    /// The request's HTTP version.
    fn version(&self) -> Version;
    /// The request's target as a URI (its path and query; its authority
    /// only where the engine keeps one, as HTTP/2's `:authority`).
    fn uri(&self) -> &Uri;
    /// The (first) value of the field `name`.
    fn field(&self, name: &HeaderName) -> Option<&[u8]>;
    /// The (first) value of the field `name`, as a value to send on.
    fn field_value(&self, name: &HeaderName) -> Option<HeaderValue>;
    /// Replaces the target's path and query (what routes match and the
    /// upstream receives).
    fn set_path_and_query(&mut self, path: PathAndQuery) -> Result<(), http::Error>;

    /// The (first) value of `name` as text, when it is visible ASCII (as
    /// `HeaderValue::to_str` reads it).
    fn field_str(&self, name: &HeaderName) -> Option<&str> {
        self.field(name).and_then(visible_ascii)
    }

    /// Whether the request has a field `name`.
    fn has_field(&self, name: &HeaderName) -> bool {
        self.field(name).is_some()
    }
}

/// `value` as text when every byte is visible ASCII, a space or a tab.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    is_visible_ascii(value)
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Whether every byte of `value` is visible ASCII, a space or a tab: one
/// pass with no early exit (the compiler checks many bytes at a time).
pub fn is_visible_ascii(value: &[u8]) -> bool {
    value.iter().fold(true, |ok, b| {
        ok & ((0x20..0x7f).contains(b) | (*b == b'\t'))
    })
}

/// Whether `wire`, bytes as a message carries them (a field's name, a
/// token of its value), is `lower`, a name in lower case (as `HeaderName`
/// keeps them), in any case: `eq_ignore_ascii_case` eight bytes at a step.
/// Two bytes of a step may differ only in bit 5 (`0x20`), and only where
/// `lower`'s byte is a letter (`a` to `z`); a `lower` with an upper-case
/// letter matches that letter exactly.
pub fn same_name(wire: &[u8], lower: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    if wire.len() != lower.len() {
        return false;
    }
    if wire.len() < 8 {
        return wire
            .iter()
            .zip(lower)
            .all(|(w, l)| w == l || (w ^ 0x20 == *l && l.is_ascii_lowercase()));
    }
    let word = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let same = |at: usize| {
        let (w, l) = (word(wire, at), word(lower, at));
        // Bit 7 of each byte of `l` that is `a`..=`z`, moved to bit 5: the
        // sums are of bytes below 0x80 (no carry crosses a byte), and a
        // byte at or above 0x80 is no letter.
        let ascii = !l & (ONES * 0x80);
        let low = l & (ONES * 0x7f);
        let from_a = low + ONES * (0x80 - b'a' as u64);
        let past_z = low + ONES * (0x80 - b'z' as u64 - 1);
        let letters = (from_a & !past_z & ascii & (ONES * 0x80)) >> 2;
        (w ^ l) & !letters == 0
    };
    // Whole steps, then the last eight bytes (overlapping the step before).
    let mut at = 0;
    while at + 8 < wire.len() {
        if !same(at) {
            return false;
        }
        at += 8;
    }
    same(wire.len() - 8)
}

impl RequestHead for RequestHeader {
    fn method(&self) -> &Method {
        &self.method
    }

    fn version(&self) -> Version {
        self.version
    }

    fn uri(&self) -> &Uri {
        &self.uri
    }

    fn field(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers.get(name).map(HeaderValue::as_bytes)
    }

    fn field_value(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.headers.get(name).cloned()
    }

    fn set_path_and_query(&mut self, path: PathAndQuery) -> Result<(), http::Error> {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(path);
        self.set_uri(Uri::from_parts(parts)?);
        Ok(())
    }
}

/// A request head as the client sent it: its bytes, where each field's
/// name and value lie in them, and its target as a URI (rewritten by the
/// request logic at most).
pub struct RawRequest {
    head: Bytes,
    method: Method,
    version: Version,
    uri: Uri,
    /// The target as it goes upstream: as received, or as rewritten.
    wire_target: Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl RawRequest {
    /// A request over `head` whose fields lie at `fields` (names and
    /// values as httparse checked them), with its target parsed as `uri`
    /// and sent upstream as `wire_target`.
    pub fn new(
        head: Bytes,
        method: Method,
        version: Version,
        uri: Uri,
        wire_target: Bytes,
        fields: Vec<(Range<usize>, Range<usize>)>,
    ) -> Self {
        Self {
            head,
            method,
            version,
            uri,
            wire_target,
            fields,
        }
    }

    /// The target as it goes upstream.
    pub fn wire_target(&self) -> &[u8] {
        &self.wire_target
    }

    /// The fields as (name, value), in the order sent.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().filter_map(|(name, value)| {
            Some((self.head.get(name.clone())?, self.head.get(value.clone())?))
        })
    }

    /// The fields as spans of [`Self::head`], in the order sent.
    pub fn spans(&self) -> &[(Range<usize>, Range<usize>)] {
        &self.fields
    }

    /// The head's bytes.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    fn span_of(&self, name: &HeaderName) -> Option<&Range<usize>> {
        let name = name.as_str().as_bytes();
        self.fields.iter().find_map(|(n, v)| {
            self.head
                .get(n.clone())
                .is_some_and(|n| same_name(n, name))
                .then_some(v)
        })
    }
}

impl RequestHead for RawRequest {
    fn method(&self) -> &Method {
        &self.method
    }

    fn version(&self) -> Version {
        self.version
    }

    fn uri(&self) -> &Uri {
        &self.uri
    }

    fn field(&self, name: &HeaderName) -> Option<&[u8]> {
        self.head.get(self.span_of(name)?.clone())
    }

    fn field_value(&self, name: &HeaderName) -> Option<HeaderValue> {
        let span = self.span_of(name)?.clone();
        HeaderValue::from_maybe_shared(self.head.slice(span)).ok()
    }

    fn set_path_and_query(&mut self, path: PathAndQuery) -> Result<(), http::Error> {
        self.wire_target = Bytes::copy_from_slice(path.as_str().as_bytes());
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(path);
        self.uri = Uri::from_parts(parts)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_name_matches_in_any_case_exactly_as_eq_ignore_ascii_case() {
        let lower = [
            "te",
            "host",
            "x-1",
            "upgrade",
            "connection",
            "keep-alive",
            "content-type",
            "content-length",
            "transfer-encoding",
            "x-weir-queue-depth",
            "x~y^z_`|0123456789",
            "",
        ];
        for l in lower {
            let l = l.as_bytes();
            // Every single-byte change of every position, each case.
            let mut wire = l.to_vec();
            assert!(same_name(&wire, l));
            wire.make_ascii_uppercase();
            assert!(same_name(&wire, l));
            for at in 0..l.len() {
                for b in 0..=255u8 {
                    let mut w = l.to_vec();
                    w[at] = b;
                    assert_eq!(same_name(&w, l), w.eq_ignore_ascii_case(l), "{w:?} {l:?}");
                }
            }
            assert!(!same_name(&l[..l.len().saturating_sub(1)], l) || l.is_empty());
        }
    }

    /// The same request both ways: raw, and as Pingora's header.
    fn both(target: &str, fields: &[(&str, &str)]) -> (RawRequest, RequestHeader) {
        let mut text = format!("GET {target} HTTP/1.1\r\n");
        for (n, v) in fields {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        let head = Bytes::from(text);
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut slots);
        parsed.parse(&head).unwrap();
        let at = |piece: &[u8]| {
            let start = piece.as_ptr() as usize - head.as_ptr() as usize;
            start..start + piece.len()
        };
        let spans = parsed
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value)))
            .collect();
        let uri: Uri = target.parse().unwrap();
        let raw = RawRequest::new(
            head.clone(),
            Method::GET,
            Version::HTTP_11,
            uri,
            Bytes::from(target.to_owned()),
            spans,
        );
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in fields {
            req.append_header(n.to_string(), *v).unwrap();
        }
        (raw, req)
    }

    #[test]
    fn a_raw_request_reads_as_pingoras_header() {
        let (raw, req) = both(
            "/v1/chat?x=1",
            &[
                ("Host", "a.test"),
                ("X-Twice", "1"),
                ("x-twice", "2"),
                ("Content-Type", "application/json"),
                ("X-Empty", ""),
                ("X-Obs", "caf\u{e9}"),
            ],
        );
        for name in [
            "host",
            "x-twice",
            "content-type",
            "x-empty",
            "x-obs",
            "x-none",
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(raw.field(&name), req.field(&name), "{name}");
            assert_eq!(raw.field_str(&name), req.field_str(&name), "{name}");
            assert_eq!(raw.has_field(&name), req.has_field(&name), "{name}");
            assert_eq!(raw.field_value(&name), req.field_value(&name), "{name}");
        }
        assert_eq!(
            raw.field_str(&HeaderName::from_static("x-obs")),
            None,
            "not visible ASCII, as HeaderValue::to_str"
        );
        assert_eq!(raw.uri(), req.uri());
        assert_eq!(RequestHead::method(&raw), RequestHead::method(&req));
        assert_eq!(raw.fields().count(), 6);
    }

    #[test]
    fn a_rewritten_target_is_the_one_sent() {
        let (mut raw, mut req) = both("/a//b?q=1", &[("host", "t")]);
        let path: PathAndQuery = "/a/b?q=1".parse().unwrap();
        raw.set_path_and_query(path.clone()).unwrap();
        req.set_path_and_query(path).unwrap();
        assert_eq!(raw.uri(), req.uri());
        assert_eq!(raw.wire_target(), b"/a/b?q=1");
        assert_eq!(req.raw_path(), b"/a/b?q=1");
    }
}
