//! Tokenizer behaviour on a synthetic byte-level vocabulary (always runs, no model needed):
//! round trips, special tokens, BOS, errors, streaming detokenization, chat templates.

use std::sync::Arc;

use stator_gpu::loader::{GgufBuilder, GgufFile, MetaValue};
use stator_gpu::tokenizer::{ChatMessage, StopMatcher, StreamDecoder, Tokenizer};

const SPECIALS: [&str; 4] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"];
const FIRST_BYTE: u32 = SPECIALS.len() as u32;

fn tokenizer_with(extra: &[(&str, MetaValue)]) -> Result<Tokenizer, String> {
    let mut b = GgufBuilder::new();
    b.byte_level_vocab(&SPECIALS);
    for (k, v) in extra {
        b.metadata(k, v.clone());
    }
    let file = GgufFile::from_bytes(b.to_bytes()).map_err(|e| e.to_string())?;
    Tokenizer::from_gguf(&file.metadata).map_err(|e| e.to_string())
}

fn tokenizer() -> Tokenizer {
    tokenizer_with(&[]).unwrap()
}

const VARIED: [&str; 12] = [
    "Hello, world!",
    "",
    "   spaces   everywhere   ",
    "tabs\tnew\nlines\r\n\n",
    "naïve café — “quotes” …",
    "日本語 中文 한국어",
    "emoji 🙂👍🏽 family 👨‍👩‍👧‍👦",
    "code: fn f(x: i32) -> i32 { x * 2 } // done",
    "numbers 1234567890 3.14 -42 1e9",
    "\u{0} control \u{1b}[0m bytes \u{7f}",
    "<|im_start|>user\nhi<|im_end|>",
    "math ∑ x² ≤ ∞",
];

#[test]
fn decode_of_encode_is_identity_for_varied_text() {
    let t = tokenizer();
    for s in VARIED {
        let ids = t.encode(s, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s, "ids {ids:?}");
    }
}

#[test]
fn plain_bytes_map_to_byte_tokens_and_special_tokens_in_text_are_parsed() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), SPECIALS.len() + 256);
    let a = FIRST_BYTE + b'a' as u32;
    assert_eq!(t.encode("a", false).unwrap(), vec![a]);
    assert_eq!(t.encode("<|im_end|>a<tool>", false).unwrap(), vec![2, a, 3]);
    // Something that only looks like a special token stays text.
    assert_eq!(
        t.encode("<|im_endx", false).unwrap().len(),
        "<|im_endx".len()
    );
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.id_to_token(a).as_deref(), Some("a"));
    // GPT-2's byte alphabet writes a space as "Ġ".
    assert_eq!(
        t.id_to_token(FIRST_BYTE + b' ' as u32).as_deref(),
        Some("Ġ")
    );
    assert_eq!(t.decode(&[1, a, 2], true).unwrap(), "a");
    assert_eq!(
        t.decode(&[1, a, 2], false).unwrap(),
        "<|im_start|>a<|im_end|>"
    );
}

#[test]
fn bos_is_added_only_when_the_file_asks_and_the_caller_wants_specials() {
    let plain = tokenizer();
    assert!(!plain.add_bos());
    assert_eq!(plain.bos_id(), Some(0));
    assert_eq!(plain.encode("a", true).unwrap().len(), 1);

    let with_bos =
        tokenizer_with(&[("tokenizer.ggml.add_bos_token", MetaValue::Bool(true))]).unwrap();
    assert!(with_bos.add_bos());
    assert_eq!(
        with_bos.encode("a", true).unwrap(),
        vec![0, FIRST_BYTE + b'a' as u32]
    );
    assert_eq!(
        with_bos.encode("a", false).unwrap(),
        vec![FIRST_BYTE + b'a' as u32]
    );
}

#[test]
fn bad_ids_and_bad_metadata_are_errors() {
    let t = tokenizer();
    let err = t.decode(&[5, 999_999], false).unwrap_err().to_string();
    assert!(err.contains("999999"), "{err}");

    let err =
        tokenizer_with(&[("tokenizer.ggml.model", MetaValue::String("llama".into()))]).unwrap_err();
    assert!(err.contains("\"llama\""), "{err}");
    let err =
        tokenizer_with(&[("tokenizer.ggml.pre", MetaValue::String("mystery".into()))]).unwrap_err();
    assert!(err.contains("\"mystery\""), "{err}");
    let err = tokenizer_with(&[(
        "tokenizer.ggml.merges",
        MetaValue::Array(vec![MetaValue::String("nospace".into())]),
    )])
    .unwrap_err();
    assert!(err.contains("nospace"), "{err}");
    let err =
        tokenizer_with(&[("tokenizer.ggml.eos_token_id", MetaValue::U32(70_000))]).unwrap_err();
    assert!(err.contains("eos_token_id"), "{err}");
}

