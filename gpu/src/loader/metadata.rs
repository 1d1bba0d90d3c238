//! A model's facts without its weights: configuration and tokenizer (with the chat template),
//! for a peer that serves the API but runs no engine (`--role frontend`).

use std::path::Path;

use super::gguf::GgufFile;
use super::gguf_model::config_from_gguf;
use super::hf_config::config_from_hf_json;
use super::LoadError;
use crate::config::ModelConfig;
use crate::tokenizer::Tokenizer;

/// What a frontend needs of a model: how to tokenize and template, and its context length.
pub struct ModelMetadata {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
}

/// Reads a `.gguf` file's metadata (the tensors are mapped, never read) or a Hugging Face
/// directory's `config.json` and `tokenizer.json`.
pub fn load_model_metadata(path: &Path) -> Result<ModelMetadata, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        let config_path = path.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = config_from_hf_json(&text).map_err(|e| e.in_file(&config_path))?;
        let tokenizer_path = path.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(LoadError::NotFound(tokenizer_path));
        }
        let tokenizer = Tokenizer::from_hf_file(&tokenizer_path)?;
        return Ok(ModelMetadata { config, tokenizer });
    }
    let file = GgufFile::open(path)?;
    let config = config_from_gguf(&file).map_err(|e| e.in_file(path))?;
    let tokenizer =
        Tokenizer::from_gguf(&file.metadata).map_err(|e| LoadError::from(e).in_file(path))?;
    Ok(ModelMetadata { config, tokenizer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_is_named() {
        let err = load_model_metadata(Path::new("/nonexistent/model.gguf"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.gguf");
        std::fs::write(&path, b"not a model at all").unwrap();
        assert!(load_model_metadata(&path).is_err());
    }
}
