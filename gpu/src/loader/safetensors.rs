//! Hugging Face model directory: `config.json`, one or many `*.safetensors` (with
//! `model.safetensors.index.json` when sharded), `tokenizer.json` (+ `tokenizer_config.json`).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::assemble::{assemble, LayerSlot, Slot, TensorSource};
use super::hf_config::config_from_hf_json;
use super::{LoadError, LoadedModel};
use crate::tokenizer::Tokenizer;
use crate::weights::Tensor;

pub(crate) fn load_hf_dir(dir: &Path) -> Result<LoadedModel, LoadError> {
    let config_path = dir.join("config.json");
    let text = read_to_string(&config_path)?;
    let config = config_from_hf_json(&text).map_err(|e| e.in_file(&config_path))?;
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.exists() {
        return Err(LoadError::NotFound(tokenizer_path));
    }
    let tokenizer = Tokenizer::from_hf_file(&tokenizer_path)?;
    let source = SafetensorsSource::open(dir)?;
    tracing::info!(
        files = source.files.len(),
        tensors = source.file_of.len(),
        "safetensors indexed, converting"
    );
    let weights = assemble(&config, &source)?;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(LoadedModel {
        name,
        config,
        weights,
        tokenizer,
    })
}

fn read_to_string(path: &Path) -> Result<String, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound(path.to_path_buf()));
    }
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

struct SafetensorsSource {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name → index into `files`.
    file_of: HashMap<String, usize>,
}

impl SafetensorsSource {
    fn open(dir: &Path) -> Result<Self, LoadError> {
        let paths = shard_paths(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut file_of = HashMap::new();
        for path in paths {
            let io = |source| LoadError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(io)?;
            // SAFETY: read-only mapping of a model file nobody rewrites while we run.
            let map = unsafe { Mmap::map(&file) }.map_err(io)?;
            let parsed = SafeTensors::deserialize(&map)
                .map_err(|e| LoadError::corrupt(format!("{}: {e}", path.display())))?;
            for name in parsed.names() {
                file_of.insert(name.clone(), files.len());
            }
            files.push((path, map));
        }
        Ok(Self { files, file_of })
    }
}

/// The shard files: from the index when sharded, else every `*.safetensors` in the directory.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = read_to_string(&index_path)?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::corrupt(format!("{}: {e}", index_path.display())))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                LoadError::corrupt(format!("{} has no weight_map", index_path.display()))
            })?;
        let mut names = BTreeSet::new();
        for file in map.values() {
            let file = file
                .as_str()
                .filter(|f| is_plain_file_name(f))
                .ok_or_else(|| {
                    LoadError::corrupt(format!(
                        "{}: weight_map entry {file} is not a file name",
                        index_path.display()
                    ))
                })?;
            names.insert(file.to_string());
        }
        return names
            .into_iter()
            .map(|n| {
                let p = dir.join(n);
                if p.exists() {
                    Ok(p)
                } else {
                    Err(LoadError::NotFound(p))
                }
            })
            .collect();
    }
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(LoadError::NotFound(dir.join("model.safetensors")));
    }
    Ok(paths)
}

/// The index must not point outside the model directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && name != ".." && name != "."
}

impl TensorSource for SafetensorsSource {
    fn name(&self, slot: Slot) -> String {
        match slot {
            Slot::Embed => "model.embed_tokens.weight".into(),
            Slot::FinalNorm => "model.norm.weight".into(),
            Slot::LmHead => "lm_head.weight".into(),
            Slot::Layer(l, s) => format!(
                "model.layers.{l}.{}",
                match s {
                    LayerSlot::AttnNorm => "input_layernorm.weight",
                    LayerSlot::Wq => "self_attn.q_proj.weight",
                    LayerSlot::Wk => "self_attn.k_proj.weight",
                    LayerSlot::Wv => "self_attn.v_proj.weight",
                    LayerSlot::Wo => "self_attn.o_proj.weight",
                    LayerSlot::Bq => "self_attn.q_proj.bias",
                    LayerSlot::Bk => "self_attn.k_proj.bias",
                    LayerSlot::Bv => "self_attn.v_proj.bias",
                    LayerSlot::FfnNorm => "post_attention_layernorm.weight",
                    LayerSlot::Gate => "mlp.gate_proj.weight",
                    LayerSlot::Up => "mlp.up_proj.weight",
                    LayerSlot::Down => "mlp.down_proj.weight",
                }
            ),
        }
    }

    fn load(&self, slot: Slot) -> Result<Option<Tensor>, LoadError> {
        let name = self.name(slot);
        let Some(&index) = self.file_of.get(&name) else {
            return Ok(None);
        };
        let (path, map) = &self.files[index];
        let parsed = SafeTensors::deserialize(map)
            .map_err(|e| LoadError::corrupt(format!("{}: {e}", path.display())))?;
        let view = parsed
            .tensor(&name)
            .map_err(|e| LoadError::corrupt(format!("{}: {e}", path.display())))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(LoadError::UnsupportedTensorType {
                    tensor: name,
                    ggml_type: format!("{other:?}"),
                })
            }
        };
        Ok(Some(Tensor::new(view.shape().to_vec(), data)))
    }
}
