//! Format-independent assembly of [`ModelWeights`]: every format names its tensors, the
//! shapes are checked here against the [`ModelConfig`], and tensors load in parallel.

use std::collections::HashMap;

use rayon::prelude::*;

use super::LoadError;
use crate::config::ModelConfig;
use crate::weights::{LayerWeights, ModelWeights, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Embed,
    FinalNorm,
    LmHead,
    Layer(usize, LayerSlot),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LayerSlot {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    Bq,
    Bk,
    Bv,
    FfnNorm,
    Gate,
    Up,
    Down,
}

const LAYER_SLOTS: [LayerSlot; 12] = [
    LayerSlot::AttnNorm,
    LayerSlot::Wq,
    LayerSlot::Wk,
    LayerSlot::Wv,
    LayerSlot::Wo,
    LayerSlot::Bq,
    LayerSlot::Bk,
    LayerSlot::Bv,
    LayerSlot::FfnNorm,
    LayerSlot::Gate,
    LayerSlot::Up,
    LayerSlot::Down,
];

/// A model file format: names tensors and loads them as f32 in Hugging Face layout.
pub(crate) trait TensorSource: Sync {
    /// The tensor's name in this format, for messages.
    fn name(&self, slot: Slot) -> String;
    /// `Ok(None)` when the file has no such tensor.
    fn load(&self, slot: Slot) -> Result<Option<Tensor>, LoadError>;
}

fn expected_shape(config: &ModelConfig, slot: Slot) -> Vec<usize> {
    let h = config.hidden_size;
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let ffn = config.intermediate_size;
    match slot {
        Slot::Embed | Slot::LmHead => vec![config.vocab_size, h],
        Slot::FinalNorm => vec![h],
        Slot::Layer(_, s) => match s {
            LayerSlot::AttnNorm | LayerSlot::FfnNorm => vec![h],
            LayerSlot::Wq => vec![q, h],
            LayerSlot::Wk | LayerSlot::Wv => vec![kv, h],
            LayerSlot::Wo => vec![h, q],
            LayerSlot::Bq => vec![q],
            LayerSlot::Bk | LayerSlot::Bv => vec![kv],
            LayerSlot::Gate | LayerSlot::Up => vec![ffn, h],
            LayerSlot::Down => vec![h, ffn],
        },
    }
}

fn is_bias(slot: Slot) -> bool {
    matches!(
        slot,
        Slot::Layer(_, LayerSlot::Bq | LayerSlot::Bk | LayerSlot::Bv)
    )
}

/// Loads every tensor the config calls for, checking shapes.
pub(crate) fn assemble(
    config: &ModelConfig,
    source: &dyn TensorSource,
) -> Result<ModelWeights, LoadError> {
    let mut slots = vec![Slot::Embed, Slot::FinalNorm];
    if !config.tie_word_embeddings {
        slots.push(Slot::LmHead);
    }
    for layer in 0..config.num_layers {
        for s in LAYER_SLOTS {
            let slot = Slot::Layer(layer, s);
            if config.attention_bias || !is_bias(slot) {
                slots.push(slot);
            }
        }
    }
    let mut loaded: HashMap<Slot, Tensor> = slots
        .par_iter()
        .map(|&slot| {
            let name = source.name(slot);
            let tensor = source
                .load(slot)?
                .ok_or_else(|| LoadError::MissingTensor(name.clone()))?;
            let expected = expected_shape(config, slot);
            // A 2-D [1, n] vector is the same data as [n]; some exporters write norms that way.
            let found = tensor.shape.clone();
            let squeezed: Vec<usize> = found.iter().copied().filter(|&d| d != 1).collect();
            if found != expected && !(expected.len() == 1 && squeezed == expected) {
                return Err(LoadError::ShapeMismatch {
                    tensor: name,
                    expected,
                    found,
                });
            }
            Ok((slot, Tensor::new(expected, tensor.data)))
        })
        .collect::<Result<_, LoadError>>()?;

    let mut layers = Vec::with_capacity(config.num_layers);
    for l in 0..config.num_layers {
        let slot = |s: LayerSlot| Slot::Layer(l, s);
        layers.push(LayerWeights {
            attn_norm: take_required(&mut loaded, slot(LayerSlot::AttnNorm), source)?,
            wq: take_required(&mut loaded, slot(LayerSlot::Wq), source)?,
            wk: take_required(&mut loaded, slot(LayerSlot::Wk), source)?,
            wv: take_required(&mut loaded, slot(LayerSlot::Wv), source)?,
            wo: take_required(&mut loaded, slot(LayerSlot::Wo), source)?,
            bq: loaded.remove(&slot(LayerSlot::Bq)),
            bk: loaded.remove(&slot(LayerSlot::Bk)),
            bv: loaded.remove(&slot(LayerSlot::Bv)),
            ffn_norm: take_required(&mut loaded, slot(LayerSlot::FfnNorm), source)?,
            w_gate: take_required(&mut loaded, slot(LayerSlot::Gate), source)?,
            w_up: take_required(&mut loaded, slot(LayerSlot::Up), source)?,
            w_down: take_required(&mut loaded, slot(LayerSlot::Down), source)?,
        });
    }
    Ok(ModelWeights {
        embed: take_required(&mut loaded, Slot::Embed, source)?,
        layers,
        final_norm: take_required(&mut loaded, Slot::FinalNorm, source)?,
        lm_head: loaded.remove(&Slot::LmHead),
    })
}

fn take_required(
    loaded: &mut HashMap<Slot, Tensor>,
    slot: Slot,
    source: &dyn TensorSource,
) -> Result<Tensor, LoadError> {
    loaded
        .remove(&slot)
        .ok_or_else(|| LoadError::MissingTensor(source.name(slot)))
}

/// Reorders the rows of a Q or K projection (or bias) from llama.cpp's interleaved rotary
/// layout (pairs `(2j, 2j+1)` rotate together) back to Hugging Face's `rotate_half` layout
/// (rows `j` and `j + head_dim/2` rotate together).
pub(crate) fn unpermute_rotary_rows(t: &Tensor, num_heads: usize) -> Result<Tensor, LoadError> {
    let rows = t.shape.first().copied().unwrap_or(0);
    let cols = t.numel().checked_div(rows).unwrap_or(0);
    if num_heads == 0 || rows % num_heads != 0 || (rows / num_heads) & 1 == 1 {
        return Err(LoadError::Unsupported(format!(
            "cannot undo the rotary permutation: {rows} rows over {num_heads} heads"
        )));
    }
    let head_dim = rows / num_heads;
    let half = head_dim / 2;
    let mut data = vec![0f32; t.numel()];
    for h in 0..num_heads {
        for i in 0..2 {
            for j in 0..half {
                let dst = h * head_dim + i * half + j;
                let src = h * head_dim + 2 * j + i;
                data[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(Tensor::new(t.shape.clone(), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter: `w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape)`.
    fn permute_like_llama_cpp(t: &Tensor, n_head: usize) -> Tensor {
        let rows = t.shape[0];
        let cols = t.numel() / rows;
        let hd = rows / n_head;
        let half = hd / 2;
        let mut out = vec![0f32; t.numel()];
        // After the swap, index [h][j][i] holds what was at [h][i][j].
        for h in 0..n_head {
            for j in 0..half {
                for i in 0..2 {
                    let dst = h * hd + j * 2 + i;
                    let src = h * hd + i * half + j;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
                }
            }
        }
        Tensor::new(t.shape.clone(), out)
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (heads, hd, cols) = (3, 8, 5);
        let data: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let hf = Tensor::new(vec![heads * hd, cols], data);
        let gguf = permute_like_llama_cpp(&hf, heads);
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rotary_rows(&gguf, heads).unwrap(), hf);
        let bias = Tensor::new(
            vec![heads * hd],
            (0..heads * hd).map(|x| x as f32).collect(),
        );
        let permuted = permute_like_llama_cpp(&bias, heads);
        assert_eq!(unpermute_rotary_rows(&permuted, heads).unwrap(), bias);
    }

    #[test]
    fn unpermute_rejects_odd_head_dim() {
        let t = Tensor::new(vec![6, 1], vec![0.0; 6]);
        assert!(unpermute_rotary_rows(&t, 2).is_err());
    }
}
