//! Incremental detokenization for streaming responses.

use std::sync::Arc;

use super::{Tokenizer, TokenizerError};

/// Turns generated ids into text deltas as they arrive.
///
/// Holds an `Arc<Tokenizer>` (not a borrow) so the frontend can keep one per request across
/// awaits. Deltas never end inside a UTF-8 character (a token that carries only part of a
/// character's bytes is held until the rest arrives), and the concatenation of all deltas
/// plus [`finish`](Self::finish) equals `decode(all ids)`.
///
/// Each push decodes a short window: the ids since the last emitted text plus the few before
/// them as context (decoders such as SentencePiece's strip a leading space at the start of
/// text), so the cost per token does not grow with the length of the reply.
#[derive(Debug)]
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    /// Ids from `prefix_start` on (older ids are dropped).
    window: Vec<u32>,
    /// `window[..read]` has been emitted; `window[..read]` decodes to `prefix_text`.
    read: usize,
    prefix_text: String,
}

impl StreamDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            window: Vec::new(),
            read: 0,
            prefix_text: String::new(),
        }
    }

    /// Adds one id; returns the new text (empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        // Reject before touching state: a bad id changes nothing.
        if self.tokenizer.id_to_token(id).is_none() {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.tokenizer.vocab_size(),
            });
        }
        self.window.push(id);
        let text = self.tokenizer.decode(&self.window, self.skip_special)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.prefix_text.len() {
            return Ok(String::new());
        }
        let delta = match text.strip_prefix(self.prefix_text.as_str()) {
            Some(delta) => delta.to_string(),
            // The decoder rewrote earlier text (rare); hold until `finish`.
            None => return Ok(String::new()),
        };
        // Slide the window: keep the ids just emitted as context for the next ones.
        self.window.drain(..self.read);
        self.read = self.window.len();
        self.prefix_text = self.tokenizer.decode(&self.window, self.skip_special)?;
        Ok(delta)
    }

    /// The text still held back (an incomplete character decodes as U+FFFD, as in `decode`).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let text = self.tokenizer.decode(&self.window, self.skip_special)?;
        let rest = text
            .strip_prefix(self.prefix_text.as_str())
            .unwrap_or(text.as_str())
            .to_string();
        self.window.clear();
        self.read = 0;
        self.prefix_text.clear();
        Ok(rest)
    }
}
