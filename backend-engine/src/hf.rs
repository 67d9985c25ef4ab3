//! Hugging Face text assets of a model version: the `tokenizer.json`
//! tokenizer and the Jinja chat template, rendered the way Hugging Face's
//! `apply_chat_template` does (`trim_blocks`, `lstrip_blocks`, Python string
//! methods, `raise_exception`).
//!
//! Both are built from the manifest-verified bytes of the version folder,
//! never re-read from disk, so a tampered file is refused with the rest.

use minijinja::{Environment, ErrorKind, context};

use crate::error::{Error, Result};
use crate::repository::VerifiedVersion;

/// A Hugging Face tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Loads `file` from the verified version.
    pub fn load(verified: &VerifiedVersion, file: &str) -> Result<Self> {
        let bytes = verified_file(verified, file)?;
        Self::from_bytes(bytes).map_err(|e| config_error(verified, format!("{file}: {e}")))
    }

    /// Parses `tokenizer.json` bytes.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        tokenizers::Tokenizer::from_bytes(bytes)
            .map(|inner| TextTokenizer { inner })
            .map_err(|e| e.to_string())
    }

    /// Token ids of `text`; `special` adds the tokenizer's special tokens
    /// (`[CLS]`/`[SEP]` for encoders) and applies its truncation.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::InvalidRequest(format!("cannot tokenize the input: {e}")))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Runtime(format!("cannot decode tokens: {e}")))
    }

    /// The id of a token given as text.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// A chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// One message handed to the template.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Its text.
    pub content: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `file` from the verified version.
    pub fn load(verified: &VerifiedVersion, file: &str, bos: &str, eos: &str) -> Result<Self> {
        let bytes = verified_file(verified, file)?;
        let source = String::from_utf8(bytes.to_vec())
            .map_err(|_| config_error(verified, format!("{file}: not UTF-8")))?;
        Self::from_source(source, bos, eos)
            .map_err(|e| config_error(verified, format!("{file}: {e}")))
    }

    /// Compiles a template from its text.
    pub fn from_source(source: String, bos: &str, eos: &str) -> std::result::Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| e.to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
        })
    }

    /// Renders a conversation; a template that raises answers 400.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| {
                Error::InvalidRequest(format!("messages: the chat template refused them: {e}"))
            })
    }
}

fn verified_file<'a>(verified: &'a VerifiedVersion, file: &str) -> Result<&'a [u8]> {
    verified
        .files
        .get(file)
        .ok_or_else(|| config_error(verified, format!("{file} is not listed in the manifest")))
}

fn config_error(verified: &VerifiedVersion, reason: String) -> Error {
    Error::ModelConfig {
        model: verified.config.name.clone(),
        version: verified.config.version.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::from_source(
            "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no ' + m.role) }}{% endif %}\
             {{ bos_token }}{{ m.content.strip().upper() }}{{ eos_token }}{% endfor %}"
                .to_string(),
            "<s>",
            "</s>",
        )
        .unwrap();
        let m = |role: &str, content: &str| TemplateMessage {
            role: role.into(),
            content: content.into(),
        };
        assert_eq!(t.render(&[m("user", " hi ")], true).unwrap(), "<s>HI</s>");
        let err = t.render(&[m("bad", "x")], true).unwrap_err().to_string();
        assert!(err.contains("no bad"), "{err}");
    }
}
