//! What the gateway changes in a request's fields on their way upstream,
//! kept as a list of edits in the order the hooks make them: applied to
//! Pingora's copy of the request, or written by the direct path straight
//! into the upstream head beside the client's own fields, with no copy of
//! the request's header map (a copy, its growth for the added fields and
//! its drop cost more than the rest of the upstream head). The direct
//! path keeps its changes to an answer's fields the same way
//! ([`super::head::RawAnswer`]).

use std::ops::Range;

use http::{HeaderName, HeaderValue};
use pingora_error::{ErrorType, OkOrErr, OrErr, Result};
use pingora_http::RequestHeader;

/// The longest value [`FieldValue::inline`] holds in place.
const INLINE: usize = 62;

/// A field's value as the gateway keeps it: one taken from a message or
/// the configuration (a `HeaderValue`), or one the gateway makes for each
/// request (a request id, a `traceparent`, the client's address, a
/// length), held in place: none of them allocates, or has a reference
/// count to clone and drop.
#[derive(Clone)]
pub(crate) enum FieldValue {
    /// A value as the `http` crate holds it.
    Shared(HeaderValue),
    /// Visible ASCII, spaces and tabs only ([`FieldValue::inline`]), so
    /// always a valid `HeaderValue` too.
    Inline {
        /// How many of `bytes` are the value.
        len: u8,
        /// The value, then unused bytes.
        bytes: [u8; INLINE],
    },
}

impl FieldValue {
    /// `value` held in place: `None` when it is longer than 62 bytes or
    /// has a byte other than visible ASCII, a space or a tab.
    pub(crate) fn inline(value: &[u8]) -> Option<Self> {
        let len = u8::try_from(value.len())
            .ok()
            .filter(|n| usize::from(*n) <= INLINE)?;
        if !crate::request_head::is_visible_ascii(value) {
            return None;
        }
        let mut bytes = [0; INLINE];
        bytes[..value.len()].copy_from_slice(value);
        Some(Self::Inline { len, bytes })
    }

    /// `value` held in place when it can be, else as a `HeaderValue`;
    /// `None` when it is not a valid field value.
    pub(crate) fn of_text(value: &str) -> Option<Self> {
        Self::inline(value.as_bytes())
            .or_else(|| HeaderValue::from_str(value).ok().map(Self::Shared))
    }

    /// A decimal number, as `Content-Length` carries it.
    pub(crate) fn number(n: u64) -> Self {
        let mut text = itoa::Buffer::new();
        let digits = text.format(n).as_bytes();
        let mut bytes = [0; INLINE];
        bytes[..digits.len()].copy_from_slice(digits);
        // At most 20 digits.
        Self::Inline {
            len: digits.len() as u8,
            bytes,
        }
    }

    /// The value's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Shared(value) => value.as_bytes(),
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
        }
    }

    /// The value as text, when it is visible ASCII (as
    /// `HeaderValue::to_str`).
    pub(crate) fn to_str(&self) -> Option<&str> {
        match self {
            Self::Shared(value) => value.to_str().ok(),
            Self::Inline { .. } => std::str::from_utf8(self.as_bytes()).ok(),
        }
    }

    /// The value as a `HeaderValue` (Pingora's heads hold those).
    pub(crate) fn to_header_value(&self) -> Result<HeaderValue> {
        match self {
            Self::Shared(value) => Ok(value.clone()),
            Self::Inline { .. } => HeaderValue::from_bytes(self.as_bytes())
                .or_err(ErrorType::InvalidHTTPHeader, "invalid header value"),
        }
    }
}

impl From<HeaderValue> for FieldValue {
    fn from(value: HeaderValue) -> Self {
        Self::Shared(value)
    }
}

impl PartialEq<&str> for FieldValue {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii().to_string())
    }
}

/// One change: a field set (replacing every value of that name) or
/// removed.
enum Edit {
    Set(HeaderName, FieldValue),
    Remove(HeaderName),
}

impl Edit {
    fn name(&self) -> &HeaderName {
        match self {
            Edit::Set(name, _) | Edit::Remove(name) => name,
        }
    }
}

