//! Where does bf16 lose accuracy on SmolLM2? (issue 4) Runs the CPU backend with values
//! rounded at chosen points of the forward pass and compares each prompt's last-token logits
//! after prefill with the exact f32 pass: relative L2 error sqrt(Σ(a−b)² / Σb²), the measure
//! and the 1e-2 bound of the CUDA check (examples/cuda_check.rs, same three prompts).
//!
//! One prompt's error is one draw of rounding noise: which values round up or down differs
//! between this emulation and the GPU (accumulation order, exp2 vs exp, online softmax), and
//! the error of one draw varies by 2-3x. So every plan also runs on a broader set of prompts
//! and with several draws of the activations' noise (`RoundingPlan::with_realization`; weights
//! round to nearest as the device's loader does), whose RMS, maximum and count over the bound
//! say what a plan costs typically and at worst.
//!
//! ```text
//! cargo run --release -p stator-gpu --example bf16_study -- [--gguf PATH] [--realizations N]
//! ```
//! Without `--gguf` it reads the default SmolLM2 GGUF (tools/fetch-model.sh installs it).

use std::path::PathBuf;
use std::time::Instant;

use stator_gpu::backend::cpu::{CpuBackend, Precision, RoundingPlan, RoundingPoint};
use stator_gpu::backend::{Backend, SeqStep};
use stator_gpu::config::ModelConfig;
use stator_gpu::loader::{default_model_path, load_model};
use stator_gpu::weights::ModelWeights;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The CUDA check's prompts: the bound applies to these.
const CHECK_PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
];
/// More prompts of varied kind and length, for the typical and worst error of a plan.
const BROAD_PROMPTS: [&str; 21] = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at a temperature of",
    "import numpy as np\nx = np.array([1, 2, 3])\nprint(",
    "The three primary colors are",
    "In 1969, the first humans landed on",
    "Translate to French: Good morning, how are you?",
    "SELECT name, age FROM users WHERE",
    "My favourite recipe for chocolate cake starts with",
    "The mitochondria is the powerhouse of",
    "Q: What is 12 times 12?\nA:",
    "Dear hiring manager, I am writing to apply for the position of",
    "fn main() {\n    let v = vec![1, 2, 3];\n    for x in",
    "The theory of relativity was developed by",
    "Here is a list of the planets in our solar system: Mercury, Venus,",
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals,",
    "Photosynthesis converts light energy into",
    "<html><head><title>",
    "The best way to learn a new language is",
    "Once upon a time there was a dragon who",
    "The stock market fell sharply today after",
    "Summarize: The meeting was moved from Tuesday to Thursday because the projector broke.",
];
const BOUND: f64 = 1e-2;
const BLOCK_SIZE: usize = 16;

use Precision::{Bf16, F16, F32};
use RoundingPoint as P;

/// Where the CUDA backend stores 16-bit values in a prefill step (gpu/src/backend/cuda as of
/// this study): every weight matrix, the norm outputs (GEMM inputs), Q and the KV cache, P in
/// the P·V mma, the attention output, the gate/up GEMM output and SwiGLU's output. The
/// QKV, o_proj, down and logits GEMMs write f32 (o_proj and down straight into the residual).
const CUDA_POINTS: [RoundingPoint; 11] = [
    P::EmbedWeights,
    P::LayerWeights,
    P::LmHeadWeights,
    P::NormOutput,
    P::Query,
    P::KeyValue,
    P::AttentionProbs,
    P::AttentionOutput,
    P::GateUpOutput,
    P::SwigluOutput,
    P::FinalNormOutput,
];

fn cuda_plan(precision: Precision) -> RoundingPlan {
    RoundingPlan::default().with_all(&CUDA_POINTS, precision)
}

struct Study {
    config: ModelConfig,
    weights: ModelWeights,
    prompts: Vec<Vec<u32>>,
    exact: Vec<Vec<f32>>,
    /// Draws of rounding noise per plan: 0 (plain round-to-nearest), 1, 2, ...
    realizations: u32,
    rows: Vec<Row>,
}

struct Row {
    section: &'static str,
    name: String,
    plan: RoundingPlan,
    /// `[realization][prompt]`, the check prompts first in each.
    errors: Vec<Vec<f64>>,
    /// (realization, prompt) pairs whose greedy next token differs from the exact pass.
    top1_flips: usize,
}

