//! One request as the scheduler tracks it.

use crate::kv::SeqId;
use crate::request::SamplingParams;

/// A request to schedule: `generated` holds tokens produced before a resume.
#[derive(Clone, Debug)]
pub struct NewSequence {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub generated: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Clone, Debug)]
pub struct Sequence {
    id: SeqId,
    /// Prompt followed by every output token (including ones generated before a resume).
    tokens: Vec<u32>,
    prompt_len: usize,
    params: SamplingParams,
    /// Tokens whose KV is in the cache; the rest run in coming steps.
    pub(super) num_computed: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub(super) cached_prompt_tokens: Option<usize>,
}

impl Sequence {
    pub(super) fn new(seq: NewSequence) -> Self {
        let prompt_len = seq.prompt.len();
        let mut tokens = seq.prompt;
        tokens.extend(seq.generated);
        Self {
            id: seq.id,
            tokens,
            prompt_len,
            params: seq.params,
            num_computed: 0,
            cached_prompt_tokens: None,
        }
    }

    pub fn id(&self) -> SeqId {
        self.id
    }
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }
    /// Output tokens, counting from the first token of the original request.
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }
    pub fn num_computed(&self) -> usize {
        self.num_computed
    }
    pub(super) fn remaining(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
    pub(super) fn push_token(&mut self, token: u32) {
        self.tokens.push(token);
    }
}
