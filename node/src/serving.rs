//! Builds what this peer serves on the OpenAI API: a local engine on the model given with
//! `--model` (or the default model), only the model's tokenizer for a frontend-only peer, or
//! nothing (`--no-model`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::cuda::{cuda_available, CudaBackend, CudaOptions};
use stator_gpu::backend::Backend;
use stator_gpu::engine::{Engine, EngineConfig, EngineHandle};
use stator_gpu::loader::{default_model_path, load_model, load_model_metadata};
use stator_gpu::presets::parse_random_weights_spec;
use stator_gpu::random_weights::random_weights;
use tracing::{info, warn};

use crate::cli::{Device, EngineArgs};
use crate::openai::{self, ApiState, TokenSource};

/// Seed of `--random-weights` models: fixed, so every peer builds the same model.
const RANDOM_WEIGHTS_SEED: u64 = 0x5747_0001;

/// What the peer serves; `engine` is `None` when it runs without a model.
pub struct Serving {
    pub router: Router,
    pub engine: Option<EngineHandle>,
    /// Served model name and device of `engine` (empty without one).
    pub model_name: String,
    pub device: String,
}

/// `source`: where the API's tokens come from (e.g. cluster workers under leases); `None`
/// serves straight from this peer's engine.
pub async fn build(args: &EngineArgs, source: Option<Arc<dyn TokenSource>>) -> Result<Serving> {
    if args.no_model {
        return Ok(no_model("this peer runs without a model (--no-model)"));
    }
    let Some(path) = model_path(args)? else {
        warn!(path = %default_model_path().display(), "no model given and the default model is not installed; serving without a model (run tools/fetch-model.sh, or pass --model)");
        return Ok(no_model(
            "no model loaded: start the peer with --model PATH or run tools/fetch-model.sh",
        ));
    };
    let args = args.clone();
    let (engine, tokenizer, name, device) =
        tokio::task::spawn_blocking(move || start_engine(path, &args))
            .await
            .context("the model loader panicked")??;
    let context_length = engine.max_model_len();
    let state = Arc::new(ApiState {
        model_name: name.clone(),
        tokenizer: Arc::new(tokenizer),
        context_length,
        source: source.unwrap_or_else(|| Arc::new(engine.clone())),
        default_max_tokens: 256.min(context_length),
    });
    Ok(Serving {
        router: openai::router(state),
        engine: Some(engine),
        model_name: name,
        device,
    })
}

/// The API of a peer without an engine (`--role frontend`): the model's tokenizer, chat
/// template, context length and name come from `--model` (weights are not read); every
/// request runs on the cluster's workers through `source`.
pub async fn build_frontend(args: &EngineArgs, source: Arc<dyn TokenSource>) -> Result<Serving> {
    const NEEDS_MODEL: &str = "--role frontend needs the served model's tokenizer and chat \
        template: give --model PATH (its weights are not loaded) or run tools/fetch-model.sh";
    if args.no_model {
        bail!("{NEEDS_MODEL} (--no-model was given)");
    }
    let path = model_path(args)?.ok_or_else(|| anyhow!(NEEDS_MODEL))?;
    let name = served_name(args, &path);
    let metadata = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || load_model_metadata(&path))
    }
    .await
    .context("the model metadata loader panicked")?
    .with_context(|| format!("cannot read the model {}", path.display()))?;
    let context_length = metadata.config.max_position_embeddings;
    info!(model = %name, path = %path.display(), context = context_length, "frontend only: serving the cluster's workers");
    let state = Arc::new(ApiState {
        model_name: name.clone(),
        tokenizer: Arc::new(metadata.tokenizer),
        context_length,
        source,
        default_max_tokens: 256.min(context_length),
    });
    Ok(Serving {
        router: openai::router(state),
        engine: None,
        model_name: name,
        device: String::new(),
    })
}

/// `--model`, else the default model when it is installed.
fn model_path(args: &EngineArgs) -> Result<Option<PathBuf>> {
    match &args.model {
        Some(p) if !p.exists() => bail!("--model {} does not exist", p.display()),
        Some(p) => Ok(Some(p.clone())),
        None => {
            let p = default_model_path();
            Ok(p.exists().then_some(p))
        }
    }
}

/// `--served-model-name`, else the `--random-weights` preset, else the model's file name.
fn served_name(args: &EngineArgs, path: &std::path::Path) -> String {
    if let Some(name) = &args.served_model_name {
        return name.clone();
    }
    match &args.random_weights {
        Some(spec) => spec.rsplit('/').next().unwrap_or(spec).to_string(),
        None => served_name_from_path(path),
    }
}

/// The engine, its tokenizer, the served model name and the backend's device.
type Started = (
    EngineHandle,
    stator_gpu::tokenizer::Tokenizer,
    String,
    String,
);

