//! What one request/response round costs on loopback, latency and CPU: a call through
//! `Endpoint::call` against the bare exchange it is built on, one frame each way on a raw
//! stream that stays open (`open_stream`). Built at two commits, it compares how `call`
//! works at each (before RPC sessions: one QUIC stream per call).
//!
//! The two endpoints run on separate runtimes (2 workers each), as two peers would. CPU is
//! the process's user + system time (`/proc/self/stat`) over the measured rounds, both sides
//! together. Writes `bench/results/rpc-bench-LABEL.json`.
//!
//! `cargo run --release -p stator-transport --example rpc_bench [-- ROUNDS [LABEL]]`

use std::time::Instant;

use stator_transport::{ClusterCa, Endpoint, Method, TransportConfig};

struct Echo;
impl Method for Echo {
    const NAME: &'static str = "bench.echo";
    type Request = Vec<u8>;
    type Response = Vec<u8>;
}

const STREAM: &str = "bench.echo_stream";
const PAYLOAD_BYTES: usize = 256;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Measured {
    name: String,
    callers: usize,
    rounds: usize,
    wall_s: f64,
    cpu_us_per_round: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One line of the table (the header is printed in `main`).
fn row(m: &Measured) -> String {
    format!(
        "{:<12} {:>7} {:>12.0} {:>12.1} {:>10.1} {:>10.1}",
        m.name,
        m.callers,
        m.rounds as f64 / m.wall_s,
        m.cpu_us_per_round,
        m.p50_us,
        m.p99_us
    )
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

async fn run_calls(client: Endpoint, addr: std::net::SocketAddr, rounds: usize) -> Vec<f64> {
    let payload = vec![7u8; PAYLOAD_BYTES];
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let back = client.call::<Echo>(addr, &payload).await.expect("call");
        assert_eq!(back.len(), PAYLOAD_BYTES);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat
}

async fn run_stream(client: Endpoint, addr: std::net::SocketAddr, rounds: usize) -> Vec<f64> {
    let payload = vec![7u8; PAYLOAD_BYTES];
    let (mut send, mut recv) = client.open_stream(addr, STREAM).await.expect("open");
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        send.send_bytes(&payload).await.expect("send");
        let back = recv.recv_bytes().await.expect("recv").expect("frame");
        assert_eq!(back.len(), PAYLOAD_BYTES);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat
}

fn measure(
    client_rt: &tokio::runtime::Runtime,
    client: &Endpoint,
    addr: std::net::SocketAddr,
    stream: bool,
    callers: usize,
    rounds: usize,
) -> Measured {
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let lat: Vec<f64> = client_rt.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let c = client.clone();
                if stream {
                    tokio::spawn(run_stream(c, addr, rounds / callers))
                } else {
                    tokio::spawn(run_calls(c, addr, rounds / callers))
                }
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let mut sorted = lat;
    sorted.sort_by(|a, b| a.total_cmp(b));
    Measured {
        name: if stream { "open stream" } else { "call" }.to_owned(),
        callers,
        rounds: sorted.len(),
        wall_s,
        cpu_us_per_round: cpu * 1e6 / sorted.len() as f64,
        p50_us: percentile(&sorted, 0.5),
        p99_us: percentile(&sorted, 0.99),
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let ca = ClusterCa::generate("bench").expect("CA");
    let server_rt = runtime();
    let client_rt = runtime();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = server_rt.block_on(async {
        let ep = Endpoint::bind(
            any,
            ca.issue_identity(2).expect("identity"),
            TransportConfig::default(),
        )
        .expect("bind");
        ep.register::<Echo, _, _>(|_peer, bytes| async move { Ok(bytes) });
        ep.register_stream(STREAM, |_peer, mut send, mut recv| async move {
            while let Ok(Some(frame)) = recv.recv_bytes().await {
                if send.send_bytes(&frame).await.is_err() {
                    return;
                }
            }
        });
        ep
    });
    let addr = server.local_addr();
    let client = client_rt.block_on(async {
        Endpoint::bind(
            any,
            ca.issue_identity(1).expect("identity"),
            TransportConfig::default(),
        )
        .expect("bind")
    });
    // Warm-up: connection, TLS, pools.
    measure(&client_rt, &client, addr, false, 1, 2_000);
    measure(&client_rt, &client, addr, true, 1, 2_000);

    let mut rows = Vec::new();
    for round in 0..3 {
        for callers in [1usize, 16] {
            for stream in [false, true] {
                let m = measure(&client_rt, &client, addr, stream, callers, rounds);
                eprintln!("round {round}: {}", row(&m));
                rows.push(m);
            }
        }
    }
    println!(
        "{:<12} {:>7} {:>12} {:>12} {:>10} {:>10}",
        "exchange", "callers", "rounds/s", "cpu µs/rnd", "p50 µs", "p99 µs"
    );
    let mut json = Vec::new();
    for callers in [1usize, 16] {
        for name in ["call", "open stream"] {
            let mut of: Vec<&Measured> = rows
                .iter()
                .filter(|m| m.callers == callers && m.name == name)
                .collect();
            // The median round of three by throughput.
            of.sort_by(|a, b| {
                (a.rounds as f64 / a.wall_s).total_cmp(&(b.rounds as f64 / b.wall_s))
            });
            let m = of[of.len() / 2];
            println!("{}", row(m));
            json.push(format!(
                "{{\"exchange\":\"{}\",\"callers\":{},\"rounds_per_s\":{:.0},\"cpu_us_per_round\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
                m.name, m.callers, m.rounds as f64 / m.wall_s, m.cpu_us_per_round, m.p50_us, m.p99_us
            ));
        }
    }
    let label = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "latest".to_owned());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../bench/results/rpc-bench-{label}.json"));
    match std::fs::write(&out, format!("[{}]\n", json.join(",\n "))) {
        Ok(()) => eprintln!("wrote {}", out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
    client.close();
    server.close();
}
