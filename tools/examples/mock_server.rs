//! The test suite's mock OpenAI server, runnable by hand to try `stator-bench` without a model:
//!
//! ```text
//! cargo run -p stator-tools --example mock_server -- 60 20      # TTFT 60 ms, ITL 20 ms
//! stator-bench run --url http://127.0.0.1:<printed port> --model mock --rate 10 --duration 10
//! ```

#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let (ttft_ms, itl_ms) = match (numbers.next(), numbers.next()) {
        (None, _) => (60, 20),
        (Some(Ok(ttft)), Some(Ok(itl))) => (ttft, itl),
        _ => {
            eprintln!("usage: mock_server [TTFT_MS ITL_MS]");
            std::process::exit(2);
        }
    };
    let server = support::start(support::Cadence::new(ttft_ms, itl_ms)).await;
    println!("{}", server.url);
    let _ = tokio::signal::ctrl_c().await;
}
