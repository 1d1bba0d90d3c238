//! Prompts of a requested token length.
//!
//! With a tokenizer the text is fitted until it encodes to exactly the requested number of
//! tokens. Without one, the text is a sequence of common English words, each of which is a
//! single token in Llama-family BPE vocabularies, so the length is an estimate; the server's
//! `usage.prompt_tokens` then tells the truth in the report.

use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;
use tokenizers::Tokenizer;

/// Each word (with its leading space) is one token in Llama 2/3 and GPT-2 style vocabularies.
const WORDS: &[&str] = &[
    " the",
    " of",
    " and",
    " to",
    " in",
    " is",
    " that",
    " for",
    " it",
    " as",
    " was",
    " with",
    " be",
    " by",
    " on",
    " not",
    " he",
    " this",
    " are",
    " or",
    " his",
    " from",
    " at",
    " which",
    " but",
    " have",
    " an",
    " had",
    " they",
    " you",
    " were",
    " their",
    " one",
    " all",
    " we",
    " can",
    " her",
    " has",
    " there",
    " been",
    " if",
    " more",
    " when",
    " will",
    " would",
    " who",
    " so",
    " no",
    " time",
    " people",
    " year",
    " way",
    " day",
    " man",
    " thing",
    " life",
    " world",
    " school",
    " state",
    " family",
    " group",
    " country",
    " problem",
    " hand",
    " part",
    " place",
    " case",
    " week",
    " company",
    " system",
    " program",
    " question",
    " work",
    " number",
    " night",
    " point",
    " home",
    " water",
    " room",
    " mother",
    " area",
    " money",
    " story",
    " fact",
    " month",
    " lot",
    " right",
    " study",
    " book",
    " eye",
    " job",
    " word",
    " business",
    " side",
    " kind",
    " head",
    " house",
    " service",
    " friend",
    " father",
    " power",
    " hour",
    " game",
    " line",
    " end",
    " member",
    " law",
    " car",
    " city",
    " name",
    " team",
    " minute",
    " idea",
    " body",
    " back",
    " face",
    " level",
    " office",
    " door",
    " health",
    " person",
    " art",
    " war",
    " history",
    " party",
    " result",
    " change",
    " morning",
    " reason",
    " research",
    " girl",
    " moment",
    " air",
    " teacher",
    " force",
    " education",
    " light",
];

/// Rounds of append/trim before accepting the nearest length: BPE merges at the cut can move
/// the count by a token or two, and a couple of rounds always settle it in practice.
const MAX_FIT_ROUNDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot load tokenizer {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("tokenizer failed: {0}")]
    Encode(String),
}

/// A synthesized prompt and how many tokens it is known (or estimated) to have.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub tokens: usize,
    /// True when `tokens` was measured with the model's tokenizer.
    pub exact: bool,
}

/// Builds prompts of a given length from random words; cheap to clone (the tokenizer is shared).
#[derive(Clone)]
pub struct PromptBuilder {
    tokenizer: Option<Arc<Tokenizer>>,
}

impl PromptBuilder {
    pub fn without_tokenizer() -> Self {
        Self { tokenizer: None }
    }

    pub fn with_tokenizer(tokenizer: Tokenizer) -> Self {
        Self {
            tokenizer: Some(Arc::new(tokenizer)),
        }
    }

    pub fn from_tokenizer_file(path: &Path) -> Result<Self, PromptError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| PromptError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::with_tokenizer(tokenizer))
    }

    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// Counts tokens of `text` without special tokens; `None` without a tokenizer.
    pub fn count_tokens(&self, text: &str) -> Result<Option<usize>, PromptError> {
        match &self.tokenizer {
            None => Ok(None),
            Some(tokenizer) => Ok(Some(encode(tokenizer, text)?.len())),
        }
    }

    /// A prompt of `tokens` tokens that starts with `prefix` (a prompt this builder made, or
    /// empty) and continues with random words drawn from `rng`.
    pub fn build(
        &self,
        prefix: &Prompt,
        tokens: usize,
        rng: &mut impl Rng,
    ) -> Result<Prompt, PromptError> {
        let mut text = prefix.text.clone();
        match &self.tokenizer {
            None => {
                for _ in prefix.tokens..tokens {
                    text.push_str(random_word(rng));
                }
                Ok(Prompt {
                    text,
                    tokens: tokens.max(prefix.tokens),
                    exact: false,
                })
            }
            Some(tokenizer) => fit_exactly(tokenizer, text, tokens, rng),
        }
    }
}

