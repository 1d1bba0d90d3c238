//! Rendered logprobs → the two wire shapes (chat's objects, completions' parallel arrays).

use super::assemble::RenderedLogprob;
use super::types::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};

pub fn chat(entries: Vec<RenderedLogprob>) -> ChatLogprobs {
    ChatLogprobs {
        content: entries
            .into_iter()
            .map(|entry| ChatTokenLogprob {
                bytes: entry.text.as_bytes().to_vec(),
                token: entry.text,
                logprob: entry.logprob,
                top_logprobs: entry
                    .top
                    .into_iter()
                    .map(|alt| ChatTopLogprob {
                        bytes: alt.text.as_bytes().to_vec(),
                        token: alt.text,
                        logprob: alt.logprob,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// `text_offset` counts characters from the start of the choice's text; `offset` is where these
/// entries begin (after the echoed prompt and earlier chunks) and is advanced past them.
pub fn completion(entries: Vec<RenderedLogprob>, offset: &mut usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for entry in entries {
        out.text_offset.push(*offset);
        *offset += entry.text.chars().count();
        out.token_logprobs.push(entry.logprob);
        out.top_logprobs.push(
            entry
                .top
                .into_iter()
                .map(|alt| (alt.text, serde_json::Value::from(alt.logprob)))
                .collect(),
        );
        out.tokens.push(entry.text);
    }
    out
}
