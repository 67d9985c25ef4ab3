//! Filtering the text fields of OpenAI-shaped JSON bodies.
//!
//! Requests: `prompt` (a string or an array of strings) and
//! `messages[].content` (a string or content parts `{"type": "text",
//! "text": ...}`). Non-streamed responses: `choices[].message.content`,
//! `choices[].message.reasoning_content` and `choices[].text`. Only those
//! strings are scanned; a masked body is the original bytes with just those
//! string literals replaced, so key order, numbers and whitespace are kept
//! and the result is valid JSON.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Filter;
use crate::json::{TextField, collect_texts, splice, string_literal, text_field};
use crate::spec::Action;
use crate::verdict::{Outcome, Verdict, mask};

/// The body cannot be filtered as an OpenAI body. The gateway decides what
/// to do (the safe answer is HTTP 400: duplicate keys, for one, are refused
/// here because clients and servers disagree on which one counts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not UTF-8, not JSON, or not an object of the expected shape.
    #[error("body is not an OpenAI JSON body: {0}")]
    NotOpenAi(String),
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    /// Reasoning models' thoughts (responses only).
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

/// Filters a request body (completions or chat completions).
/// [`Verdict::Masked`] carries the new body (set `Content-Length` from it).
pub fn filter_request(filter: &Filter, body: &[u8]) -> Result<Outcome<Vec<u8>>, BodyError> {
    let doc = utf8(body)?;
    let request: Request<'_> = parse(doc)?;
    let mut fields = Vec::new();
    if let Some(prompt) = request.prompt {
        collect_texts(doc, prompt, &mut fields);
    }
    for message in request.messages.iter().flatten() {
        if let Some(content) = message.content {
            collect_texts(doc, content, &mut fields);
        }
    }
    Ok(filter_fields(filter, doc, fields))
}

/// Filters a non-streamed response body (completions or chat completions).
pub fn filter_response(filter: &Filter, body: &[u8]) -> Result<Outcome<Vec<u8>>, BodyError> {
    let doc = utf8(body)?;
    let response: Response<'_> = parse(doc)?;
    let mut fields = Vec::new();
    for choice in response.choices.iter().flatten() {
        if let Some(message) = &choice.message {
            for text in [message.content, message.reasoning_content]
                .into_iter()
                .flatten()
            {
                collect_texts(doc, text, &mut fields);
            }
        }
        if let Some(text) = choice.text {
            collect_texts(doc, text, &mut fields);
        }
    }
    Ok(filter_fields(filter, doc, fields))
}

/// `body` (an OpenAI JSON object) with its top-level `model` string set to
/// `model`, every other byte kept, and the name it had. A body without
/// `model` gets one when `insert`, else comes back unchanged. Refused as
/// [`set_field`] refuses.
pub fn rename_model(
    body: &[u8],
    model: &str,
    insert: bool,
) -> Result<(Vec<u8>, Option<String>), BodyError> {
    let (out, old) = set_field(utf8(body)?, "model", |old| {
        (old.is_some() || insert).then(|| model.to_owned())
    })?;
    Ok((out.into_bytes(), old))
}

/// `doc` (a JSON object) with its top-level string field `key` set to what
/// `value` makes of its current value (`None`: left as it is; a field
/// that was absent is added first in the object), every other byte kept;
/// also the value it had. Refused: not a JSON object, the field not a
/// string, or the field twice (clients and servers disagree on which one
/// counts).
pub fn set_field(
    doc: &str,
    key: &str,
    value: impl FnOnce(Option<&str>) -> Option<String>,
) -> Result<(String, Option<String>), BodyError> {
    let refused = |why: String| BodyError::NotOpenAi(why);
    let entries: Entries<'_> = parse(doc)?;
    let mut found = entries.0.into_iter().filter(|(k, _)| k == key);
    let raw = found.next().map(|(_, raw)| raw);
    if found.next().is_some() {
        return Err(refused(format!("`{key}` appears twice")));
    }
    let field = match raw {
        None => None,
        Some(raw) => {
            Some(text_field(doc, raw).ok_or_else(|| refused(format!("`{key}` is not a string")))?)
        }
    };
    let old = field.as_ref().map(|f| f.text.clone());
    let Some(new) = value(old.as_deref()) else {
        return Ok((doc.to_owned(), old));
    };
    let out = match field {
        Some(field) => splice(doc, &mut [(field.range, new)]),
        None => {
            // After the object's `{`: `"key":"value",` (no comma in `{}`).
            let open = doc.len() - doc.trim_start().len() + 1;
            let rest = &doc[open..];
            let comma = if rest.trim_start().starts_with('}') {
                ""
            } else {
                ","
            };
            let field = format!("{}:{}{comma}", string_literal(key), string_literal(&new));
            [&doc[..open], &field, rest].concat()
        }
    };
    Ok((out, old))
}

