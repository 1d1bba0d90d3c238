//! Scheduler tests against a fake device: KV slots hold the token written at each position, and
//! the fake model's next token is a function of what it *reads back* from the block table, so
//! any mistake in block tables, prefix reuse or recompute changes the outputs.

use std::collections::HashMap;

use super::*;
use crate::request::SamplingParams;

const VOCAB: u32 = 1000;

struct FakeDevice {
    block_size: usize,
    slots: HashMap<(u32, usize), u32>,
}

impl FakeDevice {
    fn new(block_size: usize) -> Self {
        Self {
            block_size,
            slots: HashMap::new(),
        }
    }

    /// Writes the step's tokens and returns the next token if logits were requested.
    fn run(&mut self, step: &SeqStep<'_>) -> Option<u32> {
        let slot = |pos: usize| {
            (
                step.block_table[pos / self.block_size],
                pos % self.block_size,
            )
        };
        for (i, &token) in step.tokens.iter().enumerate() {
            self.slots.insert(slot(step.start_pos + i), token);
        }
        let end = step.start_pos + step.tokens.len();
        let mut state: u64 = 7;
        for pos in 0..end {
            let token = *self
                .slots
                .get(&slot(pos))
                .expect("read of a never-written KV slot");
            state = state.wrapping_mul(31).wrapping_add(token as u64 + 1);
        }
        step.want_logits.then_some((state % VOCAB as u64) as u32)
    }
}

fn config(max_num_seqs: usize, max_batch_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_batch_tokens,
        max_model_len: 10_000,
        eos_token_ids: vec![],
    }
}

fn scheduler(cfg: SchedulerConfig, num_blocks: usize, block_size: usize) -> Scheduler {
    Scheduler::new(
        cfg,
        BlockManager::new(num_blocks, block_size, true).unwrap(),
    )
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

fn new_seq(id: SeqId, prompt: Vec<u32>, max_tokens: usize) -> NewSequence {
    NewSequence {
        id,
        prompt,
        generated: vec![],
        params: params(max_tokens),
    }
}

/// One iteration: schedule, run on the device, feed the outputs back.
fn step(s: &mut Scheduler, dev: &mut FakeDevice) -> (ScheduledBatch, Vec<TokenOutcome>) {
    let batch = s.schedule();
    let sampled: Vec<(SeqId, u32)> = {
        let steps = s.seq_steps(&batch);
        assert_eq!(steps.len(), batch.steps.len());
        batch
            .steps
            .iter()
            .zip(&steps)
            .filter_map(|(b, st)| dev.run(st).map(|t| (b.seq, t)))
            .collect()
    };
    let outcomes = s.on_step_output(&batch, &sampled);
    s.kv().check_invariants().unwrap();
    (batch, outcomes)
}

/// Each finished sequence's output tokens and finish, and every batch that ran.
type Drained = (HashMap<SeqId, (Vec<u32>, SeqFinish)>, Vec<ScheduledBatch>);

/// Runs until idle.
fn run_all(s: &mut Scheduler, block_size: usize) -> Drained {
    run_on(s, &mut FakeDevice::new(block_size))
}

fn run_on(s: &mut Scheduler, dev: &mut FakeDevice) -> Drained {
    let mut outputs: HashMap<SeqId, Vec<(usize, u32)>> = HashMap::new();
    let mut done = HashMap::new();
    let mut batches = Vec::new();
    for _ in 0..10_000 {
        if !s.has_work() {
            return (done, batches);
        }
        let (batch, outcomes) = step(s, dev);
        assert!(!batch.is_empty(), "work remains but nothing was scheduled");
        for o in outcomes {
            // Indexes continue where the sequence left off (resumes start past 0).
            let out = outputs.entry(o.seq).or_default();
            if let Some(&(prev, _)) = out.last() {
                assert_eq!(o.index, prev + 1);
            }
            out.push((o.index, o.token));
            if let Some(f) = o.finish {
                let tokens = outputs
                    .remove(&o.seq)
                    .unwrap()
                    .into_iter()
                    .map(|(_, t)| t)
                    .collect();
                done.insert(o.seq, (tokens, f));
            }
        }
        batches.push(batch);
    }
    panic!("scheduler did not drain");
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 131 + i * 7) % VOCAB)
        .collect()
}