impl Row {
    /// Plain round-to-nearest on the check prompts: this study's stand-in for the CUDA check.
    fn check_errors(&self) -> &[f64] {
        &self.errors[0][..CHECK_PROMPTS.len()]
    }
    fn worst(&self) -> f64 {
        self.check_errors().iter().copied().fold(0.0, f64::max)
    }
    /// How many (realization, check prompt) draws exceed the bound, and out of how many.
    fn check_draws_over(&self) -> (usize, usize) {
        let draws = self.errors.iter().flat_map(|e| &e[..CHECK_PROMPTS.len()]);
        let total = self.errors.len() * CHECK_PROMPTS.len();
        (draws.filter(|&&e| e > BOUND).count(), total)
    }
    fn all(&self) -> impl Iterator<Item = f64> + '_ {
        self.errors.iter().flatten().copied()
    }
    fn all_rms(&self) -> f64 {
        let n = self.all().count().max(1) as f64;
        (self.all().map(|e| e * e).sum::<f64>() / n).sqrt()
    }
    fn all_max(&self) -> f64 {
        self.all().fold(0.0, f64::max)
    }
    fn all_over_bound(&self) -> usize {
        self.all().filter(|&e| e > BOUND).count()
    }
    /// Whether any activation is rounded (else the plan is the bf16-weight floor, not
    /// something a 16-bit device can run).
    fn rounds_activations(&self) -> bool {
        self.plan
            .rounded()
            .any(|(p, _)| !RoundingPoint::WEIGHTS.contains(&p))
    }
    fn keeps_bf16_weights(&self) -> bool {
        RoundingPoint::WEIGHTS
            .iter()
            .all(|&p| self.plan.at(p) == Bf16)
    }
}

impl Study {
    /// The last-token logits of each prompt's prefill under `plan` (`None`: the plain backend).
    fn logits(&self, plan: Option<RoundingPlan>) -> Res<Vec<Vec<f32>>> {
        let longest = self.prompts.iter().map(Vec::len).max().unwrap_or(1);
        let blocks = longest.div_ceil(BLOCK_SIZE).max(1);
        let (config, weights) = (self.config.clone(), self.weights.clone());
        let mut backend = match plan {
            Some(plan) => CpuBackend::with_rounding(config, weights, blocks, BLOCK_SIZE, plan)?,
            None => CpuBackend::new(config, weights, blocks, BLOCK_SIZE)?,
        };
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut out = Vec::new();
        for prompt in &self.prompts {
            let logits = backend.forward(&[SeqStep {
                tokens: prompt,
                start_pos: 0,
                block_table: &table,
                want_logits: true,
            }])?;
            out.push(logits.row(0).to_vec());
        }
        Ok(out)
    }

    fn measure(&mut self, section: &'static str, name: String, plan: RoundingPlan) -> Res<()> {
        let mut errors = Vec::new();
        let mut top1_flips = 0;
        for realization in 0..self.realizations {
            let logits = self.logits(Some(plan.with_realization(realization)))?;
            errors.push(
                logits
                    .iter()
                    .zip(&self.exact)
                    .map(|(a, b)| relative_l2(a, b))
                    .collect(),
            );
            top1_flips += logits
                .iter()
                .zip(&self.exact)
                .filter(|(a, b)| argmax(a) != argmax(b))
                .count();
        }
        let row = Row {
            section,
            name,
            plan,
            errors,
            top1_flips,
        };
        print_row(&row);
        self.rows.push(row);
        Ok(())
    }
}

