//! Byte-level BPE tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! The pre-tokenizer regexes are those llama.cpp uses for each `tokenizer.ggml.pre` value;
//! they reproduce the Hugging Face pipelines the models were trained with (checked against
//! Hugging Face `tokenizers` by `gpu/tests/tokenizer_fixtures.rs`).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{Tokenizer, TokenizerError};
use crate::loader::Metadata;

const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// StarCoder-family vocabularies (SmolLM) split every digit on its own first.
const SINGLE_DIGIT: &str = r"\p{N}";

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The regexes applied in order, for a `tokenizer.ggml.pre` value.
fn split_regexes(pre: &str) -> Result<&'static [&'static str], TokenizerError> {
    Ok(match pre {
        "gpt2" | "default" => &[GPT2_SPLIT],
        "smollm" | "starcoder" => &[SINGLE_DIGIT, GPT2_SPLIT],
        "llama3" | "llama-bpe" | "llama-v3" => &[LLAMA3_SPLIT],
        "qwen2" | "deepseek-r1-qwen" => &[QWEN2_SPLIT],
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    })
}

pub(super) fn from_gguf(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
    let model = meta.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model.to_string()));
    }
    let tokens = meta
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| TokenizerError::metadata("tokenizer.ggml.tokens", "missing"))?;
    let merges = meta
        .get_str_array("tokenizer.ggml.merges")
        .ok_or_else(|| TokenizerError::metadata("tokenizer.ggml.merges", "missing"))?;
    let token_types = match meta.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(_) => meta
            .get_i64_array("tokenizer.ggml.token_type")
            .filter(|t| t.len() == tokens.len())
            .ok_or_else(|| {
                TokenizerError::metadata(
                    "tokenizer.ggml.token_type",
                    "must be integers, one per token",
                )
            })?,
    };
    let pre = match meta.get_str("tokenizer.ggml.pre") {
        Some(pre) => pre,
        None => {
            tracing::warn!("GGUF names no tokenizer.ggml.pre; using the GPT-2 pre-tokenizer");
            "default"
        }
    };
    let regexes = split_regexes(pre)?;

    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id)
            .map_err(|_| TokenizerError::metadata("tokenizer.ggml.tokens", "too many tokens"))?;
        // First occurrence wins: some vocabularies repeat padding entries.
        vocab.entry(token.to_string()).or_insert(id);
    }
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    TokenizerError::metadata(
                        "tokenizer.ggml.merges",
                        format!("merge {m:?} is not two tokens separated by a space"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // Llama 3's Hugging Face tokenizer looks whole words up before merging.
        .ignore_merges(matches!(pre, "llama3" | "llama-bpe" | "llama-v3"))
        .build()
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    if matches!(pre, "qwen2" | "deepseek-r1-qwen") {
        // Qwen2's Hugging Face tokenizer composes text (NFC) before splitting.
        inner.with_normalizer(Some(NFC));
    }
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for regex in regexes {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, true, false).into());
    inner.with_pre_tokenizer(Some(Sequence::new(steps)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));

    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, &t)| AddedToken::from(tok.to_string(), t == TOKEN_TYPE_CONTROL))
        .collect();
    inner.add_special_tokens(&special);

    let token_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .filter(|&id| (id as usize) < tokens.len())
                .map(Some)
                .ok_or_else(|| TokenizerError::metadata(key, format!("{v:?} is not a token id"))),
        }
    };
    let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
    let mut eos_ids: Vec<u32> = token_id("tokenizer.ggml.eos_token_id")?
        .into_iter()
        .collect();
    eos_ids.extend(token_id("tokenizer.ggml.eot_token_id")?);
    eos_ids.extend(token_id("tokenizer.ggml.eom_token_id")?);
    // llama.cpp's default for BPE vocabularies is not to add BOS unless the file says so.
    let add_bos = meta
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(false)
        && bos_id.is_some();
    let add_eos = meta
        .get_bool("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);
    let eos_id = token_id("tokenizer.ggml.eos_token_id")?;
    let mut template = String::new();
    let mut template_tokens = Vec::new();
    if let (true, Some(id)) = (add_bos, bos_id) {
        template.push_str(tokens[id as usize]);
        template.push(' ');
        template_tokens.push((tokens[id as usize].to_string(), id));
    }
    template.push_str("$A");
    if let (true, Some(id)) = (add_eos, eos_id) {
        template.push(' ');
        template.push_str(tokens[id as usize]);
        template_tokens.push((tokens[id as usize].to_string(), id));
    }
    if !template_tokens.is_empty() {
        let processor = TemplateProcessing::builder()
            .try_single(template.as_str())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?
            .special_tokens(template_tokens)
            .build()
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        inner.with_post_processor(Some(processor));
    }

    let chat_template = meta.get_str("tokenizer.chat_template").map(str::to_string);
    Ok(Tokenizer::assemble(
        inner,
        bos_id,
        eos_ids,
        add_bos,
        chat_template,
    ))
}
