//! Reading one OpenAI streaming chunk (chat or completions) into what the clock cares about.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Token counts the server reports in its final chunk when `stream_options.include_usage` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Generated text in this chunk (answer or reasoning); empty for role-only or usage chunks.
    pub content: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Parses a chunk's JSON; `Err` carries a message for an error object or malformed JSON.
pub fn parse_chunk(data: &str) -> Result<Chunk, String> {
    let value: Value = serde_json::from_str(data)
        .map_err(|e| format!("chunk is not JSON ({e}): {}", clip(data)))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_string);
        return Err(format!("server error in stream: {}", clip(&message)));
    }
    let mut chunk = Chunk::default();
    if let Some(choice) = value.get("choices").and_then(|c| c.get(0)) {
        let delta = choice.get("delta");
        for text in [
            delta.and_then(|d| d.get("content")),
            delta.and_then(|d| d.get("reasoning_content")),
            choice.get("text"),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        {
            chunk.content.push_str(text);
        }
        chunk.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        chunk.usage = Some(Usage {
            prompt_tokens: usage.get("prompt_tokens").and_then(Value::as_u64),
            completion_tokens: usage.get("completion_tokens").and_then(Value::as_u64),
        });
    }
    Ok(chunk)
}

/// Keeps error messages readable when a server sends a page of HTML.
pub fn clip(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_delta_content_and_finish() {
        let chunk = parse_chunk(
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.content, "Hi");
        assert_eq!(chunk.finish_reason, None);
        let last = parse_chunk(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(last.content, "");
        assert_eq!(last.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn completions_text_and_usage_chunk() {
        let chunk = parse_chunk(r#"{"choices":[{"text":" world","finish_reason":null}]}"#).unwrap();
        assert_eq!(chunk.content, " world");
        let usage = parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#).unwrap();
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: Some(12),
                completion_tokens: Some(5)
            })
        );
        let null_usage = parse_chunk(r#"{"choices":[{"text":"a"}],"usage":null}"#).unwrap();
        assert_eq!(null_usage.usage, None);
    }

    #[test]
    fn role_only_first_chunk_has_no_content() {
        let chunk =
            parse_chunk(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#).unwrap();
        assert!(chunk.content.is_empty());
    }

    #[test]
    fn error_objects_and_bad_json_are_errors() {
        let err = parse_chunk(r#"{"error":{"message":"out of memory","code":500}}"#).unwrap_err();
        assert!(err.contains("out of memory"), "{err}");
        assert!(parse_chunk("<html>").unwrap_err().contains("not JSON"));
    }
}
