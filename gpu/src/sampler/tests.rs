use super::*;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        ..SamplingParams::default()
    }
}

/// Logits whose softmax is exactly `probs` (up to rounding).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// How often each token is drawn over `n` positions.
fn histogram(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<usize> {
    let mut counts = vec![0; logits.len()];
    for position in 0..n {
        let prompt = vec![0u32; position];
        counts[sample(logits, p, &prompt, &[]).unwrap().token as usize] += 1;
    }
    counts
}

#[test]
fn greedy_takes_the_lowest_id_among_ties() {
    let s = sample(&[1.0, 3.0, 3.0, 2.0], &params(0.0), &[], &[]).unwrap();
    assert_eq!(s.token, 1);
}

#[test]
fn top_p_cuts_exactly_at_the_mass() {
    let logits = logits_of(&[0.5, 0.3, 0.2]);
    let at_cut = SamplingParams {
        top_p: 0.8,
        ..params(1.0)
    };
    let counts = histogram(&logits, &at_cut, 400);
    assert_eq!(
        counts[2], 0,
        "0.5 + 0.3 reaches top_p = 0.8: token 2 must be cut"
    );
    assert!(counts[0] > 0 && counts[1] > 0);
    let past_cut = SamplingParams {
        top_p: 0.81,
        ..params(1.0)
    };
    assert!(histogram(&logits, &past_cut, 400)[2] > 0);
}

#[test]
fn top_k_one_is_greedy_for_every_seed() {
    let logits = [0.1, 2.0, 1.9, -1.0];
    for seed in 0..50 {
        let p = SamplingParams {
            top_k: 1,
            seed,
            ..params(1.5)
        };
        assert_eq!(sample(&logits, &p, &[3, 3], &[]).unwrap().token, 1);
    }
}

#[test]
fn min_p_drops_tokens_below_the_ratio_of_the_top() {
    let logits = logits_of(&[0.5, 0.3, 0.2]);
    let p = SamplingParams {
        min_p: 0.5,
        ..params(1.0)
    };
    let counts = histogram(&logits, &p, 400);
    assert_eq!(counts[2], 0, "0.2 < 0.5 * 0.5");
    assert!(counts[0] > 0 && counts[1] > 0);
}

#[test]
fn draws_follow_the_distribution() {
    let counts = histogram(&logits_of(&[0.5, 0.3, 0.2]), &params(1.0), 3000);
    let expect = [1500.0, 900.0, 600.0];
    for (count, expected) in counts.iter().zip(expect) {
        assert!(
            (*count as f64 - expected).abs() < expected * 0.12,
            "{counts:?}"
        );
    }
}

#[test]
fn seeded_draws_depend_only_on_seed_and_absolute_position() {
    let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
    let p = SamplingParams {
        seed: 42,
        ..params(1.0)
    };
    for position in 0..20 {
        // Same position reached as prompt-only or as prompt + already generated tokens.
        let prompt = vec![9u32; position];
        let split = position / 2;
        let a = sample(&logits, &p, &prompt, &[]).unwrap().token;
        let b = sample(&logits, &p, &prompt[..split], &prompt[split..])
            .unwrap()
            .token;
        assert_eq!(a, b, "position {position}");
    }
    let stream = |seed| -> Vec<u32> {
        let p = SamplingParams {
            seed,
            ..params(1.0)
        };
        (0..30)
            .map(|pos| sample(&logits, &p, &vec![9; pos], &[]).unwrap().token)
            .collect()
    };
    assert_eq!(stream(1), stream(1));
    assert_ne!(stream(1), stream(2));
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative() {
    let mut logits = vec![2.0, -2.0, 1.0, 4.0];
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..params(1.0)
    };
    apply_penalties(&mut logits, &p, &[0], &[1, 1]);
    assert_eq!(logits, vec![1.0, -4.0, 1.0, 4.0]);
}

#[test]
fn frequency_and_presence_penalties_count_output_tokens_only() {
    let mut logits = vec![1.0; 4];
    let p = SamplingParams {
        frequency_penalty: 0.5,
        presence_penalty: 1.0,
        ..params(1.0)
    };
    apply_penalties(&mut logits, &p, &[3, 3, 3], &[2, 2, 1]);
    assert_eq!(logits, vec![1.0, -0.5, -1.0, 1.0]);
}

#[test]
fn logprobs_are_of_the_raw_distribution_not_the_tempered_one() {
    let logits = logits_of(&[0.25, 0.75]);
    let p = SamplingParams {
        logprobs: Some(2),
        ..params(0.1)
    };
    let s = sample(&logits, &p, &[], &[]).unwrap();
    let lp = s.logprobs.unwrap();
    assert_eq!(s.token, 1);
    assert!((lp.logprob - 0.75f32.ln()).abs() < 1e-5);
    assert_eq!(lp.top.len(), 2);
    assert_eq!(lp.top[0].token, 1);
    assert!((lp.top[1].logprob - 0.25f32.ln()).abs() < 1e-5);
}

#[test]
fn logprobs_include_penalties() {
    let p = SamplingParams {
        logprobs: Some(0),
        repetition_penalty: 2.0,
        ..params(0.0)
    };
    // [2, 0] becomes [1, 0] after the penalty on token 0.
    let lp = sample(&[2.0, 0.0], &p, &[0], &[])
        .unwrap()
        .logprobs
        .unwrap();
    let expected = 1.0 - (1f32.exp() + 1.0).ln();
    assert!((lp.logprob - expected).abs() < 1e-5);
    assert!(lp.top.is_empty());
}

#[test]
fn bad_logits_are_errors() {
    assert_eq!(
        sample(&[], &params(1.0), &[], &[]),
        Err(SampleError::EmptyLogits)
    );
    assert_eq!(
        sample(&[0.0, f32::NAN], &params(1.0), &[], &[]),
        Err(SampleError::NonFiniteLogits)
    );
    let masked = [f32::NEG_INFINITY; 3];
    assert_eq!(
        sample(&masked, &params(1.0), &[], &[]),
        Err(SampleError::NoCandidates)
    );
    let s = sample(
        &[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY],
        &params(1.0),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(s.token, 1, "-inf tokens are never drawn");
}

#[test]
fn validation_rejects_out_of_range_params() {
    assert!(validate_params(&SamplingParams::default()).is_ok());
    let bad = [
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            min_p: 1.5,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
        SamplingParams {
            frequency_penalty: f32::NAN,
            ..Default::default()
        },
        SamplingParams {
            max_tokens: 0,
            ..Default::default()
        },
        SamplingParams {
            logprobs: Some(21),
            ..Default::default()
        },
    ];
    for p in bad {
        assert!(validate_params(&p).is_err(), "{p:?}");
    }
}