#[test]
fn chunked_prefill_respects_the_token_budget() {
    let mut s = scheduler(config(8, 8), 64, 4);
    s.add(new_seq(1, prompt(1, 20), 3)).unwrap();
    s.add(new_seq(2, prompt(2, 5), 3)).unwrap();
    let (done, batches) = run_all(&mut s, 4);
    assert!(batches.iter().all(|b| b.num_tokens() <= 8));
    let chunks: Vec<usize> = batches
        .iter()
        .take(3)
        .map(|b| b.steps[0].num_tokens)
        .collect();
    assert_eq!(chunks, vec![8, 8, 4]);
    // The third step has 4 tokens of budget left for the second prompt's first chunk.
    assert_eq!(
        batches[2].steps[1],
        ScheduledStep {
            seq: 2,
            start_pos: 0,
            num_tokens: 4,
            want_logits: false
        }
    );
    assert_eq!(done[&1].0.len(), 3);
    assert_eq!(done[&2].0.len(), 3);
}

#[test]
fn running_decodes_go_before_new_prefill() {
    let mut s = scheduler(config(8, 6), 64, 4);
    let mut dev = FakeDevice::new(4);
    s.add(new_seq(1, prompt(1, 3), 10)).unwrap();
    step(&mut s, &mut dev);
    s.add(new_seq(2, prompt(2, 30), 10)).unwrap();
    let (batch, _) = step(&mut s, &mut dev);
    assert_eq!(
        batch.steps[0],
        ScheduledStep {
            seq: 1,
            start_pos: 3,
            num_tokens: 1,
            want_logits: true
        }
    );
    assert_eq!(
        batch.steps[1],
        ScheduledStep {
            seq: 2,
            start_pos: 0,
            num_tokens: 5,
            want_logits: false
        }
    );
}

