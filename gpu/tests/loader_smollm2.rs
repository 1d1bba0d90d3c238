//! The real default model (SmolLM2-135M-Instruct Q4_1 GGUF). Skipped with a notice when the
//! file is absent (`tools/fetch-model.sh` installs it); set STATOR_REQUIRE_MODEL=1 to make
//! its absence a failure.

use std::path::PathBuf;
use std::time::Instant;

use stator_gpu::loader::{default_model_path, load_model, GgufFile};
use stator_gpu::weights::{ModelWeights, Tensor};

fn model_path() -> Option<PathBuf> {
    let path = default_model_path();
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("STATOR_REQUIRE_MODEL").is_some() {
        panic!("{} is missing; run tools/fetch-model.sh", path.display());
    }
    eprintln!(
        "SKIPPED: {} is missing; run tools/fetch-model.sh",
        path.display()
    );
    None
}

#[test]
fn gguf_metadata_of_the_real_file() {
    let Some(path) = model_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.tensors.len(), 272);
    let config = stator_gpu::loader::config_from_gguf(&file).unwrap();
    assert_eq!(config.architecture, "llama");
    assert_eq!(config.num_layers, 30);
    assert_eq!(config.hidden_size, 576);
    assert_eq!(config.intermediate_size, 1536);
    assert_eq!(
        (config.num_heads, config.num_kv_heads, config.head_dim),
        (9, 3, 64)
    );
    assert_eq!(config.rope_theta, 100_000.0);
    assert_eq!(config.vocab_size, 49152);
    assert_eq!(config.max_position_embeddings, 8192);
    assert!((config.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert!(config.tie_word_embeddings, "no output.weight: tied");
    assert!(!config.attention_bias && config.rope_scaling.is_none());
    let m = &file.metadata;
    assert_eq!(m.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(
        m.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    let count = |ty: &str| {
        file.tensors
            .iter()
            .filter(|t| t.ggml_type.name() == ty)
            .count()
    };
    assert_eq!((count("Q4_1"), count("F32"), count("Q8_0")), (210, 61, 1));
}

fn tensor<'a>(w: &'a ModelWeights, name: &str) -> &'a Tensor {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["token_embd", "weight"] => &w.embed,
        ["output_norm", "weight"] => &w.final_norm,
        ["blk", l, which, "weight"] => {
            let layer = &w.layers[l.parse::<usize>().unwrap()];
            match *which {
                "attn_q" => &layer.wq,
                "attn_k" => &layer.wk,
                "ffn_down" => &layer.w_down,
                other => panic!("no mapping for {other}"),
            }
        }
        _ => panic!("no mapping for {name}"),
    }
}

#[test]
fn real_model_loads_and_matches_python_spot_values() {
    let Some(path) = model_path() else { return };
    let started = Instant::now();
    let model = load_model(&path).unwrap();
    eprintln!(
        "load_model({}) took {:.2?}",
        path.display(),
        started.elapsed()
    );
    assert_eq!(model.config.num_layers, 30);
    assert_eq!(model.weights.layers.len(), 30);
    assert_eq!(model.weights.embed.shape, vec![49152, 576]);
    assert_eq!(model.weights.layers[0].wk.shape, vec![192, 576]);
    assert_eq!(model.weights.layers[29].w_gate.shape, vec![1536, 576]);
    assert!(model.weights.lm_head.is_none());
    assert_eq!(model.tokenizer.vocab_size(), 49152);

    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2_spot_values.json"),
    )
    .unwrap();
    let spots: serde_json::Value = serde_json::from_str(&text).unwrap();
    let spots = spots["spots"].as_array().unwrap();
    assert!(spots.len() >= 10);
    for spot in spots {
        let name = spot["tensor"].as_str().unwrap();
        let t = tensor(&model.weights, name);
        let cols = *t.shape.last().unwrap();
        let row = spot["row"].as_u64().map(|r| r as usize);
        let start = row.map(|r| r * cols).unwrap_or(0);
        for (i, want) in spot["values"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap() as f32;
            let got = t.data[start + i];
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name} row {row:?} col {i}: got {got}, python says {want}"
            );
        }
    }
}
