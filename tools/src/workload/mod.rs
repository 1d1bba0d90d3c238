//! What to send and when: load shapes, request lengths (fixed or from a trace), shared-prefix
//! groups and the prompts themselves.

pub mod prompt;
pub mod trace;

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::schedule::{scaled_offsets, Arrival, RateSchedule};
pub use prompt::{Prompt, PromptBuilder, PromptError};
pub use trace::{load_trace, parse_trace, TraceError, TraceRecord};

/// How requests are released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LoadShape {
    /// Closed loop: `clients` requests always in flight, each sent when the previous returns.
    Concurrency { clients: u32 },
    /// Open loop at `rate` requests per second.
    Rate { rate: f64, arrival: Arrival },
    /// Open loop at the recorded arrival times, multiplied by `time_scale`.
    Trace { time_scale: f64 },
}

impl LoadShape {
    pub fn label(&self) -> String {
        match self {
            LoadShape::Concurrency { clients } => format!("concurrency={clients}"),
            LoadShape::Rate { rate, arrival } => {
                let kind = match arrival {
                    Arrival::Constant => "constant",
                    Arrival::Poisson => "poisson",
                };
                format!("rate={rate}/s ({kind})")
            }
            LoadShape::Trace { time_scale } => format!("trace x{time_scale}"),
        }
    }

    /// Arrival offsets for open-loop shapes; `None` for the closed loop.
    pub fn arrivals(
        &self,
        trace: &[TraceRecord],
        seed: u64,
    ) -> Option<Box<dyn Iterator<Item = Duration> + Send>> {
        match self {
            LoadShape::Concurrency { .. } => None,
            LoadShape::Rate { rate, arrival } => {
                Some(Box::new(RateSchedule::new(*arrival, *rate, seed)))
            }
            LoadShape::Trace { time_scale } => {
                let recorded: Vec<f64> = trace.iter().map(|r| r.offset_s).collect();
                Some(Box::new(scaled_offsets(&recorded, *time_scale).into_iter()))
            }
        }
    }
}

/// Where request lengths come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Lengths {
    Fixed {
        input_tokens: usize,
        output_tokens: u32,
    },
    /// The i-th request takes the i-th record's lengths; the workload ends with the trace.
    Trace(Vec<TraceRecord>),
}

/// `groups` prompt families, each sharing its first `tokens` tokens, for prefix-routing tests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SharedPrefix {
    pub groups: u32,
    pub tokens: usize,
}

/// One request ready to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub index: u64,
    /// The shared-prefix group, when the workload has groups.
    pub group: Option<u32>,
    pub prompt: Prompt,
    pub max_tokens: u32,
}

/// Turns request indexes into prompts, deterministically for a given seed.
pub struct Workload {
    builder: PromptBuilder,
    lengths: Lengths,
    max_input_tokens: Option<usize>,
    prefixes: Vec<Prompt>,
    rng: ChaCha8Rng,
}