fn stream(t: &Arc<Tokenizer>, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut d = StreamDecoder::new(t.clone(), skip_special);
    let mut deltas: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
    deltas.push(d.finish().unwrap());
    deltas
}

#[test]
fn stream_decoder_holds_partial_characters_and_concatenates_to_decode() {
    let t = Arc::new(tokenizer());
    for s in VARIED {
        let ids = t.encode(s, false).unwrap();
        let deltas = stream(&t, &ids, false);
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        assert_eq!(deltas.concat(), t.decode(&ids, false).unwrap());
    }
    // One byte per token: the four bytes of 🙂 come out as one delta, on the last byte.
    let ids = t.encode("a🙂", false).unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(stream(&t, &ids, false), vec!["a", "", "", "", "🙂", ""]);
}

#[test]
fn stream_decoder_skips_specials_and_flushes_invalid_bytes_like_decode() {
    let t = Arc::new(tokenizer());
    let a = FIRST_BYTE + b'a' as u32;
    assert_eq!(stream(&t, &[1, a, 2], true).concat(), "a");
    // A lone continuation byte followed by text, and a truncated character at the end.
    let ids = [
        a,
        FIRST_BYTE + 0x80,
        a,
        FIRST_BYTE + 0xF0,
        FIRST_BYTE + 0x9F,
    ];
    let deltas = stream(&t, &ids, false);
    assert_eq!(deltas.concat(), t.decode(&ids, false).unwrap());
    assert!(deltas.last().unwrap().ends_with('\u{FFFD}'));
    // A bad id is an error and leaves the stream usable.
    let mut d = StreamDecoder::new(t.clone(), false);
    assert!(d.push(1_000_000).is_err());
    assert_eq!(d.push(a).unwrap(), "a");
}

#[test]
fn stream_decoder_is_owned_and_moves_across_threads() {
    let t = Arc::new(tokenizer());
    let ids = t.encode("héllo", false).unwrap();
    let mut d = StreamDecoder::new(t.clone(), false);
    let handle = std::thread::spawn(move || {
        let mut out = String::new();
        for id in ids {
            out.push_str(&d.push(id).unwrap());
        }
        out + &d.finish().unwrap()
    });
    assert_eq!(handle.join().unwrap(), "héllo");
}

#[test]
fn stream_and_stop_strings_together_cut_at_the_stop() {
    let t = Arc::new(tokenizer());
    let ids = t.encode("Answer: 42\nUser: more", false).unwrap();
    let mut d = StreamDecoder::new(t, false);
    let mut stop = StopMatcher::new(vec!["\nUser:".into()]);
    let mut out = String::new();
    let mut stopped = false;
    for id in ids {
        let o = stop.push(&d.push(id).unwrap());
        out.push_str(&o.emit);
        if o.stopped {
            stopped = true;
            break;
        }
    }
    assert!(stopped);
    assert_eq!(out, "Answer: 42");
}

#[test]
fn chat_template_from_metadata_and_chatml_fallback() {
    let conversation = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Yo"),
    ];
    let t = tokenizer();
    assert!(t.chat_template().is_none());
    assert_eq!(
        t.apply_chat_template(&conversation, true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.eos_ids(), &[1], "eos only; no template names <|im_end|>");

    let template = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}:{{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}>{% endif %}";
    let t = tokenizer_with(&[(
        "tokenizer.chat_template",
        MetaValue::String(template.into()),
    )])
    .unwrap();
    assert_eq!(
        t.apply_chat_template(&conversation, true).unwrap(),
        "<|endoftext|><|im_start|>user:Hi<|im_end|><|im_start|>assistant:Yo<|im_end|>>"
    );
    assert_eq!(
        t.eos_ids(),
        &[1, 2],
        "the template's end-of-turn token ends generation"
    );

    let broken = tokenizer_with(&[(
        "tokenizer.chat_template",
        MetaValue::String("{% for %}".into()),
    )])
    .unwrap();
    assert!(broken.apply_chat_template(&conversation, true).is_err());
}

#[test]
fn qwen2_vocabularies_compose_unicode_before_splitting() {
    let decomposed = "cafe\u{301}";
    let qwen2 =
        tokenizer_with(&[("tokenizer.ggml.pre", MetaValue::String("qwen2".into()))]).unwrap();
    let ids = qwen2.encode(decomposed, false).unwrap();
    assert_eq!(qwen2.decode(&ids, false).unwrap(), "caf\u{e9}");
    let gpt2 = tokenizer();
    let ids = gpt2.encode(decomposed, false).unwrap();
    assert_eq!(gpt2.decode(&ids, false).unwrap(), decomposed);
}
