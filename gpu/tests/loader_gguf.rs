//! GGUF parsing, dequantization against the Python `gguf` reference, corrupt-file handling,
//! and loading synthetic Llama/Qwen2 models end to end.

use std::path::{Path, PathBuf};

use stator_gpu::loader::{load_model, GgmlType, GgufBuilder, GgufFile, LoadError, MetaValue};
use stator_gpu::weights::Tensor;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

const QUANT_TYPES: [&str; 12] = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
];

#[test]
fn every_quant_type_matches_python_gguf_dequantize() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    for ty in QUANT_TYPES {
        let got = file.dequantize(&format!("q.{ty}")).unwrap().unwrap();
        let want = file.dequantize(&format!("expected.{ty}")).unwrap().unwrap();
        assert_eq!(got.shape, want.shape, "{ty}");
        assert_eq!(got.shape[0], 3, "{ty}: rows");
        let spread = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.0, "{ty}: reference is all zeros");
        for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{ty} element {i}: got {g}, python gguf says {w}"
            );
        }
    }
}

#[test]
fn metadata_of_every_value_type_is_read() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let m = &file.metadata;
    assert_eq!(file.version, 3);
    assert_eq!(m.get("test.u8"), Some(&MetaValue::U8(200)));
    assert_eq!(m.get("test.i8"), Some(&MetaValue::I8(-100)));
    assert_eq!(m.get("test.u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(m.get("test.i16"), Some(&MetaValue::I16(-30000)));
    assert_eq!(m.get("test.u32"), Some(&MetaValue::U32(4_000_000_000)));
    assert_eq!(m.get("test.i32"), Some(&MetaValue::I32(-2_000_000_000)));
    assert_eq!(m.get("test.f32"), Some(&MetaValue::F32(1.5)));
    assert_eq!(m.get("test.u64"), Some(&MetaValue::U64(1 << 40)));
    assert_eq!(m.get("test.i64"), Some(&MetaValue::I64(-(1 << 40))));
    assert_eq!(m.get("test.f64"), Some(&MetaValue::F64(-2.25)));
    assert_eq!(m.get_bool("test.bool"), Some(true));
    assert_eq!(m.get_str("test.string"), Some("héllo ✓"));
    assert_eq!(m.get_i64_array("test.int_array"), Some(vec![1, 2, 3]));
    assert_eq!(m.get_str_array("test.str_array"), Some(vec!["a", "", "ü"]));
    let nested = m.get("test.nested").and_then(MetaValue::as_array).unwrap();
    assert_eq!(nested.len(), 2);
    assert_eq!(m.get_str("general.architecture"), Some("llama"));
}

#[test]
fn truncated_file_is_an_error_at_every_cut() {
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    let data_end = full.tensors.iter().map(|t| t.start + t.len).max().unwrap();
    for cut in 0..bytes.len() {
        // Inside the header every byte matters; in the data, sample.
        if cut > 2048 && cut % 97 != 0 {
            continue;
        }
        let result = GgufFile::from_bytes(bytes[..cut].to_vec());
        if cut < data_end {
            let err = result.expect_err(&format!("cut at {cut} parsed"));
            assert!(
                matches!(err, LoadError::Truncated(_) | LoadError::NotGguf),
                "cut at {cut}: {err}"
            );
        }
    }
}

/// A one-key file: magic, version, counts, then key "k" (string) = "v".
fn one_key_file() -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.metadata("k", MetaValue::String("v".into()));
    b.to_bytes()
}

