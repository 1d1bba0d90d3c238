//! Request fields → engine `SamplingParams`, with OpenAI's ranges checked. Every rejection names
//! the offending field so the client sees exactly what to fix.

use stator_gpu::request::SamplingParams;

use super::errors::ApiError;
use super::types::{SamplingFields, StopField};

/// OpenAI's limit on stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;
/// OpenAI's limit on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// What the handlers need besides the token ids: the engine parameters (max_tokens still to be
/// resolved against the prompt), the stop strings and the stream switches.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedSampling {
    pub params: SamplingParams,
    pub stops: Vec<String>,
    /// `max_completion_tokens` or `max_tokens` as the client gave it.
    pub requested_max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks the shared sampling fields. `logprobs` is the number of top alternatives wanted
/// (`None`: no logprobs), already validated by the endpoint-specific code.
pub fn validate_sampling(
    fields: &SamplingFields,
    logprobs: Option<usize>,
    vocab_size: usize,
) -> Result<ValidatedSampling, ApiError> {
    let temperature = in_range(fields.temperature, "temperature", 1.0, 0.0..=2.0)?;
    let top_p = match fields.top_p {
        None => 1.0,
        Some(p) if p.is_finite() && p > 0.0 && p <= 1.0 => p,
        Some(p) => {
            return Err(ApiError::invalid_param(
                "top_p",
                format!("{p} is not a valid top_p: it must be greater than 0 and at most 1."),
            ))
        }
    };
    let top_k = match fields.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!(
                    "{k} is not a valid top_k: use a positive number, or 0 or -1 to disable it."
                ),
            ))
        }
    };
    let min_p = in_range(fields.min_p, "min_p", 0.0, 0.0..=1.0)?;
    let frequency_penalty = in_range(
        fields.frequency_penalty,
        "frequency_penalty",
        0.0,
        -2.0..=2.0,
    )?;
    let presence_penalty = in_range(fields.presence_penalty, "presence_penalty", 0.0, -2.0..=2.0)?;
    let repetition_penalty = match fields.repetition_penalty {
        None => 1.0,
        Some(r) if r.is_finite() && r > 0.0 => r,
        Some(r) => {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                format!("{r} is not a valid repetition_penalty: it must be greater than 0."),
            ))
        }
    };

    match fields.n {
        None | Some(1) => {}
        Some(n) => {
            return Err(ApiError::invalid_param(
                "n",
                format!("n={n} is not supported: this server generates exactly one choice (n=1)."),
            ))
        }
    }

    let requested_max_tokens = match (fields.max_completion_tokens, fields.max_tokens) {
        (Some(value), _) => Some(positive_count(value, "max_completion_tokens")?),
        (None, Some(value)) => Some(positive_count(value, "max_tokens")?),
        (None, None) => None,
    };

    let stops = match &fields.stop {
        None => Vec::new(),
        Some(StopField::One(stop)) => vec![stop.clone()],
        Some(StopField::Many(stops)) => stops.clone(),
    };
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "At most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {}.",
                stops.len()
            ),
        ));
    }
    // An empty stop string would end every generation before its first character.
    let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();

    let stop_token_ids = fields.stop_token_ids.clone().unwrap_or_default();
    if let Some(bad) = stop_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("Token id {bad} is outside the vocabulary (size {vocab_size})."),
        ));
    }

    let stream = fields.stream.unwrap_or(false);
    if fields.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true.",
        ));
    }
    let include_usage = fields
        .stream_options
        .as_ref()
        .and_then(|options| options.include_usage)
        .unwrap_or(false);

    let params = SamplingParams {
        temperature: temperature as f32,
        top_k,
        top_p: top_p as f32,
        min_p: min_p as f32,
        repetition_penalty: repetition_penalty as f32,
        frequency_penalty: frequency_penalty as f32,
        presence_penalty: presence_penalty as f32,
        seed: seed(fields.seed.as_ref())?,
        // Resolved against the prompt length by `resolve_max_tokens`.
        max_tokens: 0,
        stop_token_ids,
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        logprobs,
    };
    Ok(ValidatedSampling {
        params,
        stops,
        requested_max_tokens,
        stream,
        include_usage,
    })
}

