//! The tokenizer (`tokenizers`, from `tokenizer.json`) and chat templates (`tokenizer_config.json`),
//! rendered with minijinja the way transformers' `apply_chat_template` renders them.
//!
//! - Encoding and decoding run the `tokenizer.json` pipeline as it is (normalizer, model, decoder,
//!   post-processor), as `PreTrainedTokenizerFast` does; `encode(text, true)` adds what the
//!   post-processor adds (`<s>` first for Mistral/Mixtral).
//! - Chat templates see the variables transformers passes: `messages`, `add_generation_prompt`,
//!   `tools` and `documents` (both none), and the special tokens that are set (`bos_token`,
//!   `eos_token`, `unk_token`, `pad_token`). The environment matches transformers' jinja
//!   environment: `trim_blocks`, `lstrip_blocks`, `raise_exception(msg)`, `strftime_now(fmt)`,
//!   a `tojson` filter with Python's `json.dumps` output, and Python string/dict methods
//!   (`.strip()`, `.startswith()`, `.items()`, ...).
//! - [`IncrementalDecoder`] turns generated ids into text deltas whose concatenation is exactly
//!   `decode(generated ids, skip_special_tokens = true)`.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A `tokenizers` pipeline plus what `tokenizer_config.json` adds to it: the special tokens by
/// name and the chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    /// The environment templates are rendered in (functions and filters registered once).
    env: minijinja::Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
    pad_token: Option<String>,
    add_bos_token: Option<bool>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("unk_token", &self.unk_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Runs a `tokenizers` call, a panic inside it becoming a named error. A backstop only: the
/// crate indexes its own tables with `[]` and trusts `tokenizer.json` to be consistent; the
/// checks in [`check_post_processor`] refuse the inconsistencies known to reach those indexes.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let msg: String = msg.chars().take(200).collect();
        tok_err(format!(
            "{what} failed inside the tokenizers library ({msg}): tokenizer.json is inconsistent"
        ))
    })
}

/// With a `continuing_subword_prefix`, `tokenizers` builds each BPE merge by cutting the prefix
/// off its second token unchecked: a second token shorter than the prefix panics at load, and
/// one that does not start with it is cut inside a character. Every second token must start
/// with the prefix.
fn check_bpe_merges(model: &serde_json::Value) -> Result<()> {
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(|p| p.as_str())
        .unwrap_or("");
    if prefix.is_empty() {
        return Ok(());
    }
    let merges = model.get("merges").and_then(|m| m.as_array());
    for m in merges.into_iter().flatten() {
        let second = match m {
            serde_json::Value::String(s) => s.split_once(' ').map(|(_, b)| b),
            serde_json::Value::Array(a) => a.get(1).and_then(|b| b.as_str()),
            _ => None,
        };
        if let Some(b) = second {
            if !b.starts_with(prefix) {
                let b: String = b.chars().take(80).collect();
                return Err(tok_err(format!(
                    "invalid tokenizer.json: model: merge token `{b}` does not start with \
                     continuing_subword_prefix `{}`",
                    prefix.chars().take(80).collect::<String>()
                )));
            }
        }
    }
    Ok(())
}