/// A bit chosen by a name's length and its first and last bytes, the same
/// in any case (`| 0x20` folds letters and leaves digits and `-` as they
/// are): two names with different bits differ, so a set of names kept as
/// the union of their bits tells most absent names with no comparison.
pub(super) fn name_bit(name: &[u8]) -> u64 {
    let fold = |b: Option<&u8>| usize::from(b.map_or(0, |b| b | 0x20));
    let at = name.len() * 7 + fold(name.first()) * 3 + fold(name.last());
    1 << (at % 64)
}

/// The edits of one upstream request, in order: for each name, the last
/// one decides.
#[derive(Default)]
pub(super) struct FieldEdits {
    /// Each edit, and whether it still decides its name (a later edit of
    /// the same name clears that when it is pushed).
    edits: Vec<(Edit, bool)>,
    /// The union of the edits' [`name_bit`]s.
    names: u64,
}

impl FieldEdits {
    /// Room for `n` edits (one allocation for a request's usual few).
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            edits: Vec::with_capacity(n),
            names: 0,
        }
    }

    /// Sets `name` to `value` alone.
    pub(super) fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        self.set_value(name, FieldValue::Shared(value));
    }

    /// Sets `name` to `value` alone.
    pub(super) fn set_value(&mut self, name: &HeaderName, value: FieldValue) {
        self.push(Edit::Set(name.clone(), value));
    }

    /// Sets `name` to `value` given as text (refused when not a valid
    /// field value).
    pub(super) fn set_str(&mut self, name: &HeaderName, value: &str) -> Result<()> {
        let value = FieldValue::of_text(value)
            .or_err(ErrorType::InvalidHTTPHeader, "invalid header value")?;
        self.set_value(name, value);
        Ok(())
    }

    /// Removes every value of `name`.
    pub(super) fn remove(&mut self, name: &HeaderName) {
        self.push(Edit::Remove(name.clone()));
    }

    /// Adds `edit` last; an earlier edit of its name decides no more
    /// (names are compared only when their bits say they may be equal).
    fn push(&mut self, edit: Edit) {
        let bit = name_bit(edit.name().as_str().as_bytes());
        if self.names & bit != 0 {
            for (earlier, decides) in &mut self.edits {
                if *decides && earlier.name() == edit.name() {
                    *decides = false;
                }
            }
        }
        self.names |= bit;
        self.edits.push((edit, true));
    }

    /// The edits that still decide their names, in order.
    fn deciding(&self) -> impl Iterator<Item = &Edit> {
        self.edits
            .iter()
            .filter_map(|(edit, decides)| decides.then_some(edit))
    }

    /// Applies the edits to `req`, in order.
    pub(super) fn apply(self, req: &mut RequestHeader) -> Result<()> {
        for (edit, _) in self.edits {
            match edit {
                Edit::Set(name, value) => req.insert_header(name, value.to_header_value()?)?,
                Edit::Remove(name) => {
                    req.remove_header(&name);
                }
            }
        }
        Ok(())
    }

    /// Whether an edit decides the field named `name` as it came on the
    /// wire (in any case).
    pub(super) fn decides_raw(&self, name: &[u8]) -> bool {
        self.names & name_bit(name) != 0
            && self
                .deciding()
                .any(|e| crate::request_head::same_name(name, e.name().as_str().as_bytes()))
    }

    /// What the edits make of `name` (lower case): `Some(Some(value))`
    /// when its last edit sets it, `Some(None)` when that removes it,
    /// `None` when no edit names it.
    pub(super) fn decided(&self, name: &str) -> Option<Option<&[u8]>> {
        if self.names & name_bit(name.as_bytes()) == 0 {
            return None;
        }
        self.deciding()
            .find(|e| e.name().as_str() == name)
            .map(|e| match e {
                Edit::Set(_, value) => Some(value.as_bytes()),
                Edit::Remove(_) => None,
            })
    }

    /// Writes the field lines of `head` at `spans` that `keep` keeps (by
    /// name) and no edit decides, as they were sent ([`write_lines`]),
    /// then the fields the edits set: the fields of the edited message,
    /// those the edits replace after the others.
    pub(super) fn write_h1(
        &self,
        head: &[u8],
        spans: &[(Range<usize>, Range<usize>)],
        keep: impl Fn(&[u8]) -> bool,
        out: &mut Vec<u8>,
    ) {
        write_lines(
            head,
            spans,
            |name| keep(name) && !self.decides_raw(name),
            out,
        );
        self.write_sets(out);
    }

    /// Writes the fields the edits set in the end (each name's last edit,
    /// when it sets), as HTTP/1 field lines.
    fn write_sets(&self, out: &mut Vec<u8>) {
        for edit in self.deciding() {
            if let Edit::Set(name, value) = edit {
                write_line(name, value, out);
            }
        }
    }
}

