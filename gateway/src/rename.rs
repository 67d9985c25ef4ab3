//! Model mapping: an arm with `model = "NAME"` serves a client's OpenAI
//! request under the name its upstream knows. The request body's `model`
//! is rewritten on the way up ([`request`]); the answer's `model` is
//! rewritten back to what the client asked for ([`AnswerRename`]): the
//! JSON body of a plain answer, and every event of an SSE stream (the
//! events the usage tap parsed, so a chunk split anywhere is still
//! renamed). Only top-level `model` fields change; every other byte is
//! kept.
//!
//! Task ids get the same treatment: the `task_id` an engine answers to
//! `POST /v1/tasks` (and to each poll) leaves the gateway with the tag of
//! the backend that runs the task ([`task_suffix`]), so a poll reaches that
//! backend whichever arm or replica takes it ([`split_task_id`]).

use bytes::{Bytes, BytesMut};
use weir_filters::openai::{rename_model, set_field};
use weir_filters::sse::{SseChunk, SseEvent};

use crate::errors::GatewayError;

/// Largest JSON answer renamed; a larger one passes unchanged.
pub const MAX_JSON: usize = 4 << 20;

/// The request body with its `model` set to `model` (added when absent),
/// and the name the client asked for. A body that is not a JSON object, or
/// whose `model` is not one string, is refused (400).
pub fn request(body: Bytes, model: &str) -> Result<(Bytes, Option<String>), GatewayError> {
    let (out, asked) =
        rename_model(&body, model, true).map_err(|e| GatewayError::InvalidBody(e.to_string()))?;
    Ok((Bytes::from(out), asked))
}

/// The `.w` + 16 hex digits a task id gets: the tag of its backend.
pub fn task_suffix(tag: u64) -> String {
    format!(".w{tag:016x}")
}

/// A task id as the gateway answered it: the backend's id and the tag of
/// the backend; `None` for an id without a tag.
pub fn split_task_id(id: &str) -> Option<(&str, u64)> {
    let (task, tag) = id.rsplit_once(".w")?;
    if task.is_empty() || tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((task, u64::from_str_radix(tag, 16).ok()?))
}

/// Rewrites an answer on its way back: `model` to the client's name, and
/// `task_id` tagged with its backend.
pub enum AnswerRename {
    /// A JSON answer, held whole (up to [`MAX_JSON`]) and rewritten at its end.
    Json {
        /// The model name to write, if renamed.
        client: Option<String>,
        /// The suffix a `task_id` gets, if any.
        task: Option<String>,
        /// The bytes so far; `None` once over the bound (then passed as is).
        buf: Option<BytesMut>,
    },
    /// An SSE stream: each parsed event renamed.
    Sse {
        /// The name to write.
        client: String,
    },
}

impl AnswerRename {
    /// A rewriter for an answer of `content_type`; `None` for other types
    /// or nothing to rewrite.
    pub fn for_content_type(
        content_type: &str,
        client: Option<String>,
        task: Option<String>,
    ) -> Option<Self> {
        // Most answers: nothing to rewrite, nothing allocated.
        if client.is_none() && task.is_none() {
            return None;
        }
        let ct = content_type.to_ascii_lowercase();
        if crate::usage::is_event_stream(&ct) {
            client.map(|client| AnswerRename::Sse { client })
        } else if ct.starts_with("application/json") && (client.is_some() || task.is_some()) {
            Some(AnswerRename::Json {
                client,
                task,
                buf: Some(BytesMut::new()),
            })
        } else {
            None
        }
    }

    /// One piece of a JSON answer: held until the end, then renamed. Over
    /// the bound, what was held and the rest pass unchanged.
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        let AnswerRename::Json { client, task, buf } = self else {
            return chunk;
        };
        let Some(held) = buf.as_mut() else {
            return chunk;
        };
        if let Some(c) = &chunk {
            if held.len() + c.len() > MAX_JSON {
                let mut all = std::mem::take(held);
                all.extend_from_slice(c);
                *buf = None;
                return Some(all.freeze());
            }
            held.extend_from_slice(c);
        }
        if !end {
            // Empty, not None: None would end the answer.
            return Some(Bytes::new());
        }
        let whole = std::mem::take(held).freeze();
        *buf = None;
        let Ok(mut doc) = String::from_utf8(whole.to_vec()) else {
            return Some(whole);
        };
        if let Some(client) = client
            && let Ok((out, Some(_))) = set_field(&doc, "model", |_| Some(client.clone()))
        {
            doc = out;
        }
        if let Some(suffix) = task
            && let Ok((out, Some(_))) =
                set_field(&doc, "task_id", |id| id.map(|id| format!("{id}{suffix}")))
        {
            doc = out;
        }
        Some(Bytes::from(doc))
    }

    /// Renames the events of one parsed piece of an SSE answer.
    pub fn events(&self, piece: &mut SseChunk) {
        let AnswerRename::Sse { client } = self else {
            return;
        };
        for event in piece.events.iter_mut().chain(piece.last.as_mut()) {
            rename_event(event, client);
        }
    }
}