/// Checks that every special token `tokenizer.json`'s post-processor adds exists: a template
/// naming a token its `special_tokens` do not define panics in `tokenizers` at the first encode,
/// and ids past the vocabulary would reach the model's embedding.
fn check_post_processor(pp: &serde_json::Value, tok: &tokenizers::Tokenizer) -> Result<()> {
    let vocab = tok.get_vocab_size(true);
    let fail = |m: String| {
        Err(tok_err(format!(
            "invalid tokenizer.json: post_processor: {m}"
        )))
    };
    let short = |s: &str| s.chars().take(80).collect::<String>();
    let check_id = |what: &str, id: Option<u64>| -> Result<()> {
        match id {
            Some(id) if (id as usize) < vocab => Ok(()),
            Some(id) => fail(format!(
                "{what} has id {id}, outside the vocabulary (size {vocab})"
            )),
            None => fail(format!("{what} has no id")),
        }
    };
    match pp.get("type").and_then(|t| t.as_str()) {
        Some("TemplateProcessing") => {
            let empty = serde_json::Map::new();
            let specials = pp
                .get("special_tokens")
                .and_then(|s| s.as_object())
                .unwrap_or(&empty);
            for (name, t) in specials {
                let what = format!("special token `{}`", short(name));
                let ids = t.get("ids").and_then(|v| v.as_array());
                let tokens = t.get("tokens").and_then(|v| v.as_array());
                let (Some(ids), Some(tokens)) = (ids, tokens) else {
                    return fail(format!("{what} has no `ids` and `tokens` lists"));
                };
                if ids.len() != tokens.len() {
                    return fail(format!(
                        "{what} has {} ids and {} tokens",
                        ids.len(),
                        tokens.len()
                    ));
                }
                for id in ids {
                    check_id(&what, id.as_u64())?;
                }
                for t in tokens {
                    let t = t.as_str().unwrap_or_default();
                    if tok.token_to_id(t).is_none() {
                        return fail(format!(
                            "{what} adds token `{}`, which is not in the vocabulary",
                            short(t)
                        ));
                    }
                }
            }
            for key in ["single", "pair"] {
                let pieces = pp.get(key).and_then(|v| v.as_array());
                for piece in pieces.into_iter().flatten() {
                    if let Some(id) = piece
                        .get("SpecialToken")
                        .and_then(|s| s.get("id"))
                        .and_then(|s| s.as_str())
                    {
                        if !specials.contains_key(id) {
                            return fail(format!(
                                "the `{key}` template names special token `{}`, which \
                                 `special_tokens` does not define",
                                short(id)
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
        Some(kind @ ("BertProcessing" | "RobertaProcessing")) => {
            for key in ["sep", "cls"] {
                let id = pp.get(key).and_then(|v| v.get(1)).and_then(|v| v.as_u64());
                check_id(&format!("{kind}'s `{key}` token"), id)?;
            }
            Ok(())
        }
        Some("Sequence") => {
            let processors = pp.get("processors").and_then(|v| v.as_array());
            for p in processors.into_iter().flatten() {
                check_post_processor(p, tok)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object
/// (`{"content": ..., "__type": "AddedToken", ...}`); null or absent means unset.
fn special_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{"name", "template"}` of which "default" is the one
/// `apply_chat_template` uses when no name is given.
fn chat_template_of(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

impl Tokenizer {
    /// `dir/tokenizer.json`, and `dir/tokenizer_config.json` when present (`chat_template`,
    /// `bos_token`/`eos_token`/`unk_token`/`pad_token`, `add_bos_token`). A `dir/chat_template.jinja`
    /// (where newer transformers save the template) is used when the config has no template.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let json = crate::weights::read_regular(&tj)?;
        let tc = dir.join("tokenizer_config.json");
        // Optional files that exist must be regular files too: `is_file()` would skip a FIFO
        // silently, and reading one would block.
        let config = if tc.exists() {
            let bytes = crate::weights::read_regular(&tc)?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                path: tc.clone(),
                message: e.to_string(),
            })?;
            if !v.is_object() {
                return Err(Error::Json {
                    path: tc,
                    message: "expected a JSON object".into(),
                });
            }
            Some(v)
        } else {
            None
        };
        let mut tok = Self::build(&json, config.as_ref()).map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", dir.display())),
            other => other,
        })?;
        if tok.chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.exists() {
                let t = crate::weights::read_regular_string(&jinja)?;
                tok.chat_template = Some(t);
            }
        }
        Ok(tok)
    }

    /// The contents of `tokenizer.json` and, optionally, of `tokenizer_config.json`. Either one
    /// failing to parse is an [`Error::Tokenizer`].
    pub fn from_bytes(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Self> {
        let config = match tokenizer_config_json {
            Some(b) => Some(
                serde_json::from_slice::<serde_json::Value>(b)
                    .map_err(|e| tok_err(format!("invalid tokenizer_config.json: {e}")))?,
            ),
            None => None,
        };
        Self::build(tokenizer_json, config.as_ref())
    }

    fn build(tokenizer_json: &[u8], config: Option<&serde_json::Value>) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_slice(tokenizer_json)
            .map_err(|e| tok_err(format!("invalid tokenizer.json: {e}")))?;
        if let Some(model) = json.get("model") {
            check_bpe_merges(model)?;
        }
        let mut inner = no_panic("loading tokenizer.json", || {
            tokenizers::Tokenizer::from_bytes(tokenizer_json)
        })?
        .map_err(|e| tok_err(format!("invalid tokenizer.json: {e}")))?;
        if let Some(pp) = json.get("post_processor") {
            check_post_processor(pp, &inner)?;
        }
        // `padding` and `truncation` are settings for batched training inputs: applied to the
        // engine's own encodes, `Fixed` padding to 10^9 allocates gigabytes per prompt and a
        // truncation block silently cuts every prompt short. transformers' `apply_chat_template`
        // and the engine's context check decide lengths instead.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(format!("invalid tokenizer.json: {e}")))?;
        if let Some(c) = config {
            if !c.is_object() {
                return Err(tok_err(
                    "invalid tokenizer_config.json: expected a JSON object",
                ));
            }
        }
        let null = serde_json::Value::Null;
        let config = config.unwrap_or(&null);
        let mut tok = Tokenizer {
            chat_template: chat_template_of(config),
            env: template_env(),
            bos_token: special_token(config.get("bos_token")),
            eos_token: special_token(config.get("eos_token")),
            unk_token: special_token(config.get("unk_token")),
            pad_token: special_token(config.get("pad_token")),
            add_bos_token: config.get("add_bos_token").and_then(|v| v.as_bool()),
            inner,
        };
        // Without a config, fall back to the SentencePiece names when the vocabulary has them as
        // special tokens, so `bos_id`/`eos_id` still work for Llama/Mistral-style folders.
        let is_special = |t: &tokenizers::Tokenizer, name: &str| {
            t.get_added_tokens_decoder()
                .values()
                .any(|a| a.special && a.content == name)
        };
        for (slot, name) in [
            (&mut tok.bos_token, "<s>"),
            (&mut tok.eos_token, "</s>"),
            (&mut tok.unk_token, "<unk>"),
        ] {
            if slot.is_none() && config.is_null() && is_special(&tok.inner, name) {
                *slot = Some(name.to_string());
            }
        }
        Ok(tok)
    }

    /// Replaces the chat template (a preset may name its own).
    pub fn with_chat_template(mut self, template: String) -> Self {
        self.chat_template = Some(template);
        self
    }

    /// The underlying `tokenizers` pipeline.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// With `add_special_tokens`, the post-processor's tokens are added (`<s>` first for Mistral).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(no_panic("encoding", || {
            self.inner.encode_fast(text, add_special_tokens)
        })?
        .map_err(tok_err)?
        .get_ids()
        .to_vec())
    }

    /// Ids outside the vocabulary are skipped, as `tokenizers` (and transformers) skip them.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        no_panic("decoding", || self.inner.decode(ids, skip_special_tokens))?.map_err(tok_err)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// One token's text for display (logprob labels): a byte-level BPE piece decoded (`Ġworld` →
    /// ` world`; part of a UTF-8 character shows as `�`), SentencePiece's `▁` as a space, a byte
    /// token as its ASCII character; empty for an id without a token (padded vocabularies).
    pub fn token_text(&self, id: u32) -> String {
        let t = self.id_to_token(id).unwrap_or_default();
        if let Some(d @ tokenizers::DecoderWrapper::ByteLevel(_)) = self.inner.get_decoder() {
            use tokenizers::Decoder as _;
            return d.decode(vec![t.clone()]).unwrap_or(t);
        }
        if let Some(hex) = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return if b.is_ascii() {
                    (b as char).to_string()
                } else {
                    t
                };
            }
        }
        t.replace('\u{2581}', " ")
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// `add_bos_token` from `tokenizer_config.json`, when given. Informational: whether `<s>` is
    /// added is decided by `tokenizer.json`'s post-processor.
    pub fn add_bos_token(&self) -> Option<bool> {
        self.add_bos_token
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The conversation as transformers' `apply_chat_template(tokenize=False)` renders it.
    /// `raise_exception(msg)` in the template becomes `Error::ChatTemplate(msg)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::ChatTemplate(
                "this model has no chat template (no chat_template in tokenizer_config.json)"
                    .into(),
            )
        })?;
        let mut ctx: std::collections::BTreeMap<&str, Value> = std::collections::BTreeMap::new();
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObject(m.clone())))
            .collect();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        // Unset special tokens stay undefined, as transformers passes only the set ones.
        for (name, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ] {
            if let Some(t) = token {
                ctx.insert(name, Value::from(t.as_str()));
            }
        }
        let template = self
            .env
            .template_from_str(template)
            .map_err(template_error)?;
        let mut out = CappedOutput {
            bytes: Vec::new(),
            over: false,
        };
        let limit = || {
            Error::ChatTemplate(format!(
                "chat template exceeded its evaluation limit ({TEMPLATE_FUEL} instructions, \
                 {TEMPLATE_OUTPUT_LIMIT} bytes of output)"
            ))
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| Error::ChatTemplate("rendered text is not UTF-8".into())),
            Err(_) if out.over => Err(limit()),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(limit()),
            Err(e) => Err(template_error(e)),
        }
    }

    /// Renders, then encodes without adding special tokens again (the template writes `<s>`),
    /// as `apply_chat_template(tokenize=True)` does.
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

    /// A streaming detokenizer for the ids generated after `prompt_ids`. Its text is that of the
    /// generated ids alone, as `decode(generated, skip_special_tokens=True)` gives it.
    pub fn incremental_decoder(&self, prompt_ids: &[u32]) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tok: self,
            prompt_len: prompt_ids.len(),
            ids: prompt_ids.to_vec(),
            prefix: prompt_ids.len(),
            read: prompt_ids.len(),
        }
    }
}

/// A message as templates see it: a dict with `role` then `content`, in that order (as the
/// Python dict transformers passes, which `tojson` and `.items()` show).
#[derive(Debug)]
struct MessageObject(ChatMessage);

impl minijinja::value::Object for MessageObject {
    fn get_value(self: &std::sync::Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(&["role", "content"])
    }
}

/// Instructions one chat-template render may execute. Templates come with the model, and
/// minijinja runs loops as long as they say (nested `range(10000)` loops run 10^8 iterations);
/// a real template spends a few hundred per message, so this leaves room for conversations of
/// tens of thousands of messages and stops a runaway one within about a second.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// Bytes of text one chat-template render may write: far past any context window's prompt
/// (a million tokens is a few MB), far short of exhausting memory.
pub const TEMPLATE_OUTPUT_LIMIT: usize = 64 << 20;

/// The rendered text, refusing writes past [`TEMPLATE_OUTPUT_LIMIT`] (which ends the render).
struct CappedOutput {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > TEMPLATE_OUTPUT_LIMIT {
            self.over = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `raise_exception` raised, carried as the source of the template error.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn template_error(e: minijinja::Error) -> Error {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<RaisedException>() {
            if r.0.trim().is_empty() {
                return Error::ChatTemplate(
                    "the chat template raised an error with no message".into(),
                );
            }
            return Error::ChatTemplate(r.0.clone());
        }
        src = s.source();
    }
    if e.kind() == minijinja::ErrorKind::SyntaxError {
        Error::ChatTemplate(format!("the chat template does not parse: {e}"))
    } else {
        Error::ChatTemplate(e.to_string())
    }
}

/// The environment transformers renders chat templates in, as far as minijinja goes.
fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(
                minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg.clone())
                    .with_source(RaisedException(msg)),
            )
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_utc(&fmt, now_secs()));
    env.add_filter("tojson", tojson);
    env
}

