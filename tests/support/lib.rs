//! Harness for integration tests: real `stator` processes on loopback with random ports and
//! temporary data dirs, killed for real.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod stream;
use serde_json::Value;
pub use stream::{stream_completion, Seen, Stream};

/// Cluster tests start several processes each; running them one at a time keeps elections
/// honest on a 2-core machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Path of the `stator` binary built next to this test binary (`cargo build --bins` first).
pub fn stator_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STATOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/stator
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("stator");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bins` before the integration tests (tools/test.sh does)",
        bin.display()
    );
    bin
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `stator peer` process.
pub struct Peer {
    pub name: String,
    pub data_dir: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub extra_args: Vec<String>,
    pub join: Option<(SocketAddr, String)>,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Peer {
    pub fn new(root: &Path, name: &str) -> Self {
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        Self {
            name: name.to_string(),
            data_dir: root.join(name),
            quic,
            http,
            extra_args: vec!["--no-model".into()],
            join: None,
            child: None,
            log_path: root.join(format!("{name}.log")),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Starts the process (again, after a kill, on the same ports and data dir).
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(stator_bin());
        cmd.arg("peer")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.quic.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .args(&self.extra_args)
            .env("STATOR_LOG", "info,openraft=warn,sled=warn,quinn=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((addr, token)) = &self.join {
            cmd.arg("--join")
                .arg(addr.to_string())
                .arg("--token")
                .arg(token);
        }
        self.child = Some(cmd.spawn().context("cannot start stator")?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for the process to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    return Ok(status.code());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not exit within {timeout:?}", self.name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn admin_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.join("admin.token"))?
            .trim()
            .to_string())
    }

    /// The join token printed at bootstrap.
    pub fn printed_join_token(&self) -> Option<String> {
        self.log().lines().find_map(|l| {
            l.trim()
                .strip_prefix("join token:")
                .map(|t| t.trim().to_string())
        })
    }

    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(&format!("{}/health", self.url()), None) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} not healthy after {timeout:?} (last: {last})\n--- log ---\n{}",
            self.name,
            self.log()
        )
    }

    /// An admin API call with this peer's token.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let token = self.admin_token()?;
        let (code, text) = http_request(
            method,
            &format!("{}{}", self.url(), path),
            Some(&token),
            body,
        )?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((code, v))
    }

    pub fn status(&self) -> Result<Value> {
        let (code, v) = self.admin("GET", "/admin/v1/status", None)?;
        if code != 200 {
            bail!("status {code}: {v}");
        }
        Ok(v)
    }

    pub fn members(&self) -> Result<Vec<Value>> {
        let (code, v) = self.admin("GET", "/admin/v1/members", None)?;
        if code != 200 {
            bail!("members {code}: {v}");
        }
        v.as_array()
            .cloned()
            .ok_or_else(|| anyhow!("not a list: {v}"))
    }

    pub fn node_id(&self) -> Result<u64> {
        self.status()?["node_id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no node id"))
    }

    pub fn put(&self, key: &str, value: &str) -> Result<u64> {
        let (code, v) = self.admin(
            "PUT",
            &format!("/admin/v1/meta/{key}"),
            Some(serde_json::json!({"value": value})),
        )?;
        if code != 200 {
            bail!("put {key}: {code} {v}");
        }
        v["index"]
            .as_u64()
            .ok_or_else(|| anyhow!("no index in {v}"))
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let (code, v) = self.admin("GET", &format!("/admin/v1/meta/{key}"), None)?;
        match code {
            200 => Ok(v["value"].as_str().map(str::to_string)),
            404 => Ok(None),
            _ => bail!("get {key}: {code} {v}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of peers under one temp dir.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub peers: Vec<Peer>,
    pub token: String,
}

/// Bootstraps a peer with `args[0]` and joins one more per further entry of `args` (peer `i`
/// gets `args[i]`), each waited on until healthy: for clusters whose peers differ (roles,
/// models). Peers load models, so each gets `health_timeout` to come up.
pub fn start_peers(
    root: &Path,
    args: Vec<Vec<String>>,
    health_timeout: Duration,
) -> Result<Vec<Peer>> {
    let mut peers: Vec<Peer> = Vec::with_capacity(args.len());
    let mut token = String::new();
    for (i, extra_args) in args.into_iter().enumerate() {
        let mut p = Peer::new(root, &format!("p{i}"));
        p.extra_args = extra_args;
        if let Some(first) = peers.first() {
            p.join = Some((first.quic, token.clone()));
        }
        p.start()?;
        p.wait_healthy(health_timeout)?;
        if i == 0 {
            token = wait_for(Duration::from_secs(5), || p.printed_join_token())
                .ok_or_else(|| anyhow!("no join token printed:\n{}", p.log()))?;
        }
        peers.push(p);
    }
    Ok(peers)
}

/// Waits until every one of `peers` has logged its worker's registration.
pub fn wait_workers_registered(peers: &[Peer], timeout: Duration) -> Result<()> {
    for p in peers {
        let registered = wait_for(timeout, || {
            p.log().contains("worker registered").then_some(())
        });
        if registered.is_none() {
            bail!("{} never registered its worker:\n{}", p.name, p.log());
        }
    }
    Ok(())
}

impl Cluster {
    /// Bootstraps the first peer and joins `n - 1` more, waiting until all are healthy.
    pub fn start(n: usize, extra_args: &[&str]) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let mut first = Peer::new(root.path(), "p0");
        first
            .extra_args
            .extend(extra_args.iter().map(|s| s.to_string()));
        first.start()?;
        first.wait_healthy(Duration::from_secs(20))?;
        let token = wait_for(Duration::from_secs(5), || first.printed_join_token())
            .ok_or_else(|| anyhow!("no join token printed:\n{}", first.log()))?;
        let mut cluster = Self {
            root,
            peers: vec![first],
            token,
        };
        for _ in 1..n {
            cluster.add_peer(extra_args)?;
        }
        Ok(cluster)
    }

    pub fn add_peer(&mut self, extra_args: &[&str]) -> Result<usize> {
        let i = self.peers.len();
        let mut p = Peer::new(self.root.path(), &format!("p{i}"));
        p.extra_args
            .extend(extra_args.iter().map(|s| s.to_string()));
        p.join = Some((self.peers[0].quic, self.token.clone()));
        p.start()?;
        p.wait_healthy(Duration::from_secs(30))?;
        self.peers.push(p);
        Ok(i)
    }

    /// Index of the peer that is leader, as seen by any live peer.
    pub fn leader(&mut self) -> Option<usize> {
        let ids: Vec<Option<u64>> = self.peers.iter().map(|p| p.node_id().ok()).collect();
        for p in self.peers.iter_mut() {
            if !p.is_running() {
                continue;
            }
            if let Ok(s) = p.status() {
                if let Some(l) = s["leader_id"].as_u64() {
                    return ids.iter().position(|id| *id == Some(l));
                }
            }
        }
        None
    }

    pub fn live_peer(&mut self) -> Option<&Peer> {
        let i = (0..self.peers.len()).find(|&i| self.peers[i].is_running())?;
        Some(&self.peers[i])
    }
}

/// The default model as `tools/fetch-model.sh` installs it. Panics when it is missing: CI
/// installs it, and a silently skipped test proves nothing.
pub fn default_model() -> PathBuf {
    let dir = std::env::var_os("STATOR_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("stator/models")
        });
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the default model is not installed: run tools/fetch-model.sh"
    );
    p
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sum of the samples of `name` on the peer's /metrics whose labels contain `label` (empty:
/// all of them); 0 when absent or when the peer does not answer.
pub fn metric_sum(peer: &Peer, name: &str, label: &str) -> f64 {
    let Ok((200, body)) = http_get(&format!("{}/metrics", peer.url()), None) else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(url: &str, token: Option<&str>) -> Result<(u16, String)> {
    http_request("GET", url, token, None)
}

/// A blocking HTTP request with a deadline (tests are synchronous).
pub fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut req = client.request(method.parse()?, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await?))
    })
}