/// Chat's `logprobs: bool` + `top_logprobs: 0..=20` → the engine's top-N.
pub fn chat_logprobs(
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
) -> Result<Option<usize>, ApiError> {
    let top = top_logprobs
        .map(|n| top_logprobs_count(n, "top_logprobs"))
        .transpose()?;
    match (logprobs.unwrap_or(false), top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(_)) => Err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs requires logprobs to be true.",
        )),
        (false, None) => Ok(None),
    }
}

/// Completions' `logprobs: int` (the number of alternatives; the sampled token is always shown).
pub fn completion_logprobs(logprobs: Option<i64>) -> Result<Option<usize>, ApiError> {
    logprobs
        .map(|n| top_logprobs_count(n, "logprobs"))
        .transpose()
}

fn top_logprobs_count(value: i64, param: &str) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS).contains(&value) {
        Ok(value as usize)
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("{value} is not a valid {param}: it must be between 0 and {MAX_TOP_LOGPROBS}."),
        ))
    }
}

/// The completion budget: the client's `max_tokens` must fit in the context with the prompt;
/// without one, as many tokens as fit, up to the server default.
pub fn resolve_max_tokens(
    requested: Option<usize>,
    prompt_tokens: usize,
    context_length: usize,
    default_max_tokens: usize,
) -> Result<usize, ApiError> {
    let room = context_length.saturating_sub(prompt_tokens);
    match requested {
        Some(wanted) if wanted <= room => Ok(wanted),
        Some(wanted) => Err(ApiError::context_length_exceeded(
            context_length,
            prompt_tokens,
            wanted,
        )),
        // The prompt alone fills the context: not even one token can be generated.
        None if room == 0 => Err(ApiError::context_length_exceeded(
            context_length,
            prompt_tokens,
            1,
        )),
        None => Ok(default_max_tokens.clamp(1, room)),
    }
}

