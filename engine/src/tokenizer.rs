//! The tokenizer (`tokenizers`, from `tokenizer.json`) and chat templates (`tokenizer_config.json`,
//! rendered with minijinja the way transformers renders them: `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `raise_exception`, Python string methods).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn special(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// `dir/tokenizer.json`, and `dir/tokenizer_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let json = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        let tc = dir.join("tokenizer_config.json");
        let config = if tc.exists() {
            Some(std::fs::read(&tc).map_err(|e| Error::io(&tc, e))?)
        } else {
            None
        };
        Self::from_bytes(&json, config.as_deref()).map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", dir.display())),
            other => other,
        })
    }

    pub fn from_bytes(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| tok_err(format!("invalid tokenizer.json: {e}")))?;
        let config: serde_json::Value = match tokenizer_config_json {
            Some(b) => serde_json::from_slice(b)
                .map_err(|e| tok_err(format!("invalid tokenizer_config.json: {e}")))?,
            None => serde_json::Value::Null,
        };
        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        Ok(Tokenizer {
            inner,
            chat_template,
            bos_token: special(config.get("bos_token")),
            eos_token: special(config.get("eos_token")),
            unk_token: special(config.get("unk_token")),
        })
    }

    /// Replaces the chat template (a preset may name its own).
    pub fn with_chat_template(mut self, template: String) -> Self {
        self.chat_template = Some(template);
        self
    }

    /// With `add_special_tokens`, the post-processor's tokens (`<s>` first for Mistral).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special_tokens)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The conversation as transformers' `apply_chat_template(tokenize=False)` renders it.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::ChatTemplate("this model's tokenizer_config.json has no chat_template".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| Error::ChatTemplate(format!("the template does not parse: {e}")))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            unk_token => self.unk_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| {
                Error::ChatTemplate(e.detail().map_or_else(|| e.to_string(), str::to_string))
            })
    }

    /// Renders, then encodes without adding special tokens again (the template writes `<s>`).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode(
            &self.apply_chat_template(messages, add_generation_prompt)?,
            false,
        )
    }

    /// A streaming detokenizer for the tokens generated after `prompt_ids`.
    pub fn incremental_decoder(&self, _prompt_ids: &[u32]) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tok: self,
            ids: vec![],
            prefix: 0,
            read: 0,
        }
    }
}

/// Turns generated ids into text deltas. Decoding a window `[prefix, ..]` and releasing what the
/// newest ids add keeps the decoder's whole-sequence rules (the leading-space strip, byte-fallback
/// pieces fused into characters) while releasing text as soon as it is complete; the deltas
/// concatenate to `decode(all ids, skip_special_tokens)`.
pub struct IncrementalDecoder<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl IncrementalDecoder<'_> {
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tok.decode(&self.ids[self.prefix..], true)?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let delta = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete UTF-8 sequence comes out as U+FFFD).
    pub fn flush(&mut self) -> Result<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tok.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(
            if now.len() > before.len() && now.is_char_boundary(before.len()) {
                now[before.len()..].to_string()
            } else {
                String::new()
            },
        )
    }
}