fn random_word(rng: &mut impl Rng) -> &'static str {
    WORDS.choose(rng).copied().unwrap_or(" the")
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, PromptError> {
    tokenizer
        .encode(text, false)
        .map(|encoding| encoding.get_ids().to_vec())
        .map_err(|e| PromptError::Encode(e.to_string()))
}

/// Appends words while short, cuts at a token boundary while long, re-encoding each time
/// because decode→encode is not always the identity at the cut.
fn fit_exactly(
    tokenizer: &Tokenizer,
    mut text: String,
    target: usize,
    rng: &mut impl Rng,
) -> Result<Prompt, PromptError> {
    let mut ids = encode(tokenizer, &text)?;
    for _ in 0..MAX_FIT_ROUNDS {
        if ids.len() == target {
            break;
        }
        if ids.len() < target {
            for _ in ids.len()..target {
                text.push_str(random_word(rng));
            }
        } else {
            text = tokenizer
                .decode(&ids[..target], false)
                .map_err(|e| PromptError::Encode(e.to_string()))?;
        }
        ids = encode(tokenizer, &text)?;
    }
    if ids.len() != target {
        tracing::warn!(
            target,
            got = ids.len(),
            "prompt could not be fitted exactly"
        );
    }
    Ok(Prompt {
        text,
        tokens: ids.len(),
        exact: true,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// A small byte-level BPE whose merges make some words one token and others several, so
    /// fitting has to cope with words of uneven token length like a real vocabulary.
    pub(crate) fn small_bpe() -> Tokenizer {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        for c in alphabet {
            let next = vocab.len() as u32;
            vocab.insert(c.to_string(), next);
        }
        let merge_list = [
            ("Ġ", "t"),
            ("h", "e"),
            ("Ġt", "he"),
            ("Ġ", "a"),
            ("n", "d"),
            ("Ġa", "nd"),
            ("Ġ", "o"),
            ("Ġo", "f"),
            ("Ġ", "w"),
            ("o", "r"),
            ("Ġw", "or"),
            ("Ġ", "s"),
        ];
        let mut merges = Vec::new();
        for (a, b) in merge_list {
            let merged = format!("{a}{b}");
            let next = vocab.len() as u32;
            vocab.entry(merged).or_insert(next);
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .build()
            .unwrap();
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer
    }

    fn empty() -> Prompt {
        Prompt {
            text: String::new(),
            tokens: 0,
            exact: true,
        }
    }

    #[test]
    fn tokenizer_prompts_encode_to_exactly_the_requested_length() {
        let builder = PromptBuilder::with_tokenizer(small_bpe());
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for target in [1, 2, 7, 31, 128, 513] {
            let prompt = builder.build(&empty(), target, &mut rng).unwrap();
            assert_eq!(prompt.tokens, target);
            assert_eq!(builder.count_tokens(&prompt.text).unwrap(), Some(target));
            assert!(prompt.exact);
        }
    }

    #[test]
    fn shared_prefix_is_kept_verbatim_and_total_is_exact() {
        let builder = PromptBuilder::with_tokenizer(small_bpe());
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let prefix = builder.build(&empty(), 40, &mut rng).unwrap();
        let a = builder.build(&prefix, 100, &mut rng).unwrap();
        let b = builder.build(&prefix, 100, &mut rng).unwrap();
        assert!(a.text.starts_with(&prefix.text) && b.text.starts_with(&prefix.text));
        assert_ne!(a.text, b.text, "suffixes must differ between requests");
        assert_eq!(a.tokens, 100);
        assert_eq!(builder.count_tokens(&b.text).unwrap(), Some(100));
    }

    #[test]
    fn word_prompts_have_one_word_per_requested_token() {
        let builder = PromptBuilder::without_tokenizer();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let prompt = builder.build(&empty(), 50, &mut rng).unwrap();
        assert_eq!(prompt.text.split_whitespace().count(), 50);
        assert_eq!(prompt.tokens, 50);
        assert!(!prompt.exact);
        assert_eq!(builder.count_tokens(&prompt.text).unwrap(), None);
    }

    #[test]
    fn missing_tokenizer_file_is_a_clear_error() {
        let err = PromptBuilder::from_tokenizer_file(Path::new("/nonexistent/tokenizer.json"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/tokenizer.json"),
            "{err}"
        );
    }
}
