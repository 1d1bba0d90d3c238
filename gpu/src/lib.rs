//! stator's inference engine: model loading (GGUF, Hugging Face safetensors), tokenizer and chat
//! template, compute backends (CPU reference; CUDA), paged KV cache with prefix hashing,
//! continuous-batching scheduler, sampler, and the engine thread that ties them together.
//!
//! Nothing here knows about the cluster: the node crate drives an [`engine::EngineHandle`].

pub mod backend;
pub mod config;
pub mod engine;
pub mod kv;
pub mod loader;
pub mod presets;
pub mod random_weights;
pub mod request;
pub mod rope;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;
pub mod weights;