fn patch(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

#[test]
fn corrupt_headers_give_clear_errors_not_panics_or_huge_allocations() {
    let ok = one_key_file();
    assert!(GgufFile::from_bytes(ok.clone()).is_ok());

    let mut bad = ok.clone();
    patch(&mut bad, 0, b"GGML");
    assert!(matches!(GgufFile::from_bytes(bad), Err(LoadError::NotGguf)));

    let mut bad = ok.clone();
    patch(&mut bad, 4, &1u32.to_le_bytes());
    let err = GgufFile::from_bytes(bad).unwrap_err().to_string();
    assert!(err.contains("version 1"), "{err}");

    for (at, what) in [(8, "tensor count"), (16, "metadata count")] {
        let mut bad = ok.clone();
        patch(&mut bad, at, &u64::MAX.to_le_bytes());
        let err = GgufFile::from_bytes(bad).unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    }

    // Key length (offset 24) and value string length (offset 37) claiming terabytes.
    for at in [24, 37] {
        let mut bad = ok.clone();
        patch(&mut bad, at, &(1u64 << 40).to_le_bytes());
        let err = GgufFile::from_bytes(bad).unwrap_err();
        assert!(matches!(err, LoadError::Truncated(_)), "{err}");
    }

    // Value type (offset 33) that does not exist.
    let mut bad = ok.clone();
    patch(&mut bad, 33, &99u32.to_le_bytes());
    let err = GgufFile::from_bytes(bad).unwrap_err().to_string();
    assert!(err.contains("unknown metadata value type 99"), "{err}");

    // Non-UTF-8 key.
    let mut bad = ok.clone();
    bad[32] = 0xFF;
    assert!(GgufFile::from_bytes(bad).is_err());
}

#[test]
fn huge_array_length_is_rejected_before_allocating() {
    let mut b = GgufBuilder::new();
    b.metadata("a", MetaValue::Array(vec![MetaValue::U64(1)]));
    let mut bytes = b.to_bytes();
    // key len 8 + "a" → type at 33, element type at 37, length at 41.
    patch(&mut bytes, 41, &(u64::MAX / 2).to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("array length"), "{err}");
}

fn one_tensor_file(ty: GgmlType, dims_shape: &[usize], bytes: Vec<u8>) -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.tensor_raw("t", dims_shape, ty, bytes);
    b.to_bytes()
}

#[test]
fn bad_tensor_infos_are_rejected() {
    // Data running past the end of the file.
    let mut bytes = one_tensor_file(GgmlType::F32, &[4], vec![0; 16]);
    bytes.truncate(bytes.len() - 4);
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("tensor t"), "{err}");

    // Unknown ggml type id: tensor info layout after the 0 metadata entries is
    // name len (24..32), "t" (32), n_dims (33..37), dim (37..45), type (45..49), offset.
    let mut bytes = one_tensor_file(GgmlType::F32, &[4], vec![0; 16]);
    patch(&mut bytes, 45, &77u32.to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(
        err.contains("unknown type id 77") && err.contains("tensor t"),
        "{err}"
    );

    // Dimensions whose product overflows.
    let mut bytes = one_tensor_file(GgmlType::F32, &[4], vec![0; 16]);
    patch(&mut bytes, 37, &u64::MAX.to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("absurd dimensions"), "{err}");

    // A row that is not a whole number of quantization blocks.
    let bytes = one_tensor_file(GgmlType::Q4_0, &[2, 16], vec![0; 18]);
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("block size"), "{err}");

    // Misaligned data offset (offset field at 49).
    let mut bytes = one_tensor_file(GgmlType::F32, &[4], vec![0; 16]);
    patch(&mut bytes, 49, &3u64.to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("aligned"), "{err}");
}

#[test]
fn builder_output_round_trips_through_the_parser() {
    let mut b = GgufBuilder::new();
    b.metadata("general.alignment", MetaValue::U32(64))
        .metadata("x", MetaValue::F64(0.5))
        .tensor_f32("a", &[2, 3], &[1., 2., 3., 4., 5., 6.])
        .tensor_f32("b", &[1], &[7.]);
    let file = GgufFile::from_bytes(b.to_bytes()).unwrap();
    assert!(file.tensors.iter().all(|t| t.start % 64 == 0));
    let a = file.dequantize("a").unwrap().unwrap();
    assert_eq!(a, Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]));
    assert_eq!(file.dequantize("b").unwrap().unwrap().data, vec![7.]);
    assert!(file.dequantize("missing").unwrap().is_none());
}

// ---- synthetic models -------------------------------------------------------------------

const SPECIALS: [&str; 3] = ["<s>", "</s>", "<|im_end|>"];
const VOCAB: usize = SPECIALS.len() + 256;
const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const FFN: usize = 12;
const LAYERS: usize = 2;

fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((seed * 7919 + i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// llama.cpp's converter permutation (HF rotate_half rows → interleaved pairs).
fn permute_for_gguf(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let dst = h * hd + 2 * j + i;
                let src = h * hd + i * hd / 2 + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

struct Tiny {
    arch: &'static str,
    tied: bool,
    skip: Option<&'static str>,
    wrong_shape: Option<&'static str>,
    stored_as_i64: Option<&'static str>,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            arch: "llama",
            tied: true,
            skip: None,
            wrong_shape: None,
            stored_as_i64: None,
        }
    }
}

/// Writes a tiny model; returns the file and the HF-order wq/wk of layer 0.
fn write_tiny(dir: &Path, spec: &Tiny) -> (PathBuf, Vec<f32>, Vec<f32>) {
    let a = spec.arch;
    let mut b = GgufBuilder::new();
    b.metadata("general.architecture", MetaValue::String(a.into()))
        .metadata("general.name", MetaValue::String("tiny".into()))
        .metadata(&format!("{a}.block_count"), MetaValue::U32(LAYERS as u32))
        .metadata(&format!("{a}.context_length"), MetaValue::U32(256))
        .metadata(
            &format!("{a}.embedding_length"),
            MetaValue::U32(HIDDEN as u32),
        )
        .metadata(
            &format!("{a}.feed_forward_length"),
            MetaValue::U32(FFN as u32),
        )
        .metadata(
            &format!("{a}.attention.head_count"),
            MetaValue::U32(HEADS as u32),
        )
        .metadata(
            &format!("{a}.attention.head_count_kv"),
            MetaValue::U32(KV_HEADS as u32),
        )
        .metadata(&format!("{a}.rope.freq_base"), MetaValue::F32(50_000.0))
        .metadata(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-6),
        )
        .byte_level_vocab(&SPECIALS);
    let permute = a == "llama";
    let mut seed = 0;
    let mut hf_q0 = Vec::new();
    let mut hf_k0 = Vec::new();
    let mut add =
        |b: &mut GgufBuilder, name: String, shape: Vec<usize>, rot_heads: Option<usize>| {
            seed += 1;
            if spec.skip == Some(name.as_str()) {
                return;
            }
            let mut shape = shape;
            if spec.wrong_shape == Some(name.as_str()) {
                shape[0] += 1;
            }
            let n: usize = shape.iter().product();
            let hf = values(seed, n);
            if name == "blk.0.attn_q.weight" {
                hf_q0 = hf.clone();
            }
            if name == "blk.0.attn_k.weight" {
                hf_k0 = hf.clone();
            }
            let stored = match rot_heads {
                Some(h) if permute => permute_for_gguf(&hf, shape[0], n / shape[0], h),
                _ => hf,
            };
            if spec.stored_as_i64 == Some(name.as_str()) {
                b.tensor_raw(&name, &shape, GgmlType::I64, vec![0; n * 8]);
            } else {
                b.tensor_f32(&name, &shape, &stored);
            }
        };
    add(
        &mut b,
        "token_embd.weight".into(),
        vec![VOCAB, HIDDEN],
        None,
    );
    add(&mut b, "output_norm.weight".into(), vec![HIDDEN], None);
    if !spec.tied {
        add(&mut b, "output.weight".into(), vec![VOCAB, HIDDEN], None);
    }
    for l in 0..LAYERS {
        let q = HEADS * HEAD_DIM;
        let kv = KV_HEADS * HEAD_DIM;
        add(
            &mut b,
            format!("blk.{l}.attn_norm.weight"),
            vec![HIDDEN],
            None,
        );
        add(
            &mut b,
            format!("blk.{l}.attn_q.weight"),
            vec![q, HIDDEN],
            Some(HEADS),
        );
        add(
            &mut b,
            format!("blk.{l}.attn_k.weight"),
            vec![kv, HIDDEN],
            Some(KV_HEADS),
        );
        add(
            &mut b,
            format!("blk.{l}.attn_v.weight"),
            vec![kv, HIDDEN],
            None,
        );
        add(
            &mut b,
            format!("blk.{l}.attn_output.weight"),
            vec![HIDDEN, q],
            None,
        );
        if a == "qwen2" {
            add(&mut b, format!("blk.{l}.attn_q.bias"), vec![q], None);
            add(&mut b, format!("blk.{l}.attn_k.bias"), vec![kv], None);
            add(&mut b, format!("blk.{l}.attn_v.bias"), vec![kv], None);
        }
        add(
            &mut b,
            format!("blk.{l}.ffn_norm.weight"),
            vec![HIDDEN],
            None,
        );
        add(
            &mut b,
            format!("blk.{l}.ffn_gate.weight"),
            vec![FFN, HIDDEN],
            None,
        );
        add(
            &mut b,
            format!("blk.{l}.ffn_up.weight"),
            vec![FFN, HIDDEN],
            None,
        );
        add(
            &mut b,
            format!("blk.{l}.ffn_down.weight"),
            vec![HIDDEN, FFN],
            None,
        );
    }
    let path = dir.join(format!("{a}.gguf"));
    std::fs::write(&path, b.to_bytes()).unwrap();
    (path, hf_q0, hf_k0)
}

