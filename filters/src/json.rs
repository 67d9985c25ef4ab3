//! Finding JSON string values in a document and replacing them in place, so
//! that everything else in the document keeps its exact bytes.

use std::ops::Range;

use serde_json::value::RawValue;

/// A JSON string value of a document: where its literal is, what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextField {
    /// Byte range of the literal (quotes included) in the document.
    pub(crate) range: Range<usize>,
    /// The decoded string.
    pub(crate) text: String,
}

/// `raw`, a value borrowed from `doc`, as a text field if it is a string.
pub(crate) fn text_field(doc: &str, raw: &RawValue) -> Option<TextField> {
    let literal = raw.get();
    if !literal.starts_with('"') {
        return None;
    }
    let start = (literal.as_ptr() as usize).checked_sub(doc.as_ptr() as usize)?;
    let range = start..start.checked_add(literal.len())?;
    // `raw` must really be a slice of `doc`.
    if doc.get(range.clone()).map(str::as_ptr) != Some(literal.as_ptr()) {
        return None;
    }
    let text = serde_json::from_str(literal).ok()?;
    Some(TextField { range, text })
}

/// Collects the strings of `raw`: itself if a string; if an array, its
/// string elements and the `text` string of its object elements (OpenAI
/// prompt arrays and content parts).
pub(crate) fn collect_texts(doc: &str, raw: &RawValue, out: &mut Vec<TextField>) {
    #[derive(serde::Deserialize)]
    struct Part<'a> {
        #[serde(borrow, default)]
        text: Option<&'a RawValue>,
    }
    if let Some(field) = text_field(doc, raw) {
        out.push(field);
        return;
    }
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return;
    };
    for item in items {
        if let Some(field) = text_field(doc, item) {
            out.push(field);
        } else if let Ok(Part { text: Some(text) }) = serde_json::from_str::<Part<'_>>(item.get()) {
            out.extend(text_field(doc, text));
        }
    }
}

/// The JSON literal of `text`.
pub(crate) fn string_literal(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `doc` with each range replaced by the JSON literal of its string. Ranges
/// must be disjoint; overlapping or out-of-range edits are skipped.
pub(crate) fn splice(doc: &str, edits: &mut [(Range<usize>, String)]) -> String {
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(doc.len() + 16);
    let mut at = 0;
    for (range, text) in edits.iter() {
        let Some(before) = doc.get(at..range.start) else {
            continue;
        };
        if range.end > doc.len() {
            continue;
        }
        out.push_str(before);
        out.push_str(&string_literal(text));
        at = range.end;
    }
    out.push_str(doc.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn finds_and_replaces_strings_in_place() {
        let doc = r#"{ "b": 1.50, "a" :  "x\"y",  "c": ["p", {"text": "q"}, 3] }"#;
        let value: std::collections::BTreeMap<&str, &RawValue> = serde_json::from_str(doc).unwrap();
        let a = text_field(doc, value["a"]).unwrap();
        assert_eq!(a.text, "x\"y");
        assert_eq!(&doc[a.range.clone()], r#""x\"y""#);
        assert!(text_field(doc, value["b"]).is_none());
        let mut texts = Vec::new();
        collect_texts(doc, value["c"], &mut texts);
        assert_eq!(
            texts.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
            ["p", "q"]
        );
        let mut edits = vec![
            (a.range, "好\n".to_owned()),
            (texts[1].range.clone(), "Q".to_owned()),
        ];
        assert_eq!(
            splice(doc, &mut edits),
            r#"{ "b": 1.50, "a" :  "好\n",  "c": ["p", {"text": "Q"}, 3] }"#
        );
    }

    #[test]
    fn foreign_raw_values_are_ignored() {
        let other = String::from(r#""s""#);
        let raw: &RawValue = serde_json::from_str(&other).unwrap();
        assert!(text_field("{}", raw).is_none());
    }
}
