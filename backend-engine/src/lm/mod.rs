//! Text generation over byte-level language models: tokens are UTF-8
//! bytes, the model maps a left-padded context window to next-byte logits.

pub mod sampling;
pub mod scheduler;
pub mod text;

/// One chat message, already reduced to its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (others are accepted and treated alike).
    pub role: String,
    /// The message's text.
    pub content: String,
}

/// The chat template: the byte-level models are plain-text continuers with
/// no notion of roles, so a conversation is rendered as its messages'
/// contents joined by one newline each, in order, with nothing after the
/// last one; the reply is the model's continuation of that text. Roles are
/// not rendered.
///
/// `[{"role":"system","content":"Fables."},{"role":"user","content":"The fox"}]`
/// → `"Fables.\nThe fox"`.
pub fn render_chat(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&m.content);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn template_joins_contents_with_newlines() {
        let m = |role: &str, content: &str| ChatMessage {
            role: role.into(),
            content: content.into(),
        };
        assert_eq!(
            render_chat(&[m("system", "Fables."), m("user", "The fox")]),
            "Fables.\nThe fox"
        );
        assert_eq!(render_chat(&[]), "");
    }
}