fn relative_l2(actual: &[f32], reference: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&a, &b) in actual.iter().zip(reference) {
        let (a, b) = (a as f64, b as f64);
        diff += (a - b) * (a - b);
        norm += b * b;
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

fn print_header(samples: usize) {
    println!(
        "{:<9} {:<40} {:>8} {:>8} {:>8} {:>8} {:<4} {:>6} | {:>8} {:>8} {:>6} {:>5}",
        "section",
        "plan",
        "prompt0",
        "prompt1",
        "prompt2",
        "worst3",
        "pass",
        "chk>",
        "rms",
        "max",
        format!(">/{samples}"),
        "top1≠"
    );
}

fn print_row(row: &Row) {
    print!("{:<9} {:<40}", row.section, row.name);
    for e in row.check_errors() {
        print!(" {e:>8.2e}");
    }
    let (over, draws) = row.check_draws_over();
    println!(
        " {:>8.2e} {:<4} {:>6} | {:>8.2e} {:>8.2e} {:>6} {:>5}",
        row.worst(),
        if row.worst() <= BOUND { "yes" } else { "no" },
        format!("{over}/{draws}"),
        row.all_rms(),
        row.all_max(),
        row.all_over_bound(),
        row.top1_flips
    );
}

/// A plan's rounded points, e.g. "cuda-now − probs" is easier to read than its full list.
fn describe(plan: &RoundingPlan) -> String {
    let parts: Vec<String> = plan
        .rounded()
        .map(|(p, precision)| format!("{}:{}", p.name(), precision.name()))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

fn run_study(study: &mut Study) -> Res<()> {
    let weights_bf16 = RoundingPlan::default().with_all(&RoundingPoint::WEIGHTS, Bf16);
    study.measure(
        "ref",
        "nothing rounded (probe on)".into(),
        RoundingPlan::default(),
    )?;
    study.measure("ref", "all 14 points bf16".into(), RoundingPlan::all(Bf16))?;
    study.measure(
        "ref",
        "cuda-now (CUDA backend's roundings)".into(),
        cuda_plan(Bf16),
    )?;
    study.measure("ref", "cuda-now, all in f16".into(), cuda_plan(F16))?;
    study.measure("ref", "weights bf16 only".into(), weights_bf16)?;
    study.measure(
        "ref",
        "cuda-now activations, weights f32".into(),
        cuda_plan(Bf16).with_all(&RoundingPoint::WEIGHTS, F32),
    )?;

    for &point in &RoundingPoint::ALL {
        let plan = RoundingPlan::default().with(point, Bf16);
        study.measure("alone", format!("{} bf16", point.name()), plan)?;
    }
    for &point in &RoundingPoint::ALL {
        let plan = RoundingPlan::all(Bf16).with(point, F32);
        study.measure("all-but", format!("all bf16, {} f32", point.name()), plan)?;
    }
    for &point in &CUDA_POINTS {
        let plan = cuda_plan(Bf16).with(point, F32);
        study.measure("cuda-but", format!("cuda-now, {} f32", point.name()), plan)?;
    }

    // Candidates that keep every weight matrix in bf16. "Split" = a GEMM input kept f32 by
    // feeding it as two bf16 halves (hi + lo), i.e. twice the GEMM arithmetic.
    let gemm_inputs = [
        P::NormOutput,
        P::AttentionOutput,
        P::SwigluOutput,
        P::FinalNormOutput,
    ];
    let candidates: Vec<(&str, RoundingPlan)> = vec![
        (
            "A: cuda-now, norm outputs f32 (split)",
            cuda_plan(Bf16).with_all(&[P::NormOutput, P::FinalNormOutput], F32),
        ),
        (
            "B: cuda-now, P f16",
            cuda_plan(Bf16).with(P::AttentionProbs, F16),
        ),
        (
            "C: cuda-now, gate_up f32, P f16",
            cuda_plan(Bf16)
                .with(P::GateUpOutput, F32)
                .with(P::AttentionProbs, F16),
        ),
        (
            "D: C + q,kv f16 (attention in f16)",
            cuda_plan(Bf16)
                .with(P::GateUpOutput, F32)
                .with_all(&[P::AttentionProbs, P::Query, P::KeyValue], F16),
        ),
        (
            "E: bf16-valued weights, activations f16",
            cuda_plan(F16).with_all(&RoundingPoint::WEIGHTS, Bf16),
        ),
        (
            "F: cuda-now, all GEMM inputs f32 (split)",
            cuda_plan(Bf16).with_all(&gemm_inputs, F32),
        ),
        (
            "G: F + gate_up f32 + P f16",
            cuda_plan(Bf16)
                .with_all(&gemm_inputs, F32)
                .with(P::GateUpOutput, F32)
                .with(P::AttentionProbs, F16),
        ),
    ];
    for (name, plan) in candidates {
        study.measure("candidate", name.into(), plan)?;
    }
    Ok(())
}

fn verdict(study: &Study) {
    println!("\n=== verdict (bound {BOUND:.0e}) ===");
    let mut keeping: Vec<&Row> = study
        .rows
        .iter()
        .filter(|r| r.keeps_bf16_weights())
        .collect();
    keeping.sort_by(|a, b| a.all_rms().total_cmp(&b.all_rms()));
    let samples = study.prompts.len() * study.realizations as usize;
    println!("plans that keep every weight matrix in bf16, lowest RMS over {samples} draws first:");
    for row in &keeping {
        let (over, draws) = row.check_draws_over();
        println!(
            "  {:<40} rms {:.2e} max {:.2e} over {:>3}/{samples} | check prompts over {over}/{draws}",
            row.name,
            row.all_rms(),
            row.all_max(),
            row.all_over_bound(),
        );
    }
    let runnable = keeping.iter().filter(|r| r.rounds_activations());
    let verdicts: [(&str, Option<&&Row>); 2] = [
        (
            "bf16 weights and bf16 activations",
            runnable
                .clone()
                .find(|r| r.check_draws_over().0 == 0 && r.plan.at(P::Query) == Bf16),
        ),
        (
            "bf16 weights",
            runnable.clone().find(|r| r.check_draws_over().0 == 0),
        ),
    ];
    for (what, best) in verdicts {
        match best {
            Some(best) => println!(
                "lowest-RMS plan with {what} under {BOUND:.0e} on every draw of the check \
                 prompts: {}\n  rounds: {}",
                best.name,
                describe(&best.plan)
            ),
            None => println!(
                "NO plan with {what} stays under {BOUND:.0e} on every draw of the three check \
                 prompts."
            ),
        }
    }
    println!("check prompts per draw of the activation noise (prompt0 prompt1 prompt2):");
    let shown = study
        .rows
        .iter()
        .filter(|r| r.section == "ref" || r.section == "candidate");
    for row in shown.filter(|r| r.rounds_activations()) {
        let draws: Vec<String> = row
            .errors
            .iter()
            .map(|e| {
                let check: Vec<String> = e[..CHECK_PROMPTS.len()]
                    .iter()
                    .map(|v| format!("{v:.1e}"))
                    .collect();
                check.join(" ")
            })
            .collect();
        println!("  {:<40} {}", row.name, draws.join(" | "));
    }
    if let Some(floor) = keeping.iter().find(|r| !r.rounds_activations()) {
        println!(
            "floor (bf16 weights, exact activations): rms {:.2e}, max {:.2e}, over {BOUND:.0e} \
             on {} of {samples} draws",
            floor.all_rms(),
            floor.all_max(),
            floor.all_over_bound()
        );
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).ok_or(format!("{flag} needs a value")))
            .transpose()
    };
    let path = value("--gguf")?.map_or_else(default_model_path, PathBuf::from);
    let realizations: u32 = value("--realizations")?.map_or(Ok(3), |v| v.parse())?;
    if realizations == 0 {
        return Err("--realizations must be at least 1".into());
    }
    let started = Instant::now();
    let model = load_model(&path)?;
    let prompts: Vec<Vec<u32>> = CHECK_PROMPTS
        .iter()
        .chain(&BROAD_PROMPTS)
        .map(|t| model.tokenizer.encode(t, true))
        .collect::<Result<_, _>>()?;
    println!(
        "{} ({} layers): relative L2 error of the last-token logits after prefill vs the exact \
         f32 CPU pass.\nprompt0-2: the CUDA check's prompts (lengths {:?}), plain rounding; \
         chk>: draws of those over {BOUND:.0e};\nrms/max/>: over {} prompts (lengths {}-{}) \
         x {realizations} draws of activation rounding noise; top1≠: draws whose argmax changed",
        model.name,
        model.config.num_layers,
        prompts[..CHECK_PROMPTS.len()]
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
        prompts.len(),
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
    );
    let samples = prompts.len() * realizations as usize;
    let mut study = Study {
        config: model.config,
        weights: model.weights,
        prompts,
        exact: Vec::new(),
        realizations,
        rows: Vec::new(),
    };
    study.exact = study.logits(None)?;
    print_header(samples);
    run_study(&mut study)?;
    verdict(&study);
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