fn start_engine(path: PathBuf, args: &EngineArgs) -> Result<Started> {
    let t0 = std::time::Instant::now();
    let loaded =
        load_model(&path).with_context(|| format!("cannot load the model {}", path.display()))?;
    let name = served_name(args, &path);
    let device = resolve_device(args.device)?;
    let random = match &args.random_weights {
        None => None,
        Some(spec) => {
            let mut config = parse_random_weights_spec(spec)
                .with_context(|| format!("--random-weights {spec}"))?;
            // Token ids come from the served model's tokenizer, so the vocabulary must be its own.
            config.vocab_size = loaded.tokenizer.vocab_size();
            info!(spec = %spec, params = config.num_parameters(), vocab = config.vocab_size, "serving seeded random weights");
            Some(config)
        }
    };
    let backend: Box<dyn Backend> = match device {
        Device::Cuda(ordinal) => {
            let opts = CudaOptions {
                device: ordinal,
                dtype: args.dtype,
                gpu_memory_utilization: args.gpu_memory_utilization,
                block_size: args.block_size,
                max_num_seqs: args.max_num_seqs,
                max_batch_tokens: args.max_batch_tokens,
                ..CudaOptions::default()
            };
            let backend = match random {
                // Generated on the device: no host copy of (say) 8B parameters in f32.
                Some(config) => CudaBackend::with_random_weights(config, RANDOM_WEIGHTS_SEED, opts),
                None => CudaBackend::new(loaded.config, &loaded.weights, opts),
            };
            Box::new(
                backend
                    .with_context(|| format!("cannot start the CUDA backend on cuda:{ordinal}"))?,
            )
        }
        _ => {
            let (config, weights) = match random {
                Some(config) => {
                    let weights = random_weights(&config, RANDOM_WEIGHTS_SEED);
                    (config, weights)
                }
                None => (loaded.config, loaded.weights),
            };
            let kv_bytes = args.kv_cache_mib.saturating_mul(1024 * 1024);
            Box::new(
                CpuBackend::with_memory_budget(config, weights, kv_bytes, args.block_size)
                    .context("cannot create the CPU backend")?,
            )
        }
    };
    let backend_name = backend.name();
    let engine = Engine::start(
        backend,
        EngineConfig {
            max_num_seqs: args.max_num_seqs,
            max_batch_tokens: args.max_batch_tokens,
            max_queue: args.max_queue,
            enable_prefix_caching: true,
        },
        loaded.tokenizer.eos_ids().to_vec(),
    );
    info!(model = %name, backend = %backend_name, path = %path.display(), context = engine.max_model_len(), load_s = t0.elapsed().as_secs_f64(), "model loaded; engine started");
    Ok((engine, loaded.tokenizer, name, backend_name))
}

/// `auto` becomes the first GPU when CUDA is usable here, else the CPU; an explicit `cuda:N`
/// without CUDA is an error, not a silent fallback.
fn resolve_device(requested: Device) -> Result<Device> {
    match requested {
        Device::Auto if cuda_available() => Ok(Device::Cuda(0)),
        Device::Auto | Device::Cpu => Ok(Device::Cpu),
        Device::Cuda(n) if cuda_available() => Ok(Device::Cuda(n)),
        Device::Cuda(n) => bail!(
            "--device cuda:{n}: no usable CUDA device (libcuda, NVRTC or cuBLAS missing, or no GPU); use --device cpu"
        ),
    }
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct`; a directory → its name.
fn served_name_from_path(path: &std::path::Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    let stem = stem
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    match stem.rsplit_once('.') {
        Some((base, quant)) if is_quant_tag(quant) => base.to_string(),
        _ => stem,
    }
}

fn is_quant_tag(tag: &str) -> bool {
    let t = tag.to_ascii_uppercase();
    t.starts_with('Q') && t[1..].starts_with(|c: char| c.is_ascii_digit())
        || ["F16", "F32", "BF16"].contains(&t.as_str())
}

fn no_model(reason: &'static str) -> Serving {
    let router = Router::new().nest_service(
        "/v1",
        axum::routing::any(move || async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": {"message": reason, "type": "service_unavailable", "param": null, "code": "no_model"}})),
            )
                .into_response()
        }),
    );
    Serving {
        router,
        engine: None,
        model_name: String::new(),
        device: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names_drop_the_extension_and_quant_tag() {
        let p = std::path::Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(served_name_from_path(p), "SmolLM2-135M-Instruct");
        assert_eq!(
            served_name_from_path(std::path::Path::new("/m/llama.F16.gguf")),
            "llama"
        );
        assert_eq!(
            served_name_from_path(std::path::Path::new("/m/Qwen2.5-0.5B.gguf")),
            "Qwen2.5-0.5B"
        );
    }
}
