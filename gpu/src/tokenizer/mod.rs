//! Tokenizer, chat template, incremental detokenizer and stop strings.
//!
//! [`Tokenizer`] wraps Hugging Face `tokenizers`: built from a `tokenizer.json` or, for GGUF
//! models, from the file's vocabulary and merges (see [`gguf_vocab`]).

mod chat;
mod gguf_vocab;
mod hf_files;
mod stop;
mod stream;
mod strftime;

use std::path::{Path, PathBuf};

pub use chat::ChatMessage;
pub use stop::{StopMatcher, StopOutcome};
pub use stream::StreamDecoder;

use crate::loader::Metadata;

/// Why text could not be tokenized, detokenized or templated.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata {key}: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("unsupported tokenizer model {0:?} (supported: gpt2-style byte-level BPE)")]
    UnsupportedModel(String),
    #[error(
        "unsupported pre-tokenizer {0:?} (supported: gpt2, smollm, starcoder, llama3, llama-bpe, qwen2)"
    )]
    UnsupportedPreTokenizer(String),
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("token id {id} is not in the vocabulary ({vocab_size} tokens)")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error("chat template: {0}")]
    Template(String),
}

impl TokenizerError {
    fn metadata(key: &str, reason: impl Into<String>) -> Self {
        TokenizerError::BadMetadata {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// A tokenizer plus the model facts that go with it (BOS/EOS, chat template).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `tokenizers` answers `get_vocab_size(true)` by building the whole vocabulary map
    /// (~49k strings for SmolLM2: milliseconds), and every request asks for it.
    vocab_size: usize,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// End-of-turn markers that chat templates use; when a template writes one, generating it
/// ends the reply even if the model's EOS id is another token.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
];

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(meta: &Metadata) -> Result<Self, TokenizerError> {
        gguf_vocab::from_gguf(meta)
    }

    /// Loads a Hugging Face `tokenizer.json`; `tokenizer_config.json`,
    /// `generation_config.json` and `chat_template.jinja` next to it supply BOS/EOS and the
    /// chat template when present.
    pub fn from_hf_file(path: &Path) -> Result<Self, TokenizerError> {
        hf_files::from_hf_file(path)
    }

    /// Assembles the final tokenizer: resolves end-of-turn ids the template uses.
    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        mut eos_ids: Vec<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Self {
        if let Some(template) = &chat_template {
            for marker in END_OF_TURN_TOKENS {
                if template.contains(marker) {
                    if let Some(id) = inner.token_to_id(marker) {
                        eos_ids.push(id);
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|id| seen.insert(*id));
        Self {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos_id,
            eos_ids,
            add_bos,
            chat_template,
        }
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids; `add_special` adds what the model expects around a sequence (BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token's vocabulary string (byte-level BPE tokens are in GPT-2's byte alphabet).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Ids that end generation: the model's EOS and the chat template's end-of-turn tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders a conversation with the model's chat template (ChatML when it has none).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let token_text = |id: Option<u32>| {
            id.and_then(|id| self.inner.id_to_token(id))
                .unwrap_or_default()
        };
        match &self.chat_template {
            Some(template) => chat::render(
                template,
                messages,
                add_generation_prompt,
                &token_text(self.bos_id),
                &token_text(self.eos_ids.first().copied()),
            ),
            None => Ok(chat::chatml(messages, add_generation_prompt)),
        }
    }
}