#[test]
fn admission_is_first_come_first_served() {
    // The head needs 4 blocks and only 3 are free: the small request behind it must wait too.
    let mut s = scheduler(config(8, 64), 5, 4);
    let mut dev = FakeDevice::new(4);
    s.add(new_seq(1, prompt(1, 7), 2)).unwrap();
    step(&mut s, &mut dev);
    s.add(new_seq(2, prompt(2, 16), 2)).unwrap();
    s.add(new_seq(3, prompt(3, 2), 2)).unwrap();
    let (batch, _) = step(&mut s, &mut dev);
    assert_eq!(
        batch.steps.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(s.num_waiting(), 2);
    let (done, batches) = run_all(&mut s, 4);
    let first_step_of = |id| {
        batches
            .iter()
            .position(|b| b.steps.iter().any(|s| s.seq == id))
            .unwrap()
    };
    assert!(first_step_of(2) <= first_step_of(3));
    assert_eq!(done.len(), 2);
}

#[test]
fn max_num_seqs_caps_the_running_set() {
    let mut s = scheduler(config(2, 512), 64, 4);
    for id in 1..=4 {
        s.add(new_seq(id, prompt(id as u32, 5), 3)).unwrap();
    }
    let (done, batches) = run_all(&mut s, 4);
    assert!(batches.iter().all(|b| b.steps.len() <= 2));
    assert_eq!(done.len(), 4);
}

#[test]
fn preemption_and_recompute_keep_outputs_correct() {
    let requests: Vec<NewSequence> = (1..=6)
        .map(|id| new_seq(id, prompt(id as u32, 9 + id as usize * 3), 12))
        .collect();
    let run = |num_blocks| {
        let mut s = scheduler(config(8, 32), num_blocks, 4);
        for r in &requests {
            s.add(r.clone()).unwrap();
        }
        let (done, _) = run_all(&mut s, 4);
        (done, s.preemptions_total(), s.kv().stats())
    };
    let (roomy, roomy_preemptions, _) = run(256);
    let (tight, tight_preemptions, stats) = run(12);
    assert_eq!(roomy_preemptions, 0);
    assert!(
        tight_preemptions > 0,
        "the tight run must exercise preemption"
    );
    assert_eq!(roomy, tight);
    assert_eq!(stats.used_blocks, 0);
}

#[test]
fn fully_cached_prompt_recomputes_its_last_token() {
    let mut s = scheduler(config(8, 64), 64, 4);
    let mut dev = FakeDevice::new(4);
    let p = prompt(5, 8);
    s.add(new_seq(1, p.clone(), 3)).unwrap();
    let cold = run_on(&mut s, &mut dev).0.remove(&1).unwrap();
    s.add(new_seq(2, p, 3)).unwrap();
    let (batch, first) = step(&mut s, &mut dev);
    // Both prompt blocks are cached; the second is recomputed so the last token has logits.
    assert_eq!(
        batch.steps[0],
        ScheduledStep {
            seq: 2,
            start_pos: 4,
            num_tokens: 4,
            want_logits: true
        }
    );
    let warm = run_on(&mut s, &mut dev).0.remove(&2).unwrap();
    assert_eq!(first[0].token, cold.0[0]);
    assert_eq!(warm.0[..], cold.0[1..]);
    assert_eq!(warm.1.cached_tokens, 4);
    assert_eq!(cold.1.cached_tokens, 0);
}

#[test]
fn abort_frees_blocks_everywhere() {
    let mut s = scheduler(config(8, 4), 64, 4);
    let mut dev = FakeDevice::new(4);
    s.add(new_seq(1, prompt(1, 10), 5)).unwrap();
    s.add(new_seq(2, prompt(2, 10), 5)).unwrap();
    step(&mut s, &mut dev);
    assert!(s.kv().stats().used_blocks > 0);
    let f = s.abort(1).unwrap();
    assert_eq!(f.reason, FinishReason::Cancelled);
    assert_eq!(s.abort(2).unwrap().completion_tokens, 0);
    assert_eq!(s.abort(2), None);
    assert_eq!(s.kv().stats().used_blocks, 0);
    assert!(!s.has_work());
    assert!(s.schedule().is_empty());
}

#[test]
fn finish_reasons() {
    let cfg = SchedulerConfig {
        eos_token_ids: vec![],
        max_model_len: 14,
        ..config(8, 64)
    };
    let mut s = scheduler(cfg, 64, 4);
    s.add(new_seq(1, prompt(1, 10), 100)).unwrap();
    let (done, _) = run_all(&mut s, 4);
    assert_eq!(done[&1].1.reason, FinishReason::Length, "context length");
    assert_eq!(done[&1].0.len(), 4);

    // Learn the greedy continuation, then make its third token a stop id / EOS.
    let mut s = scheduler(config(8, 64), 64, 4);
    s.add(new_seq(1, prompt(2, 6), 5)).unwrap();
    let reference = run_all(&mut s, 4).0[&1].0.clone();
    let stop = reference[2];
    let stops_at = |cfg: SchedulerConfig, p: SamplingParams| {
        let mut s = scheduler(cfg, 64, 4);
        s.add(NewSequence {
            id: 1,
            prompt: prompt(2, 6),
            generated: vec![],
            params: p,
        })
        .unwrap();
        run_all(&mut s, 4).0[&1].clone()
    };
    let with_stop = stops_at(
        config(8, 64),
        SamplingParams {
            stop_token_ids: vec![stop],
            ..params(5)
        },
    );
    assert_eq!(
        (with_stop.0.len(), with_stop.1.reason),
        (3, FinishReason::Stop)
    );
    let eos_cfg = SchedulerConfig {
        eos_token_ids: vec![stop],
        ..config(8, 64)
    };
    let with_eos = stops_at(
        eos_cfg.clone(),
        SamplingParams {
            ignore_eos: false,
            ..params(5)
        },
    );
    assert_eq!(
        (with_eos.0.len(), with_eos.1.reason),
        (3, FinishReason::Stop)
    );
    let ignoring = stops_at(eos_cfg, params(5));
    assert_eq!(
        (ignoring.0.len(), ignoring.1.reason),
        (5, FinishReason::Length)
    );
}

#[test]
fn resumed_sequence_continues_and_counts_generated_tokens() {
    let mut s = scheduler(config(8, 64), 64, 4);
    s.add(new_seq(1, prompt(3, 6), 6)).unwrap();
    let full = run_all(&mut s, 4).0[&1].0.clone();
    let mut s = scheduler(config(8, 64), 64, 4);
    s.add(NewSequence {
        id: 1,
        prompt: prompt(3, 6),
        generated: full[..2].to_vec(),
        params: params(6),
    })
    .unwrap();
    let (done, _) = run_all(&mut s, 4);
    let (rest, finish) = &done[&1];
    assert_eq!(rest[..], full[2..]);
    assert_eq!(finish.completion_tokens, 6);
    assert_eq!(finish.prompt_tokens, 6);
}

#[test]
fn bad_sequences_are_rejected_without_changes() {
    let cfg = SchedulerConfig {
        max_model_len: 8,
        ..config(8, 64)
    };
    let mut s = scheduler(cfg, 64, 4);
    assert_eq!(
        s.add(new_seq(1, vec![], 2)),
        Err(ScheduleError::EmptyPrompt)
    );
    assert_eq!(
        s.add(new_seq(1, prompt(1, 8), 2)),
        Err(ScheduleError::TooLong { tokens: 8, max: 8 })
    );
    let resumed_done = NewSequence {
        id: 1,
        prompt: prompt(1, 2),
        generated: vec![1, 2],
        params: params(2),
    };
    assert!(matches!(
        s.add(resumed_done),
        Err(ScheduleError::NothingToGenerate { .. })
    ));
    s.add(new_seq(1, prompt(1, 2), 2)).unwrap();
    assert_eq!(
        s.add(new_seq(1, prompt(1, 2), 2)),
        Err(ScheduleError::Duplicate(1))
    );
    assert_eq!(s.num_waiting(), 1);
}
