//! What the gateway changes in a request's fields on their way upstream,
//! kept as a list of edits in the order the hooks make them: applied to
//! Pingora's copy of the request, or written by the direct path straight
//! into the upstream head beside the client's own fields, with no copy of
//! the request's header map (a copy, its growth for the added fields and
//! its drop cost more than the rest of the upstream head). The direct
//! path keeps its changes to an answer's fields the same way
//! ([`super::head::RawAnswer`]).

use http::{HeaderName, HeaderValue};
use pingora_error::{ErrorType, OrErr, Result};
use pingora_http::RequestHeader;

/// One change: a field set (replacing every value of that name) or
/// removed.
enum Edit {
    Set(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl Edit {
    fn name(&self) -> &HeaderName {
        match self {
            Edit::Set(name, _) | Edit::Remove(name) => name,
        }
    }
}

/// The edits of one upstream request, in order: for each name, the last
/// one decides.
#[derive(Default)]
pub(super) struct FieldEdits {
    edits: Vec<Edit>,
}

impl FieldEdits {
    /// Room for `n` edits (one allocation for a request's usual few).
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            edits: Vec::with_capacity(n),
        }
    }

    /// Sets `name` to `value` alone.
    pub(super) fn set(&mut self, name: &HeaderName, value: HeaderValue) {
        self.edits.push(Edit::Set(name.clone(), value));
    }

    /// Sets `name` to `value` given as text (refused when not a valid
    /// field value).
    pub(super) fn set_str(&mut self, name: &HeaderName, value: &str) -> Result<()> {
        let value = HeaderValue::from_str(value)
            .or_err(ErrorType::InvalidHTTPHeader, "invalid header value")?;
        self.set(name, value);
        Ok(())
    }

    /// Removes every value of `name`.
    pub(super) fn remove(&mut self, name: &HeaderName) {
        self.edits.push(Edit::Remove(name.clone()));
    }

    /// Applies the edits to `req`, in order.
    pub(super) fn apply(self, req: &mut RequestHeader) -> Result<()> {
        for edit in self.edits {
            match edit {
                Edit::Set(name, value) => req.insert_header(name, value)?,
                Edit::Remove(name) => {
                    req.remove_header(&name);
                }
            }
        }
        Ok(())
    }

    /// Whether an edit decides `name` (the client's values are not sent).
    fn decides(&self, name: &HeaderName) -> bool {
        self.edits.iter().any(|e| e.name() == name)
    }

    /// Whether an edit decides the field named `name` as it came on the
    /// wire (in any case).
    pub(super) fn decides_raw(&self, name: &[u8]) -> bool {
        self.edits
            .iter()
            .any(|e| e.name().as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// What the edits make of `name` (lower case): `Some(Some(value))`
    /// when its last edit sets it, `Some(None)` when that removes it,
    /// `None` when no edit names it.
    pub(super) fn decided(&self, name: &str) -> Option<Option<&HeaderValue>> {
        self.edits
            .iter()
            .rev()
            .find(|e| e.name().as_str() == name)
            .map(|e| match e {
                Edit::Set(_, value) => Some(value),
                Edit::Remove(_) => None,
            })
    }

    /// The fields set in the end: each name's last edit, when it sets.
    fn sets(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.edits
            .iter()
            .enumerate()
            .filter_map(|(i, edit)| match edit {
                Edit::Set(name, value)
                    if !self
                        .edits
                        .get(i + 1..)
                        .is_some_and(|later| later.iter().any(|l| l.name() == name)) =>
                {
                    Some((name, value))
                }
                _ => None,
            })
    }

    /// Writes the fields of `req` as edited, less those named in `skip`
    /// (the connection's own), as HTTP/1 field lines: what writing the
    /// edited copy of the request would give (well-known names in their
    /// usual case, others as they are stored, lower case), except that a
    /// field the edits replace comes after the client's fields.
    pub(super) fn write_h1(&self, req: &RequestHeader, skip: &[HeaderName], out: &mut Vec<u8>) {
        for (name, value) in &req.headers {
            if !self.decides(name) && !skip.contains(name) {
                write_line(name, value, out);
            }
        }
        self.write_sets(out);
    }

    /// Writes the fields the edits set, as HTTP/1 field lines.
    pub(super) fn write_sets(&self, out: &mut Vec<u8>) {
        for (name, value) in self.sets() {
            write_line(name, value, out);
        }
    }
}

/// One HTTP/1 field line: a well-known name in its usual case (as Pingora
/// writes it), others as they are stored (lower case).
fn write_line(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    let titled = pingora_http::titled_header_name_str(name);
    out.extend_from_slice(titled.unwrap_or(name.as_str()).as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::header;

    fn request() -> RequestHeader {
        let mut req = RequestHeader::build_no_case("GET", b"/v1/models", None).unwrap();
        req.append_header(header::HOST, "client.example").unwrap();
        req.append_header("x-keep", "1").unwrap();
        req.append_header("x-twice", "a").unwrap();
        req.append_header("x-twice", "b").unwrap();
        req.append_header(header::AUTHORIZATION, "Bearer secret")
            .unwrap();
        req.append_header("x-hop", "h").unwrap();
        req
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
        e.set(&header::CONTENT_LENGTH, HeaderValue::from(12usize));
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
        let skip = [HeaderName::from_static("x-hop")];
        let mut direct = Vec::new();
        edits().write_h1(&request(), &skip, &mut direct);

        let mut copy = request();
        copy.remove_header("x-hop");
        edits().apply(&mut copy).unwrap();
        let mut pingora = Vec::new();
        copy.header_to_h1_wire(&mut pingora);

        assert_eq!(fields(&direct), fields(&pingora));
        let text = String::from_utf8(direct).unwrap();
        // Well-known names in their usual case, as Pingora writes them.
        assert!(text.contains("Host: upstream:8080\r\n"), "{text}");
        assert!(text.contains("Content-Length: 12\r\n"), "{text}");
        assert!(!text.contains("secret") && !text.contains("x-late") && !text.contains("x-hop"));
        assert_eq!(text.matches("x-twice").count(), 1, "{text}");
    }

    #[test]
    fn no_edits_write_the_request_as_it_is() {
        let mut direct = Vec::new();
        FieldEdits::default().write_h1(&request(), &[], &mut direct);
        let mut pingora = Vec::new();
        request().header_to_h1_wire(&mut pingora);
        assert_eq!(direct, pingora);
    }

    #[test]
    fn a_bad_value_is_refused() {
        let mut e = FieldEdits::default();
        assert!(e.set_str(&header::HOST, "bad\nvalue").is_err());
        assert!(e.edits.is_empty());
    }
}
