//! Hugging Face directories: config.json + sharded safetensors (f32/f16/bf16) +
//! tokenizer.json/tokenizer_config.json/generation_config.json.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use stator_gpu::loader::gguf_write::gpt2_byte_alphabet;
use stator_gpu::loader::load_model;
use stator_gpu::tokenizer::ChatMessage;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

const HIDDEN: usize = 8;
const FFN: usize = 12;
const LAYERS: usize = 2;
const VOCAB: usize = 258;

fn config_json(tied: bool) -> String {
    format!(
        r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":{HIDDEN},
            "intermediate_size":{FFN},"num_hidden_layers":{LAYERS},"num_attention_heads":2,
            "num_key_value_heads":1,"vocab_size":{VOCAB},"rms_norm_eps":1e-5,
            "rope_theta":10000.0,"max_position_embeddings":512,"tie_word_embeddings":{tied}}}"#
    )
}

/// Byte-level BPE: "<s>" = 0, "</s>" = 1, then the 256 bytes; BOS added by the template.
fn write_tokenizer(dir: &Path) {
    let mut vocab = Vocab::default();
    vocab.insert("<s>".into(), 0);
    vocab.insert("</s>".into(), 1);
    for (i, c) in gpt2_byte_alphabet().into_iter().enumerate() {
        vocab.insert(c.to_string(), i as u32 + 2);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    t.add_special_tokens(&[
        AddedToken::from("<s>", true),
        AddedToken::from("</s>", true),
    ]);
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .unwrap()
        .special_tokens(vec![("<s>".to_string(), 0)])
        .build()
        .unwrap();
    t.with_post_processor(Some(post));
    t.save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token":"<s>","eos_token":{"content":"</s>","special":true},
            "chat_template":[{"name":"tool_use","template":"wrong"},
                             {"name":"default","template":"{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id":[1, 7]}"#,
    )
    .unwrap();
}

/// Values exactly representable in bf16 and f16, so every dtype round-trips exactly.
fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((seed * 31 + i * 7) % 64) as f32 / 16.0 - 2.0)
        .collect()
}

fn encode(dtype: Dtype, data: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => data
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => data
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::I32 => data
            .iter()
            .flat_map(|v| (*v as i32).to_le_bytes())
            .collect(),
        other => panic!("{other:?}"),
    }
}

struct Entry {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
    dtype: Dtype,
}

fn entries(tied: bool, odd_dtype: Option<(&str, Dtype)>) -> Vec<Entry> {
    let mut specs: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    if !tied {
        specs.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN]));
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.self_attn.q_proj.weight"), vec![8, HIDDEN]),
            (format!("{p}.self_attn.k_proj.weight"), vec![4, HIDDEN]),
            (format!("{p}.self_attn.v_proj.weight"), vec![4, HIDDEN]),
            (format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, 8]),
            (format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]),
            (format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]),
            (format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]),
        ]);
    }
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            let dtype = match odd_dtype {
                Some((odd, dt)) if odd == name => dt,
                _ => dtypes[i % 3],
            };
            Entry {
                values: values(i, n),
                name,
                shape,
                dtype,
            }
        })
        .collect()
}

/// Writes the weights over two shards plus the index.
fn write_shards(dir: &Path, entries: &[Entry]) {
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in entries.chunks(entries.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let bytes: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = part
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    encode(e.dtype, &e.values),
                    e.dtype,
                    e.shape.clone(),
                )
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, b, d, s)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, &None, &dir.join(&file)).unwrap();
        for e in part {
            weight_map.insert(e.name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn write_model(dir: &Path, tied: bool, odd_dtype: Option<(&str, Dtype)>) -> Vec<Entry> {
    std::fs::write(dir.join("config.json"), config_json(tied)).unwrap();
    write_tokenizer(dir);
    let e = entries(tied, odd_dtype);
    write_shards(dir, &e);
    e
}

#[test]
fn sharded_mixed_dtype_directory_loads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_model(dir.path(), false, None);
    let model = load_model(dir.path()).unwrap();
    let c = &model.config;
    assert_eq!(
        (c.hidden_size, c.num_layers, c.num_kv_heads, c.head_dim),
        (HIDDEN, LAYERS, 1, 4)
    );
    assert!(!c.tie_word_embeddings);
    let by_name: HashMap<&str, &Entry> = written.iter().map(|e| (e.name.as_str(), e)).collect();
    let w = &model.weights;
    let check = |name: &str, got: &stator_gpu::weights::Tensor| {
        let e = by_name[name];
        assert_eq!(got.shape, e.shape, "{name}");
        assert_eq!(got.data, e.values, "{name} ({:?})", e.dtype);
    };
    check("model.embed_tokens.weight", &w.embed);
    check("lm_head.weight", w.lm_head.as_ref().unwrap());
    check("model.norm.weight", &w.final_norm);
    check("model.layers.1.self_attn.q_proj.weight", &w.layers[1].wq);
    check("model.layers.0.self_attn.k_proj.weight", &w.layers[0].wk);
    check("model.layers.1.mlp.down_proj.weight", &w.layers[1].w_down);
    check(
        "model.layers.0.post_attention_layernorm.weight",
        &w.layers[0].ffn_norm,
    );
}

#[test]
fn tokenizer_files_supply_bos_eos_and_the_default_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), true, None);
    let model = load_model(dir.path()).unwrap();
    let t = &model.tokenizer;
    assert!(model.weights.lm_head.is_none());
    assert_eq!(t.bos_id(), Some(0));
    assert!(t.add_bos());
    assert_eq!(t.eos_ids(), &[1, 7]);
    assert_eq!(
        t.encode("hi", true).unwrap(),
        vec![0, 2 + b'h' as u32, 2 + b'i' as u32]
    );
    assert_eq!(
        t.decode(&t.encode("héllo 🙂", false).unwrap(), false)
            .unwrap(),
        "héllo 🙂"
    );
    let chat = t
        .apply_chat_template(
            &[
                ChatMessage::new("user", "Hi"),
                ChatMessage::new("assistant", "Yo"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(chat, "<s>[user]Hi</s>[assistant]Yo</s>");
}

#[test]
fn directory_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_model(
        dir.path(),
        true,
        Some(("model.layers.0.mlp.up_proj.weight", Dtype::I32)),
    );
    let err = load_model(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.0.mlp.up_proj.weight") && err.contains("I32"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_model(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_model(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("does not exist"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), true, None);
    let config = config_json(true).replace("\"intermediate_size\":12", "\"intermediate_size\":13");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = load_model(dir.path()).unwrap_err().to_string();
    assert!(err.contains(".mlp.") && err.contains("shape"), "{err}");
}