/// A JSON object's top-level entries in order, duplicates kept.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn utf8(body: &[u8]) -> Result<&str, BodyError> {
    std::str::from_utf8(body).map_err(|e| BodyError::NotOpenAi(e.to_string()))
}

fn parse<'a, T: Deserialize<'a>>(doc: &'a str) -> Result<T, BodyError> {
    // serde would also read a struct from an array, by position.
    if !doc.trim_start().starts_with('{') {
        return Err(BodyError::NotOpenAi("not a JSON object".to_owned()));
    }
    serde_json::from_str(doc).map_err(|e| BodyError::NotOpenAi(e.to_string()))
}

/// Scans every field with one session; blocks on the first match under
/// `block`, masks every match under `mask`.
fn filter_fields(filter: &Filter, doc: &str, fields: Vec<TextField>) -> Outcome<Vec<u8>> {
    let mut session = filter.session();
    let mut hits = Vec::new();
    let mut edits = Vec::new();
    for field in fields {
        let result = match session.scan(&field.text) {
            Ok(result) => result,
            Err(error) => return Outcome::failed(filter.policy(), error),
        };
        hits.extend(
            result
                .matches
                .iter()
                .filter_map(|m| filter.category(m.category).cloned()),
        );
        match filter.action() {
            Action::Block => {
                if let Some(category) = hits.first() {
                    return Outcome {
                        verdict: Verdict::Blocked {
                            category: category.clone(),
                        },
                        hits,
                        error: None,
                    };
                }
            }
            Action::Mask(c) => {
                if !result.matches.is_empty() {
                    edits.push((field.range, mask(&field.text, &result.matches, c)));
                }
            }
        }
    }
    let verdict = if edits.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Masked(splice(doc, &mut edits).into_bytes())
    };
    Outcome {
        verdict,
        hits,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn renamed(body: &str, insert: bool) -> Result<(String, Option<String>), BodyError> {
        rename_model(body.as_bytes(), "up/m:1", insert)
            .map(|(b, old)| (String::from_utf8(b).unwrap(), old))
    }

    #[test]
    fn the_model_is_renamed_in_place() {
        let (out, old) =
            renamed(r#" { "stream":true, "model" : "chat", "n": 1.50 }"#, true).unwrap();
        assert_eq!(out, r#" { "stream":true, "model" : "up/m:1", "n": 1.50 }"#);
        assert_eq!(old.as_deref(), Some("chat"));
        // Only the top level counts.
        let (out, old) = renamed(r#"{"a":{"model":"x"},"model":"y"}"#, false).unwrap();
        assert_eq!(out, r#"{"a":{"model":"x"},"model":"up/m:1"}"#);
        assert_eq!(old.as_deref(), Some("y"));
    }

    #[test]
    fn a_field_is_set_from_its_old_value() {
        let tag = |old: Option<&str>| old.map(|id| format!("{id}.t1"));
        let (out, old) =
            set_field(r#"{"task_id":"task-1","status":"queued"}"#, "task_id", tag).unwrap();
        assert_eq!(out, r#"{"task_id":"task-1.t1","status":"queued"}"#);
        assert_eq!(old.as_deref(), Some("task-1"));
        let (out, old) = set_field(r#"{"status":"queued"}"#, "task_id", tag).unwrap();
        assert_eq!((out.as_str(), old), (r#"{"status":"queued"}"#, None));
        // A key written with escapes is the same key.
        assert!(set_field(r#"{"task\u005fid":"a","task_id":"b"}"#, "task_id", tag).is_err());
    }

    #[test]
    fn a_missing_model_is_added_only_when_asked() {
        let (out, old) = renamed(r#"  {"prompt":"hi"}"#, true).unwrap();
        assert_eq!(out, r#"  {"model":"up/m:1","prompt":"hi"}"#);
        assert_eq!(old, None);
        assert_eq!(renamed("{ }", true).unwrap().0, r#"{"model":"up/m:1" }"#);
        let v: serde_json::Value = serde_json::from_str(&renamed("{ }", true).unwrap().0).unwrap();
        assert_eq!(v["model"], "up/m:1");
        assert_eq!(renamed(r#"{"x":1}"#, false).unwrap().0, r#"{"x":1}"#);
    }

    #[test]
    fn ambiguous_or_odd_bodies_are_refused() {
        for bad in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":3}"#,
            r#"["model"]"#,
            "not json",
            r#"{"model":"a""#,
        ] {
            assert!(renamed(bad, true).is_err(), "{bad}");
        }
    }
}
