//! CPU backend throughput: prefill tokens/s and decode tokens/s at several batch sizes.
//!
//! ```text
//! cargo run --release -p stator-gpu --example cpu_bench -- [--model FILE.gguf | --random SPEC]
//!     [--prompt-len N] [--decode-steps N] [--batches 1,8,32] [--threads N]
//! ```
//! Without `--model`/`--random` it uses the default SmolLM2 GGUF when present, else random
//! weights of the `smollm2-135m` preset. Prints a table, then one JSON line (for scripts).

use std::time::Instant;

use stator_gpu::backend::cpu::CpuBackend;
use stator_gpu::backend::{Backend, SeqStep};
use stator_gpu::loader::{default_model_path, load_model};
use stator_gpu::presets::parse_random_weights_spec;
use stator_gpu::random_weights::random_weights;

const BLOCK_SIZE: usize = 16;

struct Options {
    model: Option<String>,
    random: Option<String>,
    prompt_len: usize,
    decode_steps: usize,
    batches: Vec<usize>,
    threads: Option<usize>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        model: None,
        random: None,
        prompt_len: 128,
        decode_steps: 32,
        batches: vec![1, 8, 32],
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--model" => options.model = Some(value()?),
            "--random" => options.random = Some(value()?),
            "--prompt-len" => options.prompt_len = number(value()?)?,
            "--decode-steps" => options.decode_steps = number(value()?)?,
            "--threads" => options.threads = Some(number(value()?)?),
            "--batches" => {
                options.batches = value()?
                    .split(',')
                    .map(|b| {
                        b.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--batches: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.prompt_len == 0 || options.decode_steps == 0 || options.batches.contains(&0) {
        return Err("lengths and batch sizes must be positive".into());
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cpu_bench: {e}");
            std::process::exit(2);
        }
    };
    if let Some(threads) = options.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("cpu_bench: cannot size the thread pool: {e}");
        }
    }
    let (name, config, weights) = match (&options.model, &options.random) {
        (Some(path), _) => load(path),
        (None, Some(spec)) => random(spec),
        (None, None) if default_model_path().exists() => {
            load(&default_model_path().display().to_string())
        }
        (None, None) => random("smollm2-135m"),
    };
    let max_batch = options.batches.iter().copied().max().unwrap_or(1);
    let blocks_per_seq = (options.prompt_len + options.decode_steps).div_ceil(BLOCK_SIZE);
    let mut backend = match CpuBackend::new(config, weights, blocks_per_seq * max_batch, BLOCK_SIZE)
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cpu_bench: {e}");
            std::process::exit(1);
        }
    };
    let vocab = backend.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..options.prompt_len as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let table = |seq: usize| -> Vec<u32> {
        ((seq * blocks_per_seq) as u32..((seq + 1) * blocks_per_seq) as u32).collect()
    };

    // Warm up thread pool and scratch buffers.
    run(
        &mut backend,
        &[SeqStep {
            tokens: &prompt[..8.min(prompt.len())],
            start_pos: 0,
            block_table: &table(0),
            want_logits: true,
        }],
    );

    let started = Instant::now();
    run(
        &mut backend,
        &[SeqStep {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table(0),
            want_logits: true,
        }],
    );
    let prefill_tps = options.prompt_len as f64 / started.elapsed().as_secs_f64();

    let mut decode = Vec::new();
    for &batch in &options.batches {
        let tables: Vec<Vec<u32>> = (0..batch).map(table).collect();
        let prefill: Vec<SeqStep> = tables
            .iter()
            .map(|t| SeqStep {
                tokens: &prompt,
                start_pos: 0,
                block_table: t,
                want_logits: false,
            })
            .collect();
        for chunk in prefill.chunks(4) {
            run(&mut backend, chunk);
        }
        let token = [1u32];
        let started = Instant::now();
        for step in 0..options.decode_steps {
            let steps: Vec<SeqStep> = tables
                .iter()
                .map(|t| SeqStep {
                    tokens: &token,
                    start_pos: options.prompt_len + step,
                    block_table: t,
                    want_logits: true,
                })
                .collect();
            run(&mut backend, &steps);
        }
        let seconds = started.elapsed().as_secs_f64();
        decode.push((
            batch,
            (batch * options.decode_steps) as f64 / seconds,
            seconds / options.decode_steps as f64,
        ));
    }

    let threads = rayon::current_num_threads();
    println!(
        "model: {name}  threads: {threads}  prompt: {} tokens  decode: {} steps",
        options.prompt_len, options.decode_steps
    );
    println!(
        "{:<10} {:>6} {:>12} {:>12}",
        "phase", "batch", "tokens/s", "ms/step"
    );
    println!(
        "{:<10} {:>6} {:>12.1} {:>12.1}",
        "prefill",
        1,
        prefill_tps,
        options.prompt_len as f64 / prefill_tps * 1e3
    );
    for (batch, tps, step_s) in &decode {
        println!(
            "{:<10} {:>6} {:>12.1} {:>12.1}",
            "decode",
            batch,
            tps,
            step_s * 1e3
        );
    }
    let decode_json: Vec<String> = decode
        .iter()
        .map(|(b, tps, s)| {
            format!(
                "{{\"batch\":{b},\"tokens_per_s\":{tps:.2},\"ms_per_step\":{:.3}}}",
                s * 1e3
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"cpu_backend\",\"model\":{},\"threads\":{threads},\"prompt_len\":{},\"prefill_tokens_per_s\":{prefill_tps:.2},\"decode\":[{}]}}",
        serde_json::Value::String(name),
        options.prompt_len,
        decode_json.join(",")
    );
}

fn run(backend: &mut CpuBackend, batch: &[SeqStep<'_>]) {
    if let Err(e) = backend.forward(batch) {
        eprintln!("cpu_bench: forward failed: {e}");
        std::process::exit(1);
    }
}

fn load(
    path: &str,
) -> (
    String,
    stator_gpu::config::ModelConfig,
    stator_gpu::weights::ModelWeights,
) {
    match load_model(std::path::Path::new(path)) {
        Ok(m) => (m.name, m.config, m.weights),
        Err(e) => {
            eprintln!("cpu_bench: {e}");
            std::process::exit(1);
        }
    }
}

fn random(
    spec: &str,
) -> (
    String,
    stator_gpu::config::ModelConfig,
    stator_gpu::weights::ModelWeights,
) {
    match parse_random_weights_spec(spec) {
        Ok(config) => {
            let weights = random_weights(&config, 0);
            (format!("random:{spec}"), config, weights)
        }
        Err(e) => {
            eprintln!("cpu_bench: {e}");
            std::process::exit(2);
        }
    }
}