/// An event whose data is a JSON object naming a `model`, renamed (and
/// written again); any other event is left as it is.
fn rename_event(event: &mut SseEvent, client: &str) {
    let Some(data) = event.data.as_deref() else {
        return;
    };
    if !data.contains("\"model\"") {
        return;
    }
    if let Ok((out, Some(_))) = rename_model(data.as_bytes(), client, false)
        && let Ok(out) = String::from_utf8(out)
    {
        *event = SseEvent::written(event.event.as_deref(), event.id.as_deref(), &out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use weir_filters::sse::SseParser;

    use super::*;

    #[test]
    fn a_request_is_renamed_and_remembers_the_clients_name() {
        let (body, asked) = request(Bytes::from(r#"{"model":"chat","n":1}"#), "up:1").unwrap();
        assert_eq!(&body[..], br#"{"model":"up:1","n":1}"#);
        assert_eq!(asked.as_deref(), Some("chat"));
        let (body, asked) = request(Bytes::from(r#"{"n":1}"#), "up:1").unwrap();
        assert_eq!(&body[..], br#"{"model":"up:1","n":1}"#);
        assert_eq!(asked, None);
        let err = request(Bytes::from(r#"{"model":"a","model":"b"}"#), "up").unwrap_err();
        assert!(matches!(err, GatewayError::InvalidBody(_)), "{err:?}");
    }

    #[test]
    fn a_json_answer_is_renamed_whatever_its_chunks() {
        let answer = br#"{"id":"x","model":"up:1","choices":[{"text":"model"}]}"#;
        for size in [1, 3, answer.len()] {
            let mut r =
                AnswerRename::for_content_type("application/json", Some("chat".into()), None)
                    .unwrap();
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = answer.chunks(size).collect();
            for c in &chunks {
                out.extend_from_slice(&r.push(Some(Bytes::copy_from_slice(c)), false).unwrap());
            }
            out.extend_from_slice(&r.push(None, true).unwrap());
            assert_eq!(
                out,
                br#"{"id":"x","model":"chat","choices":[{"text":"model"}]}"#
            );
        }
    }

    #[test]
    fn task_ids_carry_their_backends_tag() {
        let suffix = task_suffix(0xabc);
        assert_eq!(suffix, ".w0000000000000abc");
        let id = format!("task-1.x{suffix}");
        assert_eq!(split_task_id(&id), Some(("task-1.x", 0xabc)));
        for bad in [
            "task-1",
            "task-1.wxyz",
            ".w0000000000000abc",
            "t.w0000000000000abcd",
        ] {
            assert_eq!(split_task_id(bad), None, "{bad}");
        }
        let mut r = AnswerRename::for_content_type("application/json", None, Some(suffix)).unwrap();
        let out = r.push(
            Some(Bytes::from_static(
                br#"{"task_id":"t-1","status":"queued"}"#,
            )),
            true,
        );
        assert_eq!(
            &out.unwrap()[..],
            br#"{"task_id":"t-1.w0000000000000abc","status":"queued"}"#
        );
        assert!(AnswerRename::for_content_type("application/json", None, None).is_none());
    }

    #[test]
    fn an_oversized_json_answer_passes_unchanged() {
        let mut r =
            AnswerRename::for_content_type("application/json", Some("chat".into()), None).unwrap();
        let big = Bytes::from(vec![b' '; MAX_JSON]);
        assert_eq!(
            r.push(Some(Bytes::from_static(b"{")), false).unwrap().len(),
            0
        );
        let out = r.push(Some(big), false).unwrap();
        assert_eq!(out.len(), MAX_JSON + 1);
        let rest = r.push(Some(Bytes::from_static(br#""model":"up"}"#)), true);
        assert_eq!(&rest.unwrap()[..], br#""model":"up"}"#);
    }

    #[test]
    fn every_sse_event_is_renamed_and_others_kept() {
        let stream = concat!(
            "data: {\"model\":\"up:1\",\"choices\":[{\"delta\":{\"content\":\"\\\"model\\\"\"}}]}\n\n",
            ": comment\n\n",
            "data: [DONE]\n\n",
        );
        for size in [1, 7, stream.len()] {
            let r = AnswerRename::for_content_type(
                "text/event-stream; charset=utf-8",
                Some("chat".into()),
                None,
            )
            .unwrap();
            let mut parser = SseParser::default();
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(size).collect();
            for (i, c) in chunks.iter().enumerate() {
                let mut piece = parser.read(c, i + 1 == chunks.len());
                r.events(&mut piece);
                out.extend_from_slice(&piece.into_bytes());
            }
            assert_eq!(
                String::from_utf8(out).unwrap(),
                stream.replace("\"model\":\"up:1\"", "\"model\":\"chat\""),
                "{size}"
            );
        }
    }
}