// ---------------------------------------------------------------------------------------------
// tojson: Python's json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
// ---------------------------------------------------------------------------------------------

struct JsonOpts {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<i64> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = indent.map(|i| i.max(0) as usize);
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "tojson: separators must be a pair (item_separator, key_separator)",
            ))
        }
        // json.dumps drops the space after ',' when indenting (the newline separates items).
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

fn json_newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(n) = opts.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * depth));
    }
}

fn write_json(
    out: &mut String,
    v: &Value,
    opts: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), opts),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                json_newline(out, opts, depth + 1);
                match k.as_str() {
                    Some(s) => write_json_str(out, s, opts),
                    // json.dumps turns int/float/bool/None keys into strings.
                    None => write_json_str(out, &json_key_string(k, opts)?, opts),
                }
                out.push_str(&opts.key_sep);
                write_json(out, &v.get_item(k)?, opts, depth + 1)?;
            }
            json_newline(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                json_newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            json_newline(out, opts, depth);
            out.push(']');
        }
        other => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("tojson: a value of type {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn json_key_string(k: &Value, opts: &JsonOpts) -> std::result::Result<String, minijinja::Error> {
    let mut s = String::new();
    match k.kind() {
        ValueKind::Number | ValueKind::Bool | ValueKind::None => write_json(&mut s, k, opts, 0)?,
        _ => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!(
                    "tojson: keys must be str, int, float, bool or None, not {}",
                    k.kind()
                ),
            ))
        }
    }
    Ok(s)
}

