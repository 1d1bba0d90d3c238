//! Model loading: a GGUF file or a Hugging Face directory (config.json + safetensors +
//! tokenizer.json) becomes a [`LoadedModel`]: config, f32 weights in Hugging Face layout and
//! the tokenizer.

mod assemble;
pub mod gguf;
mod gguf_model;
pub mod gguf_write;
pub mod hf_config;
mod metadata;
pub mod quant;
pub mod safetensors;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::ModelConfig;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::weights::ModelWeights;

pub use gguf::{GgufFile, MetaValue, Metadata, TensorInfo};
pub use gguf_model::config_from_gguf;
pub use gguf_write::GgufBuilder;
pub use hf_config::config_from_hf_json;
pub use metadata::{load_model_metadata, ModelMetadata};
pub use quant::GgmlType;

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1), fetched by
/// `tools/fetch-model.sh`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A model ready for a backend.
pub struct LoadedModel {
    pub name: String,
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a model could not be loaded. Messages name the file, tensor or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model path {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (missing the GGUF magic bytes)")]
    NotGguf,
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<LoadError>,
    },
    #[error("file is truncated: {0}")]
    Truncated(String),
    #[error("file is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported tensor type {ggml_type} in tensor {tensor}")]
    UnsupportedTensorType { tensor: String, ggml_type: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("unsupported architecture {0:?} (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("tensor {tensor} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("missing or invalid model setting {key}: {reason}")]
    BadConfig { key: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
}

impl LoadError {
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        LoadError::Corrupt(msg.into())
    }

    pub(crate) fn bad_config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        LoadError::BadConfig {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Attaches the file name to errors that do not already carry one.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            e @ (LoadError::Io { .. } | LoadError::InFile { .. } | LoadError::NotFound(_)) => e,
            e => LoadError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }
}

/// Loads a `.gguf` file or a Hugging Face model directory.
pub fn load_model(path: &Path) -> Result<LoadedModel, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound(path.to_path_buf()));
    }
    let started = Instant::now();
    tracing::info!(path = %path.display(), "loading model");
    let model = if path.is_dir() {
        safetensors::load_hf_dir(path)?
    } else {
        gguf_model::load_gguf(path)?
    };
    tracing::info!(
        name = %model.name,
        architecture = %model.config.architecture,
        layers = model.config.num_layers,
        parameters = model.config.num_parameters(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    metrics::histogram!("stator_worker_model_load_seconds").record(started.elapsed().as_secs_f64());
    Ok(model)
}

/// `$STATOR_MODEL_DIR/<default file>`, else `${XDG_CACHE_HOME:-~/.cache}/stator/models/<default file>`.
pub fn default_model_path() -> PathBuf {
    default_model_path_from(
        std::env::var_os("STATOR_MODEL_DIR").map(PathBuf::from),
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn default_model_path_from(
    model_dir: Option<PathBuf>,
    xdg_cache: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    let non_empty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let dir = non_empty(model_dir).unwrap_or_else(|| {
        non_empty(xdg_cache)
            .or_else(|| non_empty(home).map(|h| h.join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("stator")
            .join("models")
    });
    dir.join(DEFAULT_MODEL_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_prefers_model_dir_then_xdg_then_home() {
        let f = DEFAULT_MODEL_FILE;
        assert_eq!(
            default_model_path_from(Some("/m".into()), Some("/x".into()), Some("/h".into())),
            PathBuf::from("/m").join(f)
        );
        assert_eq!(
            default_model_path_from(None, Some("/x".into()), Some("/h".into())),
            PathBuf::from("/x/stator/models").join(f)
        );
        assert_eq!(
            default_model_path_from(Some("".into()), Some("".into()), Some("/h".into())),
            PathBuf::from("/h/.cache/stator/models").join(f)
        );
    }
}