/// Writes the field lines of `head` whose name and value lie at `spans`
/// and whose name `keep` keeps, as they were sent: lines that follow one
/// another in `head`, each ending in CRLF right after its value, are
/// copied as one run; a line ended by a bare LF is written with CRLF.
pub(super) fn write_lines(
    head: &[u8],
    spans: &[(Range<usize>, Range<usize>)],
    keep: impl Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) {
    let mut run = 0..0;
    for (name, value) in spans {
        let (Some(name_bytes), Some(value_bytes)) =
            (head.get(name.clone()), head.get(value.clone()))
        else {
            continue;
        };
        if !keep(name_bytes) {
            continue;
        }
        let crlf = head.get(value.end..value.end + 2) == Some(b"\r\n".as_slice());
        if crlf && name.start == run.end {
            run.end = value.end + 2;
            continue;
        }
        out.extend_from_slice(&head[run.clone()]);
        if crlf {
            run = name.start..value.end + 2;
        } else {
            run = 0..0;
            out.extend_from_slice(name_bytes);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value_bytes);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(&head[run]);
}

/// One HTTP/1 field line: a well-known name in its usual case (as Pingora
/// writes it), others as they are stored (lower case).
fn write_line(name: &HeaderName, value: &FieldValue, out: &mut Vec<u8>) {
    let titled = pingora_http::titled_header_name_str(name);
    let name = titled.unwrap_or(name.as_str()).as_bytes();
    let value = value.as_bytes();
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::header;

    const FIELDS: &str = "Host: client.example\r\nx-keep: 1\r\nX-Twice: a\r\nx-twice: b\r\nAuthorization: Bearer secret\r\nx-hop: h\r\n";

    fn request() -> RequestHeader {
        let mut req = RequestHeader::build_no_case("GET", b"/v1/models", None).unwrap();
        for (name, value) in spans(FIELDS) {
            let (name, value) = (&FIELDS.as_bytes()[name], &FIELDS.as_bytes()[value]);
            req.append_header(HeaderName::from_bytes(name).unwrap(), value)
                .unwrap();
        }
        req
    }

    /// Where each field of `lines` (field lines and their ends) lies.
    fn spans(lines: &str) -> Vec<(Range<usize>, Range<usize>)> {
        let mut at = 0;
        let mut out = Vec::new();
        for line in lines.split_inclusive('\n') {
            let colon = line.find(':').unwrap();
            let value = line[colon + 1..].trim_start();
            let start = at + line.len() - value.len();
            let value = value.trim_end();
            out.push((at..at + colon, start..start + value.len()));
            at += line.len();
        }
        out
    }

    fn edits() -> FieldEdits {
        let mut e = FieldEdits::default();
        e.set(
            &HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("id"),
        );
        e.set_str(&header::HOST, "upstream:8080").unwrap();
        e.remove(&header::AUTHORIZATION);
        e.set(
            &HeaderName::from_static("x-late"),
            HeaderValue::from_static("1"),
        );
        e.remove(&HeaderName::from_static("x-late"));
        e.remove(&HeaderName::from_static("x-twice"));
        e.set(
            &HeaderName::from_static("x-twice"),
            HeaderValue::from_static("c"),
        );
        e.set_value(&header::CONTENT_LENGTH, FieldValue::number(12));
        e.set_value(
            &HeaderName::from_static("traceparent"),
            FieldValue::inline(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap(),
        );
        e
    }

    /// The fields of `wire` (field lines only) as (lower-case name,
    /// value) pairs, sorted.
    pub(in crate::proxy) fn fields(wire: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(wire).unwrap();
        let mut out: Vec<_> = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn written_edits_match_the_edited_copy() {
        let mut direct = Vec::new();
        let keep = |name: &[u8]| name != b"x-hop";
        edits().write_h1(FIELDS.as_bytes(), &spans(FIELDS), keep, &mut direct);

        let mut copy = request();
        copy.remove_header("x-hop");
        edits().apply(&mut copy).unwrap();
        let mut pingora = Vec::new();
        copy.header_to_h1_wire(&mut pingora);

        assert_eq!(fields(&direct), fields(&pingora));
        let text = String::from_utf8(direct).unwrap();
        // The gateway's well-known names in their usual case, as Pingora
        // writes them.
        assert!(text.contains("Host: upstream:8080\r\n"), "{text}");
        assert!(text.contains("Content-Length: 12\r\n"), "{text}");
        assert!(!text.contains("secret") && !text.contains("x-late") && !text.contains("x-hop"));
        assert_eq!(text.matches("x-twice").count(), 1, "{text}");
    }

    #[test]
    fn no_edits_write_the_fields_as_they_came() {
        let mut direct = Vec::new();
        FieldEdits::default().write_h1(FIELDS.as_bytes(), &spans(FIELDS), |_| true, &mut direct);
        assert_eq!(direct, FIELDS.as_bytes());
    }

    #[test]
    fn a_value_is_held_in_place_only_when_it_is_short_plain_text() {
        let id = FieldValue::inline(b"0af7651916cd43dd8448eb211c80319c").unwrap();
        assert!(matches!(id, FieldValue::Inline { .. }));
        assert_eq!(id.as_bytes(), b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(id.to_str(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(
            id.to_header_value().unwrap(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(FieldValue::inline(b"").is_some());
        assert!(FieldValue::inline(b"a\tb c").is_some());
        assert!(FieldValue::inline(&[b'x'; INLINE]).is_some());
        assert!(FieldValue::inline(&[b'x'; INLINE + 1]).is_none());
        for bad in [&b"a\r\nb"[..], b"a\x00", b"\x7f", "é".as_bytes()] {
            assert!(FieldValue::inline(bad).is_none(), "{bad:?}");
        }
        // A longer value goes through `HeaderValue` instead.
        let mut e = FieldEdits::default();
        let long = "x".repeat(INLINE + 10);
        e.set_str(&header::HOST, &long).unwrap();
        assert_eq!(e.decided("host"), Some(Some(long.as_bytes())));
    }

    #[test]
    fn a_number_is_written_in_decimal() {
        for n in [0, 7, 12, 1_000_000, u64::MAX] {
            assert_eq!(FieldValue::number(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn names_that_share_a_bit_are_still_told_apart() {
        // Same length, first and last bytes: the same bit, different names.
        let (a, b) = (
            HeaderName::from_static("x-a1"),
            HeaderName::from_static("x-b1"),
        );
        assert_eq!(name_bit(b"x-a1"), name_bit(b"x-b1"));
        let mut e = FieldEdits::default();
        e.set(&a, HeaderValue::from_static("1"));
        e.set(&b, HeaderValue::from_static("2"));
        e.set(&a, HeaderValue::from_static("3"));
        e.remove(&HeaderName::from_static("x-c1"));
        assert_eq!(e.decided("x-a1"), Some(Some(&b"3"[..])));
        assert_eq!(e.decided("x-b1"), Some(Some(&b"2"[..])));
        assert_eq!(e.decided("x-c1"), Some(None));
        assert_eq!(e.decided("x-d1"), None);
        assert!(e.decides_raw(b"X-A1") && e.decides_raw(b"x-C1"));
        assert!(!e.decides_raw(b"x-d1") && !e.decides_raw(b"host"));
        let mut wire = Vec::new();
        e.write_h1(b"", &[], |_| true, &mut wire);
        assert_eq!(wire, b"x-b1: 2\r\nx-a1: 3\r\n");
    }

    #[test]
    fn a_bad_value_is_refused() {
        let mut e = FieldEdits::default();
        assert!(e.set_str(&header::HOST, "bad\nvalue").is_err());
        assert!(e.edits.is_empty());
    }
}