impl Workload {
    pub fn new(
        builder: PromptBuilder,
        lengths: Lengths,
        shared_prefix: Option<SharedPrefix>,
        max_input_tokens: Option<usize>,
        seed: u64,
    ) -> Result<Self, PromptError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let empty = Prompt {
            text: String::new(),
            tokens: 0,
            exact: builder.has_tokenizer(),
        };
        let prefixes = match shared_prefix {
            None => Vec::new(),
            Some(prefix) => (0..prefix.groups)
                .map(|_| builder.build(&empty, prefix.tokens, &mut rng))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            builder,
            lengths,
            max_input_tokens,
            prefixes,
            rng,
        })
    }

    /// How many requests the workload holds, when it is finite (a trace).
    pub fn request_count(&self) -> Option<usize> {
        match &self.lengths {
            Lengths::Fixed { .. } => None,
            Lengths::Trace(records) => Some(records.len()),
        }
    }

    pub fn trace(&self) -> &[TraceRecord] {
        match &self.lengths {
            Lengths::Fixed { .. } => &[],
            Lengths::Trace(records) => records,
        }
    }

    pub fn builder(&self) -> &PromptBuilder {
        &self.builder
    }

    /// The request at `index`, or `None` past the end of a trace.
    pub fn request(&mut self, index: u64) -> Result<Option<RequestSpec>, PromptError> {
        let (input_tokens, max_tokens) = match &self.lengths {
            Lengths::Fixed {
                input_tokens,
                output_tokens,
            } => (*input_tokens, *output_tokens),
            Lengths::Trace(records) => {
                match usize::try_from(index).ok().and_then(|i| records.get(i)) {
                    None => return Ok(None),
                    Some(record) => (
                        record.context_tokens as usize,
                        record.generated_tokens.max(1),
                    ),
                }
            }
        };
        let input_tokens = self
            .max_input_tokens
            .map_or(input_tokens, |cap| input_tokens.min(cap))
            .max(1);
        let group =
            (!self.prefixes.is_empty()).then(|| (index % self.prefixes.len() as u64) as u32);
        let prompt = match group {
            Some(g) => {
                let prefix = &self.prefixes[g as usize];
                self.builder
                    .build(prefix, input_tokens.max(prefix.tokens), &mut self.rng)?
            }
            None => {
                let empty = Prompt {
                    text: String::new(),
                    tokens: 0,
                    exact: self.builder.has_tokenizer(),
                };
                self.builder.build(&empty, input_tokens, &mut self.rng)?
            }
        };
        Ok(Some(RequestSpec {
            index,
            group,
            prompt,
            max_tokens,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(input_tokens: usize) -> Lengths {
        Lengths::Fixed {
            input_tokens,
            output_tokens: 16,
        }
    }

    #[test]
    fn shared_prefix_groups_round_robin_and_share_text() {
        let prefix = SharedPrefix {
            groups: 3,
            tokens: 20,
        };
        let mut workload = Workload::new(
            PromptBuilder::without_tokenizer(),
            fixed(50),
            Some(prefix),
            None,
            5,
        )
        .unwrap();
        let requests: Vec<_> = (0..6)
            .map(|i| workload.request(i).unwrap().unwrap())
            .collect();
        let groups: Vec<_> = requests.iter().map(|r| r.group.unwrap()).collect();
        assert_eq!(groups, vec![0, 1, 2, 0, 1, 2]);
        let first_words = |r: &RequestSpec| {
            r.prompt
                .text
                .split_whitespace()
                .take(20)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(first_words(&requests[0]), first_words(&requests[3]));
        assert_ne!(first_words(&requests[0]), first_words(&requests[1]));
        assert_ne!(requests[0].prompt.text, requests[3].prompt.text);
        assert!(requests
            .iter()
            .all(|r| r.prompt.tokens == 50 && r.max_tokens == 16));
    }

    #[test]
    fn trace_lengths_are_used_clamped_and_end_with_the_trace() {
        let records = vec![
            TraceRecord {
                offset_s: 0.0,
                context_tokens: 300,
                generated_tokens: 7,
            },
            TraceRecord {
                offset_s: 1.0,
                context_tokens: 40,
                generated_tokens: 0,
            },
        ];
        let mut workload = Workload::new(
            PromptBuilder::without_tokenizer(),
            Lengths::Trace(records),
            None,
            Some(100),
            1,
        )
        .unwrap();
        assert_eq!(workload.request_count(), Some(2));
        let first = workload.request(0).unwrap().unwrap();
        assert_eq!((first.prompt.tokens, first.max_tokens), (100, 7));
        let second = workload.request(1).unwrap().unwrap();
        assert_eq!(
            (second.prompt.tokens, second.max_tokens),
            (40, 1),
            "zero output is sent as 1"
        );
        assert!(workload.request(2).unwrap().is_none());
    }

    #[test]
    fn same_seed_same_prompts() {
        let mut a = Workload::new(
            PromptBuilder::without_tokenizer(),
            fixed(30),
            None,
            None,
            11,
        )
        .unwrap();
        let mut b = Workload::new(
            PromptBuilder::without_tokenizer(),
            fixed(30),
            None,
            None,
            11,
        )
        .unwrap();
        for i in 0..3 {
            assert_eq!(
                a.request(i).unwrap().unwrap().prompt,
                b.request(i).unwrap().unwrap().prompt
            );
        }
    }

    #[test]
    fn trace_shape_replays_scaled_offsets() {
        let records = vec![
            TraceRecord {
                offset_s: 0.0,
                context_tokens: 1,
                generated_tokens: 1,
            },
            TraceRecord {
                offset_s: 2.0,
                context_tokens: 1,
                generated_tokens: 1,
            },
        ];
        let offsets: Vec<_> = LoadShape::Trace { time_scale: 0.25 }
            .arrivals(&records, 0)
            .unwrap()
            .collect();
        assert_eq!(offsets, vec![Duration::ZERO, Duration::from_millis(500)]);
        assert!(LoadShape::Concurrency { clients: 2 }
            .arrivals(&records, 0)
            .is_none());
    }
}
