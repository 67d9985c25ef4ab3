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
use crate::json::{TextField, collect_texts, splice};
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