fn write_json_str(out: &mut String, s: &str, opts: &JsonOpts) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (opts.ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, `1e+16`/`1e-05` exponent style.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's Debug switches to exponent notation at the same magnitudes as Python's repr.
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// strftime_now: transformers gives templates the current date; here in UTC.
// ---------------------------------------------------------------------------------------------

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The common `strftime` directives (`%Y %m %d %H %M %S %y %b %B %a %A %j %p %I %e %%`, and the
/// glibc no-padding forms `%-d %-m %-H %-I %-M %-S %-j`) for a UTC time.
fn strftime_utc(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let no_pad = spec == Some('-');
        if no_pad {
            spec = chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match spec {
            Some('Y') => {
                let _ = write!(out, "{y}");
            }
            Some('y') => num(&mut out, y.rem_euclid(100), 2),
            Some('m') => num(&mut out, m as i64, 2),
            Some('d') => num(&mut out, d as i64, 2),
            Some('e') => {
                let _ = write!(out, "{d:>2}");
            }
            Some('H') => num(&mut out, hh, 2),
            Some('I') => num(&mut out, h12, 2),
            Some('M') => num(&mut out, mm, 2),
            Some('S') => num(&mut out, ss, 2),
            Some('j') => num(&mut out, yday, 3),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('b') | Some('h') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenization
// ---------------------------------------------------------------------------------------------

/// Turns generated ids into text deltas.
///
/// Each push decodes a short window of ids twice: `ids[prefix..read]` (text already released) and
/// `ids[prefix..]`; the difference is the new text. Both decodes start at the same id, so the
/// decoder's whole-sequence rules (the `Strip` of the first piece's leading space, byte-fallback
/// pieces fused into one character) act on both alike. Text that ends in U+FFFD (an incomplete
/// UTF-8 sequence) is held back until a later id completes it, or until [`flush`](Self::flush).
/// Windows never reach into the prompt, so the deltas concatenate to exactly
/// `decode(generated ids, skip_special_tokens = true)`, as transformers decodes a completion.
pub struct IncrementalDecoder<'a> {
    tok: &'a Tokenizer,
    /// Prompt ids followed by the generated ones.
    ids: Vec<u32>,
    prompt_len: usize,
    /// Start of the decode window.
    prefix: usize,
    /// End of the text released so far.
    read: usize,
}

impl IncrementalDecoder<'_> {
    /// Adds one generated id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tok.decode(&self.ids[self.prefix..], true)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(delta) = now.strip_prefix(before.as_str()) {
                let delta = delta.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                return Ok(delta);
            }
        }
        Ok(String::new())
    }

    /// Releases whatever is held back (an incomplete UTF-8 sequence comes out as U+FFFD, as in
    /// `decode`). Further pushes continue after it.
    pub fn flush(&mut self) -> Result<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tok.decode(&self.ids[self.prefix..], true)?;
        let delta = match now.strip_prefix(before.as_str()) {
            Some(d) => d.to_string(),
            None => String::new(),
        };
        if !delta.is_empty() {
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(delta)
    }

    /// The ids generated so far.
    pub fn generated_ids(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISTRAL: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tokenizer/mistral"
    );
    const SMALL: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tokenizer/small"
    );
    const STUDENT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tokenizer/student"
    );

    /// The ids table of the reference README (Mistral v1 tokenizer, with `<s>`).
    const MISTRAL_IDS: &[(&str, &[u32])] = &[
        ("Hello world", &[1, 22557, 1526]),
        (
            "The quick brown fox jumps over the lazy dog.",
            &[
                1, 415, 2936, 9060, 285, 1142, 461, 10575, 754, 272, 17898, 3914, 28723,
            ],
        ),
        (" leading space", &[1, 28705, 5374, 2764]),
        (
            "  two  spaces\tand\ttabs\nnewline\n\n",
            &[
                1, 259, 989, 28705, 10599, 12, 391, 12, 24856, 13, 1095, 1081, 13, 13,
            ],
        ),
        (
            "def f(x):\n    return x**2\n",
            &[
                1, 801, 285, 28732, 28744, 1329, 13, 2287, 604, 1318, 348, 28750, 13,
            ],
        ),
        (
            "Ünïcödé 日本語 🙂 مرحبا Привет",
            &[
                1, 13156, 28711, 28920, 28717, 14697, 28797, 28705, 29142, 29119, 30321, 28705,
                29340, 28080, 28947, 29100, 28983, 28915, 11824, 8496,
            ],
        ),
        (
            "1234567890 3.14159",
            &[
                1, 28705, 28740, 28750, 28770, 28781, 28782, 28784, 28787, 28783, 28774, 28734,
                28705, 28770, 28723, 28740, 28781, 28740, 28782, 28774,
            ],
        ),
        (
            "[INST] What is 2+2? [/INST]",
            &[
                1, 733, 16289, 28793, 1824, 349, 28705, 28750, 28806, 28750, 28804, 733, 28748,
                16289, 28793,
            ],
        ),
        ("", &[1]),
    ];

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn mistral() -> Tokenizer {
        Tokenizer::from_dir(Path::new(MISTRAL)).unwrap()
    }

    /// The student model's tokenizer: the Mistral tokenizer.json with the student's config.
    fn student() -> Tokenizer {
        Tokenizer::from_bytes(
            &read(&format!("{MISTRAL}/tokenizer.json")),
            Some(&read(&format!("{STUDENT}/tokenizer_config.json"))),
        )
        .unwrap()
    }

    #[derive(Deserialize)]
    struct Gen {
        question: String,
        prompt: String,
        prompt_ids: Vec<u32>,
        generated_ids: Vec<u32>,
        text: String,
    }

    fn goldens() -> Vec<Gen> {
        let v: serde_json::Value =
            serde_json::from_slice(&read(&format!("{STUDENT}/golden_generations.json"))).unwrap();
        serde_json::from_value(v["generations"].clone()).unwrap()
    }

    /// Pushes `generated` one id at a time, checks no partial character is released, and returns
    /// the concatenated deltas plus the flush.
    fn stream(t: &Tokenizer, prompt: &[u32], generated: &[u32]) -> String {
        let mut d = t.incremental_decoder(prompt);
        let mut s = String::new();
        for &id in generated {
            let delta = d.push(id).unwrap();
            assert!(
                !delta.contains('\u{FFFD}'),
                "partial character released for {generated:?}"
            );
            s += &delta;
        }
        s += &d.flush().unwrap();
        assert_eq!(d.generated_ids(), generated);
        s
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }

    #[test]
    fn mistral_ids_table_and_round_trip() {
        let t = mistral();
        assert_eq!(t.vocab_size(), 32000);
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        assert_eq!(t.token_to_id("<unk>"), Some(0));
        assert_eq!(t.id_to_token(12).as_deref(), Some("<0x09>"));
        assert_eq!(t.add_bos_token(), Some(true));
        for (text, ids) in MISTRAL_IDS {
            assert_eq!(t.encode(text, true).unwrap(), *ids, "{text:?}");
            assert_eq!(t.encode(text, false).unwrap(), ids[1..], "{text:?}");
            assert_eq!(t.decode(ids, true).unwrap(), *text, "{text:?}");
            let ids = t.encode(text, true).unwrap();
            assert_eq!(t.decode(&ids, true).unwrap(), *text, "{text:?}");
        }
        assert_eq!(
            t.decode(&[1, 22557, 1526, 2], false).unwrap(),
            "<s> Hello world</s>"
        );
    }

    #[test]
    fn byte_fallback_ids() {
        let t = mistral();
        assert_eq!(
            t.encode("café\t🦀", true).unwrap(),
            [1, 28345, 12, 243, 162, 169, 131]
        );
    }

    #[test]
    fn small_tokenizer_examples() {
        let t = Tokenizer::from_dir(Path::new(SMALL)).unwrap();
        assert_eq!(t.vocab_size(), 512);
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        #[derive(Deserialize)]
        struct Example {
            text: String,
            ids: Vec<u32>,
            decoded: String,
        }
        let examples: Vec<Example> =
            serde_json::from_slice(&read(&format!("{SMALL}/examples.json"))).unwrap();
        assert!(!examples.is_empty());
        for e in examples {
            assert_eq!(t.encode(&e.text, true).unwrap(), e.ids, "{:?}", e.text);
            assert_eq!(t.decode(&e.ids, true).unwrap(), e.decoded, "{:?}", e.text);
            assert_eq!(
                stream(&t, &e.ids[..1], &e.ids[1..]),
                e.decoded,
                "{:?}",
                e.text
            );
        }
    }

    #[test]
    fn student_chat_template_matches_transformers() {
        let t = student();
        assert!(t.has_chat_template());
        let gens = goldens();
        assert!(!gens.is_empty());
        for g in &gens {
            let msgs = [ChatMessage::user(g.question.clone())];
            assert_eq!(t.apply_chat_template(&msgs, true).unwrap(), g.prompt);
            assert_eq!(
                t.encode_chat(&msgs, true).unwrap(),
                g.prompt_ids,
                "{:?}",
                g.question
            );
        }
    }

    #[test]
    fn two_turn_conversation() {
        let t = student();
        let conv = [
            ChatMessage::user("a"),
            ChatMessage::assistant("b"),
            ChatMessage::user("c"),
        ];
        assert_eq!(
            t.apply_chat_template(&conv, true).unwrap(),
            "<s>[INST] a [/INST] b</s>[INST] c [/INST]"
        );
        assert_eq!(
            t.encode_chat(&conv, true).unwrap(),
            t.encode("<s>[INST] a [/INST] b</s>[INST] c [/INST]", false)
                .unwrap()
        );
    }

    #[test]
    fn template_exceptions_carry_the_template_message() {
        let t = student();
        match t.apply_chat_template(&[ChatMessage::assistant("x")], true) {
            Err(Error::ChatTemplate(m)) => assert_eq!(
                m,
                "Conversation roles must alternate user/assistant/user/assistant/..."
            ),
            other => panic!("{other:?}"),
        }
        match t.apply_chat_template(&[ChatMessage::system("x")], true) {
            Err(Error::ChatTemplate(m)) => {
                assert_eq!(
                    m,
                    "Conversation roles must alternate user/assistant/user/assistant/..."
                )
            }
            other => panic!("{other:?}"),
        }
        let conv = [ChatMessage::user("a"), ChatMessage::new("tool", "b")];
        match t.apply_chat_template(&conv, true) {
            Err(Error::ChatTemplate(m)) => {
                assert_eq!(m, "Only user and assistant roles are supported!")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn model_without_template_is_an_error() {
        let t = mistral();
        assert!(!t.has_chat_template());
        match t.apply_chat_template(&[ChatMessage::user("x")], true) {
            Err(Error::ChatTemplate(m)) => assert!(m.contains("no chat template"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.encode_chat(&[ChatMessage::user("x")], true),
            Err(Error::ChatTemplate(_))
        ));
        let t = t.with_chat_template("{{ bos_token }}{{ messages[0].content }}".into());
        assert_eq!(
            t.apply_chat_template(&[ChatMessage::user("x")], false)
                .unwrap(),
            "<s>x"
        );
    }

    #[test]
    fn golden_generations_decode() {
        let t = student();
        for g in goldens() {
            assert_eq!(t.decode(&g.generated_ids, true).unwrap(), g.text);
        }
        // The first generated piece is a bare "▁": decoding the generated ids alone strips it.
        assert_eq!(t.decode(&[28705, 28750, 28782, 2], true).unwrap(), "25");
    }

    #[test]
    fn incremental_decoder_matches_decode() {
        let t = student();
        for g in goldens() {
            assert_eq!(stream(&t, &g.prompt_ids, &g.generated_ids), g.text);
            assert_eq!(
                stream(&t, &g.prompt_ids, &g.generated_ids),
                t.decode(&g.generated_ids, true).unwrap()
            );
        }
        let t = mistral();
        for text in [
            "café\t🦀",
            "Ünïcödé 日本語 🙂 مرحبا Привет",
            " leading space",
            "  two  spaces\tand\ttabs\nnewline\n\n",
        ] {
            let ids = t.encode(text, true).unwrap();
            let generated = &ids[1..];
            assert_eq!(
                stream(&t, &ids[..1], generated),
                t.decode(generated, true).unwrap()
            );
            assert_eq!(
                stream(&t, &[], generated),
                t.decode(generated, true).unwrap()
            );
        }
        for (text, ids) in MISTRAL_IDS {
            let generated = &ids[1..];
            assert_eq!(
                stream(&t, &ids[..1], generated),
                t.decode(generated, true).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn incremental_decoder_holds_back_partial_characters() {
        let t = mistral();
        // 🦀 is four byte-fallback pieces <0xF0> <0x9F> <0xA6> <0x80>.
        let mut d = t.incremental_decoder(&[1]);
        assert_eq!(d.push(28345).unwrap(), "café");
        assert_eq!(d.push(12).unwrap(), "\t");
        assert_eq!(d.push(243).unwrap(), "");
        assert_eq!(d.push(162).unwrap(), "");
        assert_eq!(d.push(169).unwrap(), "");
        assert_eq!(d.push(131).unwrap(), "🦀");
        assert_eq!(d.push(2).unwrap(), "");
        assert_eq!(d.flush().unwrap(), "");
        // An incomplete sequence at the end comes out of flush as decode gives it.
        let mut d = t.incremental_decoder(&[1]);
        assert_eq!(d.push(243).unwrap(), "");
        assert_eq!(d.flush().unwrap(), t.decode(&[243], true).unwrap());
        // Ids outside the vocabulary add nothing, as in decode.
        assert_eq!(d.push(1_000_000).unwrap(), "");
        assert_eq!(d.push(22557).unwrap(), " Hello");
        assert_eq!(
            t.decode(d.generated_ids(), true).unwrap(),
            format!("{} Hello", t.decode(&[243], true).unwrap())
        );
    }

    #[test]
    fn invalid_files_are_errors_not_panics() {
        assert!(matches!(
            Tokenizer::from_bytes(b"{ not json", None),
            Err(Error::Tokenizer(_))
        ));
        assert!(matches!(
            Tokenizer::from_bytes(b"{\"model\": 3}", None),
            Err(Error::Tokenizer(_))
        ));
        assert!(matches!(
            Tokenizer::from_bytes(b"", None),
            Err(Error::Tokenizer(_))
        ));
        let json = read(&format!("{MISTRAL}/tokenizer.json"));
        assert!(matches!(
            Tokenizer::from_bytes(&json, Some(b"[1, 2")),
            Err(Error::Tokenizer(_))
        ));
        assert!(matches!(
            Tokenizer::from_dir(Path::new("/nonexistent/tokenizer/dir")),
            Err(Error::Io { .. })
        ));
        let t = mistral();
        assert_eq!(t.decode(&[1, 22557, 32000], true).unwrap(), "Hello");
    }

    #[test]
    fn config_forms_of_special_tokens_and_templates() {
        let json = read(&format!("{MISTRAL}/tokenizer.json"));
        let cfg = br#"{
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": {"content": "</s>"},
            "unk_token": null,
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ messages|length }}"}
            ]
        }"#;
        let t = Tokenizer::from_bytes(&json, Some(cfg)).unwrap();
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        assert_eq!(
            t.apply_chat_template(&[ChatMessage::user("x")], true)
                .unwrap(),
            "<s>|</s>||1"
        );
        // No config: SentencePiece-style names are found in the vocabulary.
        let t = Tokenizer::from_bytes(&json, None).unwrap();
        assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
        assert!(!t.has_chat_template());
    }

    #[test]
    fn hf_template_features() {
        let t = student().with_chat_template(
            concat!(
                "{%- if messages[0]['role'] == 'system' %}",
                "{%- set sys = messages[0]['content'] | trim %}{%- set rest = messages[1:] %}",
                "{%- else %}{%- set sys = none %}{%- set rest = messages %}{%- endif %}",
                "{{ bos_token }}",
                "{%- for m in rest %}",
                "{%- if loop.first and sys is not none %}{{ sys.upper() + '\\n' }}{% endif %}",
                "[{{ m.role }}]{{ m.content.strip() }}{{ '\\n' if not loop.last }}",
                "{%- endfor %}",
                "{%- if tools is none %}|no tools{% endif %}",
                "{%- if add_generation_prompt %}|gen{% endif %}",
                "|{{ rest | tojson }}",
            )
            .into(),
        );
        let msgs = [
            ChatMessage::system("  be brief "),
            ChatMessage::user(" hi\t"),
            ChatMessage::assistant("yo \"ü\""),
        ];
        assert_eq!(
            t.apply_chat_template(&msgs, true).unwrap(),
            "<s>BE BRIEF\n[user]hi\n[assistant]yo \"ü\"|no tools|gen\
             |[{\"role\": \"user\", \"content\": \" hi\\t\"}, {\"role\": \"assistant\", \"content\": \"yo \\\"ü\\\"\"}]"
        );
    }

    #[test]
    fn tojson_follows_python_json_dumps() {
        let env = template_env();
        let r = |src: &str| env.render_str(src, ()).unwrap();
        assert_eq!(
            r("{{ {'a': [1.5, none, true], 'b': 1} | tojson }}"),
            r#"{"a": [1.5, null, true], "b": 1}"#
        );
        assert_eq!(
            r("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}"),
            r#"{"a": 2, "b": 1}"#
        );
        assert_eq!(
            r("{{ [1, {'x': []}] | tojson(indent=2) }}"),
            "[\n  1,\n  {\n    \"x\": []\n  }\n]"
        );
        assert_eq!(r("{{ 'é<>&' | tojson }}"), "\"é<>&\"");
        assert_eq!(
            r("{{ 'é🦀' | tojson(ensure_ascii=true) }}"),
            "\"\\u00e9\\ud83e\\udd80\""
        );
        assert_eq!(r("{{ [1, 2] | tojson(separators=[',', ':']) }}"), "[1,2]");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1.5e-7), "1.5e-07");
        assert_eq!(py_float_repr(0.1), "0.1");
        assert_eq!(py_float_repr(2.0), "2.0");
    }

    #[test]
    fn strftime_directives() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_722_085_509 - 86_400;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime_utc("%A %B %-d, %y %H:%M:%S %I%p %j %%", t),
            "Friday July 26, 24 13:05:09 01PM 208 %"
        );
        assert_eq!(strftime_utc("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime_utc("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
        let env = template_env();
        assert_eq!(
            env.render_str("{{ strftime_now('%Y') | length }}", ())
                .unwrap(),
            "4"
        );
    }
}