fn in_range(
    value: Option<f64>,
    param: &str,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(v),
        Some(v) => Err(ApiError::invalid_param(
            param,
            format!(
                "{v} is not a valid {param}: it must be between {} and {}.",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn positive_count(value: i64, param: &str) -> Result<usize, ApiError> {
    if value >= 1 {
        Ok(usize::try_from(value).unwrap_or(usize::MAX))
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("{value} is not a valid {param}: it must be at least 1."),
        ))
    }
}

/// The client's seed (any 64-bit integer, negative ones as their two's complement), or a fresh
/// random one: the seed is always explicit in the request so that a migrated generation
/// continues exactly.
fn seed(value: Option<&serde_json::Number>) -> Result<u64, ApiError> {
    match value {
        None => Ok(rand::random()),
        Some(number) => number
            .as_u64()
            .or_else(|| number.as_i64().map(|signed| signed as u64))
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "seed",
                    format!("{number} is not a valid seed: it must be an integer."),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> SamplingFields {
        serde_json::from_value(json).expect("test fields parse")
    }

    fn rejected_param(json: serde_json::Value) -> Option<String> {
        validate_sampling(&fields(json), None, 100)
            .err()
            .and_then(|e| e.param)
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        use serde_json::json;
        assert_eq!(
            rejected_param(json!({"temperature": 2.5})).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            rejected_param(json!({"temperature": -0.1})).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            rejected_param(json!({"top_p": 0.0})).as_deref(),
            Some("top_p")
        );
        assert_eq!(
            rejected_param(json!({"top_k": -2})).as_deref(),
            Some("top_k")
        );
        assert_eq!(
            rejected_param(json!({"min_p": 1.5})).as_deref(),
            Some("min_p")
        );
        assert_eq!(
            rejected_param(json!({"frequency_penalty": 3})).as_deref(),
            Some("frequency_penalty")
        );
        assert_eq!(
            rejected_param(json!({"presence_penalty": -3})).as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(
            rejected_param(json!({"repetition_penalty": 0})).as_deref(),
            Some("repetition_penalty")
        );
        assert_eq!(
            rejected_param(json!({"max_tokens": -1})).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            rejected_param(json!({"max_completion_tokens": 0})).as_deref(),
            Some("max_completion_tokens")
        );
        assert_eq!(rejected_param(json!({"n": 2})).as_deref(), Some("n"));
        assert_eq!(
            rejected_param(json!({"stop": ["a", "b", "c", "d", "e"]})).as_deref(),
            Some("stop")
        );
        assert_eq!(
            rejected_param(json!({"stop_token_ids": [100]})).as_deref(),
            Some("stop_token_ids")
        );
        assert_eq!(
            rejected_param(json!({"seed": 1.5})).as_deref(),
            Some("seed")
        );
        assert_eq!(
            rejected_param(json!({"stream_options": {"include_usage": true}})).as_deref(),
            Some("stream_options")
        );
    }

    #[test]
    fn accepted_values_reach_the_engine_params() {
        let validated = validate_sampling(
            &fields(serde_json::json!({
                "temperature": 0, "top_p": 0.5, "top_k": -1, "min_p": 0.1, "seed": -1,
                "frequency_penalty": 0.5, "repetition_penalty": 1.1, "stop": "END",
                "stop_token_ids": [7], "ignore_eos": true, "max_tokens": 9,
                "stream": true, "stream_options": {"include_usage": true}
            })),
            Some(3),
            100,
        )
        .expect("valid");
        let p = &validated.params;
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.top_p, 0.5);
        assert_eq!(p.top_k, 0);
        assert_eq!(p.seed, u64::MAX);
        assert_eq!(p.stop_token_ids, vec![7]);
        assert!(p.ignore_eos);
        assert_eq!(p.logprobs, Some(3));
        assert_eq!(validated.stops, vec!["END".to_string()]);
        assert_eq!(validated.requested_max_tokens, Some(9));
        assert!(validated.stream && validated.include_usage);
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let validated = validate_sampling(
            &fields(serde_json::json!({"max_tokens": 5, "max_completion_tokens": 7})),
            None,
            100,
        )
        .expect("valid");
        assert_eq!(validated.requested_max_tokens, Some(7));
    }

    #[test]
    fn missing_seed_is_drawn_per_request() {
        let a = validate_sampling(&SamplingFields::default(), None, 10).expect("valid");
        let b = validate_sampling(&SamplingFields::default(), None, 10).expect("valid");
        assert_ne!(a.params.seed, b.params.seed);
    }

    #[test]
    fn max_tokens_is_checked_against_the_context() {
        assert_eq!(resolve_max_tokens(Some(10), 90, 100, 16), Ok(10));
        let err = resolve_max_tokens(Some(11), 90, 100, 16).expect_err("too long");
        assert_eq!(err.code, Some("context_length_exceeded"));
        // Not given: clamped to what fits.
        assert_eq!(resolve_max_tokens(None, 95, 100, 16), Ok(5));
        assert_eq!(resolve_max_tokens(None, 10, 100, 16), Ok(16));
        assert!(resolve_max_tokens(None, 100, 100, 16).is_err());
    }

    #[test]
    fn logprob_switches() {
        assert_eq!(chat_logprobs(Some(true), None), Ok(Some(0)));
        assert_eq!(chat_logprobs(Some(true), Some(5)), Ok(Some(5)));
        assert_eq!(chat_logprobs(None, None), Ok(None));
        assert!(chat_logprobs(Some(false), Some(2)).is_err());
        assert!(chat_logprobs(Some(true), Some(21)).is_err());
        assert_eq!(completion_logprobs(Some(2)), Ok(Some(2)));
        assert!(completion_logprobs(Some(-1)).is_err());
    }
}
