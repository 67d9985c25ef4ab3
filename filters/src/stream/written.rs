//! The events a stream filter writes: the error event that ends a stream,
//! the chunk that releases held text, and events forwarded as received.

use super::{Field, StreamFilter};
use crate::sse::SseEvent;

impl StreamFilter {
    /// Writes the error event that ends the stream.
    pub(super) fn write_stop(&mut self, out: &mut Vec<SseEvent>) {
        let error = match &self.report.blocked {
            Some(category) => serde_json::json!({"error": {
                "message": format!("The response was blocked by a content filter (category: {category})."),
                "type": "content_filter",
                "code": "content_blocked",
                "param": null,
                "category": category.as_ref(),
            }}),
            None => serde_json::json!({"error": {
                "message": "The content filter is unavailable.",
                "type": "content_filter",
                "code": "filter_unavailable",
                "param": null,
            }}),
        };
        out.push(SseEvent::written(Some("error"), None, &error.to_string()));
        self.held.clear();
    }

    pub(super) fn write_flush_chunk(
        &self,
        (index, field): (u64, Field),
        text: &str,
        out: &mut Vec<SseEvent>,
    ) {
        let (mut envelope, event) = match &self.last_chunk {
            Some((data, event)) => (
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(data)
                    .unwrap_or_default(),
                event.as_deref(),
            ),
            None => (serde_json::Map::new(), None),
        };
        envelope.remove("usage");
        let choice = match field {
            Field::Content => serde_json::json!(
                {"index": index, "delta": {"content": text}, "finish_reason": null}
            ),
            Field::Reasoning => serde_json::json!(
                {"index": index, "delta": {"reasoning_content": text}, "finish_reason": null}
            ),
            Field::Text => {
                serde_json::json!({"index": index, "text": text, "finish_reason": null})
            }
        };
        envelope.insert("choices".to_owned(), serde_json::json!([choice]));
        out.push(SseEvent::written(
            event,
            None,
            &serde_json::Value::Object(envelope).to_string(),
        ));
    }
}

/// Forwards a block as received; the stream's unterminated last block gets
/// its blank line so that what follows stays a separate event.
pub(super) fn forward(mut event: SseEvent, last: bool, out: &mut Vec<SseEvent>) {
    if last && !event.is_empty() {
        if !event.raw.ends_with(b"\n") && !event.raw.ends_with(b"\r") {
            event.raw.push(b'\n');
        }
        event.raw.push(b'\n');
    }
    out.push(event);
}