#[test]
fn tiny_llama_loads_with_hf_rotary_order_and_tied_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let (path, hf_q0, hf_k0) = write_tiny(dir.path(), &Tiny::default());
    let model = load_model(&path).unwrap();
    let c = &model.config;
    assert_eq!(model.name, "tiny");
    assert_eq!(c.architecture, "llama");
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size),
        (VOCAB, HIDDEN, FFN)
    );
    assert_eq!(
        (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
        (LAYERS, HEADS, KV_HEADS, HEAD_DIM)
    );
    assert_eq!(
        (c.rope_theta, c.rms_norm_eps, c.max_position_embeddings),
        (50_000.0, 1e-6, 256)
    );
    assert!(c.tie_word_embeddings && !c.attention_bias && c.rope_scaling.is_none());
    let w = &model.weights;
    assert!(w.lm_head.is_none());
    assert_eq!(w.layers.len(), LAYERS);
    assert_eq!(
        w.layers[0].wq.data, hf_q0,
        "Q rows must be back in Hugging Face order"
    );
    assert_eq!(
        w.layers[0].wk.data, hf_k0,
        "K rows must be back in Hugging Face order"
    );
    assert_eq!(w.layers[1].w_down.shape, vec![HIDDEN, FFN]);
    assert_eq!(model.tokenizer.vocab_size(), VOCAB);
    assert_eq!(model.tokenizer.bos_id(), Some(0));
}

#[test]
fn tiny_qwen2_keeps_row_order_and_loads_biases_and_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Tiny {
        arch: "qwen2",
        tied: false,
        ..Tiny::default()
    };
    let (path, hf_q0, _) = write_tiny(dir.path(), &spec);
    let model = load_model(&path).unwrap();
    assert!(model.config.attention_bias && !model.config.tie_word_embeddings);
    assert_eq!(model.weights.layers[0].wq.data, hf_q0);
    assert_eq!(
        model.weights.layers[1].bk.as_ref().unwrap().shape,
        vec![KV_HEADS * HEAD_DIM]
    );
    assert_eq!(
        model.weights.lm_head.as_ref().unwrap().shape,
        vec![VOCAB, HIDDEN]
    );
}

fn load_err(spec: Tiny) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = write_tiny(dir.path(), &spec);
    let err = load_model(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "error should name the file: {err}"
    );
    err
}

#[test]
fn user_mistakes_get_errors_that_name_the_problem() {
    let err = load_err(Tiny {
        skip: Some("blk.1.ffn_up.weight"),
        ..Tiny::default()
    });
    assert!(err.contains("missing tensor blk.1.ffn_up.weight"), "{err}");

    let err = load_err(Tiny {
        wrong_shape: Some("blk.0.attn_v.weight"),
        ..Tiny::default()
    });
    assert!(
        err.contains("blk.0.attn_v.weight") && err.contains("shape"),
        "{err}"
    );

    let err = load_err(Tiny {
        arch: "gemma",
        ..Tiny::default()
    });
    assert!(err.contains("unsupported architecture \"gemma\""), "{err}");

    let err = load_err(Tiny {
        stored_as_i64: Some("blk.0.ffn_gate.weight"),
        ..Tiny::default()
    });
    assert!(
        err.contains("unsupported tensor type I64 in tensor blk.0.ffn_gate.weight"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "just some text, not a model").unwrap();
    let err = load_model(&text).unwrap_err().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");

    let missing = dir.path().join("nope.gguf");
    let err = load_model(&missing).unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("nope.gguf"),
        "{err}"
    );
}
