//! Model weights in host memory, f32, in the layout every backend starts from.
//!
//! Matrices are row-major `[out_features, in_features]` (the PyTorch / Hugging Face layout), so
//! `y = W x` reads row `i` of `W` for output `i`. Backends convert to their own format at load
//! (the CUDA backend to bf16 on device).

/// A dense f32 tensor with its shape (outermost dimension first).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape and data disagree"
        );
        Self { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `[hidden]`
    pub attn_norm: Tensor,
    /// `[num_heads * head_dim, hidden]`
    pub wq: Tensor,
    /// `[num_kv_heads * head_dim, hidden]`
    pub wk: Tensor,
    /// `[num_kv_heads * head_dim, hidden]`
    pub wv: Tensor,
    /// `[hidden, num_heads * head_dim]`
    pub wo: Tensor,
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    /// `[hidden]`
    pub ffn_norm: Tensor,
    /// `[intermediate, hidden]`
    pub w_gate: Tensor,
    /// `[intermediate, hidden]`
    pub w_up: Tensor,
    /// `[hidden, intermediate]`
    pub w_down: Tensor,
}

/// All weights of a Llama-family model.
///
/// Q and K projection rows are in the Hugging Face order (rotary embedding applied to the two
/// halves of each head, "rotate_half"); GGUF loaders undo llama.cpp's interleaving permutation.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// `[vocab, hidden]`
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    /// `[hidden]`
    pub final_norm: Tensor,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
}

impl ModelWeights {
    /// The output projection, whether tied or not.
    pub fn output_matrix(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}
