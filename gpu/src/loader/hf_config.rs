//! Hugging Face `config.json` (Llama, Qwen2) → [`ModelConfig`].

use serde_json::Value;

use super::LoadError;
use crate::config::{ModelConfig, RopeScaling};

/// Parses the text of a `config.json`.
pub fn config_from_hf_json(text: &str) -> Result<ModelConfig, LoadError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| LoadError::bad_config("config.json", e.to_string()))?;
    let architecture = architecture(&json)?;
    let hidden_size = required(&json, "hidden_size")?;
    let num_heads = required(&json, "num_attention_heads")?;
    let num_kv_heads = optional(&json, "num_key_value_heads")?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(LoadError::bad_config(
            "num_key_value_heads",
            format!("{num_heads} heads cannot be grouped over {num_kv_heads} KV heads"),
        ));
    }
    let head_dim = optional(&json, "head_dim")?.unwrap_or(hidden_size / num_heads);
    let is_qwen2 = architecture == "qwen2";
    Ok(ModelConfig {
        vocab_size: required(&json, "vocab_size")?,
        hidden_size,
        intermediate_size: required(&json, "intermediate_size")?,
        num_layers: required(&json, "num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: float(&json, "rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: float(&json, "rope_theta")?.unwrap_or(10_000.0),
        rope_scaling: rope_scaling(&json)?,
        max_position_embeddings: optional(&json, "max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: boolean(&json, "tie_word_embeddings")?.unwrap_or(false),
        // Qwen2's Q/K/V always carry biases; Llama's only when the config says so.
        attention_bias: is_qwen2 || boolean(&json, "attention_bias")?.unwrap_or(false),
        architecture,
    })
}

fn architecture(json: &Value) -> Result<String, LoadError> {
    let model_type = json.get("model_type").and_then(Value::as_str);
    let class = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    match (model_type, class) {
        (Some("llama"), _) | (None, Some("LlamaForCausalLM")) => Ok("llama".into()),
        (Some("qwen2"), _) | (None, Some("Qwen2ForCausalLM")) => Ok("qwen2".into()),
        (Some(other), _) => Err(LoadError::UnsupportedArchitecture(other.into())),
        (None, Some(other)) => Err(LoadError::UnsupportedArchitecture(other.into())),
        (None, None) => Err(LoadError::bad_config(
            "model_type",
            "config.json names neither model_type nor architectures",
        )),
    }
}

fn optional(json: &Value, key: &str) -> Result<Option<usize>, LoadError> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| LoadError::bad_config(key, format!("{v} is not a positive integer"))),
    }
}

fn required(json: &Value, key: &str) -> Result<usize, LoadError> {
    optional(json, key)?.ok_or_else(|| LoadError::bad_config(key, "missing from config.json"))
}

fn float(json: &Value, key: &str) -> Result<Option<f32>, LoadError> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|x| Some(x as f32))
            .ok_or_else(|| LoadError::bad_config(key, format!("{v} is not a number"))),
    }
}

fn boolean(json: &Value, key: &str) -> Result<Option<bool>, LoadError> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| LoadError::bad_config(key, format!("{v} is not true/false"))),
    }
}

fn rope_scaling(json: &Value) -> Result<Option<RopeScaling>, LoadError> {
    let scaling = match json.get("rope_scaling") {
        None | Some(Value::Null) => return Ok(None),
        Some(s) => s,
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind == "default" {
        return Ok(None);
    }
    if kind != "llama3" {
        return Err(LoadError::Unsupported(format!(
            "rope_scaling type {kind:?} is not supported (only \"llama3\")"
        )));
    }
    let field = |k: &str| {
        float(scaling, k)?.ok_or_else(|| {
            LoadError::bad_config(format!("rope_scaling.{k}"), "missing from config.json")
        })
    };
    let low_freq_factor = field("low_freq_factor")?;
    let high_freq_factor = field("high_freq_factor")?;
    if high_freq_factor <= low_freq_factor {
        return Err(LoadError::bad_config(
            "rope_scaling.high_freq_factor",
            "must exceed low_freq_factor",
        ));
    }
    Ok(Some(RopeScaling {
        factor: field("factor")?,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: optional(scaling, "original_max_position_embeddings")?
            .ok_or_else(|| {
                LoadError::bad_config(
                    "rope_scaling.original_max_position_embeddings",
                    "missing from config.json",
                )
            })?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA31: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": false
    }"#;

    #[test]
    fn llama31_config_with_rope_scaling() {
        let c = config_from_hf_json(LLAMA31).unwrap();
        assert_eq!(c.architecture, "llama");
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
        assert_eq!(c.rope_theta, 500000.0);
        assert!(!c.attention_bias && !c.tie_word_embeddings);
        let s = c.rope_scaling.unwrap();
        assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 8192));
    }

    #[test]
    fn qwen2_always_has_attention_bias() {
        let c = config_from_hf_json(
            r#"{"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,
                "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
                "vocab_size":151936,"rope_theta":1000000.0,"tie_word_embeddings":true,
                "rope_scaling":null}"#,
        )
        .unwrap();
        assert!(c.attention_bias && c.tie_word_embeddings);
        assert_eq!(c.head_dim, 64);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn user_mistakes_name_the_field() {
        let err = config_from_hf_json(r#"{"model_type":"gpt_neox"}"#).unwrap_err();
        assert!(err.to_string().contains("gpt_neox"), "{err}");
        let err = config_from_hf_json(&LLAMA31.replace("\"hidden_size\": 4096,", "")).unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
        let err = config_from_hf_json(&LLAMA31.replace("llama3", "yarn")).unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
        assert!(config_from_hf_json("not json").is_err());
    }
}
