//! Tokenizer from Hugging Face files: `tokenizer.json`, with `tokenizer_config.json`,
//! `generation_config.json` and `chat_template.jinja` beside it when present.

use std::path::Path;

use serde_json::Value;

use super::{Tokenizer, TokenizerError};

pub(super) fn from_hf_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let generation = read_json(&dir.join("generation_config.json"))?;

    let token_field = |key: &str| -> Option<u32> {
        let value = config.as_ref()?.get(key)?;
        // Either "<s>" or {"content": "<s>", ...} (AddedToken form).
        let text = value
            .as_str()
            .or_else(|| value.get("content").and_then(Value::as_str))?;
        inner.token_to_id(text)
    };
    let id_field = |key: &str| -> Vec<u32> {
        let Some(value) = generation.as_ref().and_then(|g| g.get(key)) else {
            return Vec::new();
        };
        let ids: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        ids.into_iter()
            .filter_map(Value::as_u64)
            .filter_map(|id| u32::try_from(id).ok())
            .collect()
    };
    let bos_id = token_field("bos_token").or_else(|| id_field("bos_token_id").first().copied());
    let mut eos_ids: Vec<u32> = token_field("eos_token").into_iter().collect();
    eos_ids.extend(id_field("eos_token_id"));

    let template_file = dir.join("chat_template.jinja");
    let chat_template = if template_file.exists() {
        Some(
            std::fs::read_to_string(&template_file).map_err(|e| TokenizerError::File {
                path: template_file.clone(),
                reason: e.to_string(),
            })?,
        )
    } else {
        config
            .as_ref()
            .and_then(|c| template_from_config(c.get("chat_template")?))
    };

    // What the tokenizer.json post-processor does is the truth for BOS.
    let add_bos = match bos_id {
        Some(bos) => {
            let with = inner.encode_fast("a", true);
            let without = inner.encode_fast("a", false);
            matches!((with, without), (Ok(w), Ok(wo))
                if w.get_ids().first() == Some(&bos) && wo.get_ids().first() != Some(&bos))
        }
        None => false,
    };
    Ok(Tokenizer::assemble(
        inner,
        bos_id,
        eos_ids,
        add_bos,
        chat_template,
    ))
}

/// `chat_template` is a string, or a list of `{name, template}` (the "default" one is used).
fn template_from_config(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let named = |name: &str| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
            };
            named("default")
                .or_else(|| items.first())
                .and_then(|i| i.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TokenizerError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}
