//! The real SmolLM2 tokenizer built from the GGUF, against Hugging Face `tokenizers`
//! (fixtures from tests/data/make_tokenizer_fixtures.py) and the model's chat template
//! (expected strings rendered by Python jinja2 with transformers' settings). Skipped with a
//! notice when the model is absent; STATOR_REQUIRE_MODEL=1 makes that a failure.

use std::path::PathBuf;
use std::sync::Arc;

use stator_gpu::loader::{default_model_path, GgufFile};
use stator_gpu::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};

fn smollm2() -> Option<Tokenizer> {
    let path = default_model_path();
    if !path.exists() {
        if std::env::var_os("STATOR_REQUIRE_MODEL").is_some() {
            panic!("{} is missing; run tools/fetch-model.sh", path.display());
        }
        eprintln!(
            "SKIPPED: {} is missing; run tools/fetch-model.sh",
            path.display()
        );
        return None;
    }
    let file = GgufFile::open(&path).unwrap();
    Some(Tokenizer::from_gguf(&file.metadata).unwrap())
}

fn fixture_cases() -> Vec<(String, Vec<u32>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer_smollm2.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

#[test]
fn encodings_equal_hugging_face_tokenizers() {
    let Some(t) = smollm2() else { return };
    let cases = fixture_cases();
    assert!(cases.len() >= 20);
    for (text, want) in &cases {
        assert_eq!(&t.encode(text, true).unwrap(), want, "text {text:?}");
        assert_eq!(&t.decode(want, false).unwrap(), text);
    }
}

#[test]
fn special_ids_and_flags() {
    let Some(t) = smollm2() else { return };
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1));
    assert!(!t.add_bos());
    assert!(t.eos_ids().contains(&2), "{:?}", t.eos_ids());
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(t.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert_eq!(t.encode("<|im_start|>", true).unwrap(), vec![1]);
}

#[test]
fn chat_template_renders_like_transformers() {
    let Some(t) = smollm2() else { return };
    assert!(t.chat_template().unwrap().contains("<|im_start|>"));
    let conversation = [
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "2+2 = 4."),
    ];
    assert_eq!(
        t.apply_chat_template(&conversation, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n2+2 = 4.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let with_system = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    assert_eq!(
        t.apply_chat_template(&with_system, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn stream_decoding_real_tokens_never_breaks_characters() {
    let Some(t) = smollm2() else { return };
    let t = Arc::new(t);
    for (text, _) in fixture_cases() {
        let ids = t.encode(&text, false).unwrap();
        let mut d = StreamDecoder::new(t.clone(), false);
        let mut deltas = Vec::new();
        for id in &ids {
            deltas.push(d.push(*id).unwrap());
        }
        deltas.push(d.finish().unwrap());
        assert!(
            deltas.iter().all(|d| !d.contains('\u{FFFD}')),
            "{text:?}: {deltas:?}"
        );
        assert_eq!(deltas.concat(), text);
    }
}
