//! Four `stator peer` processes serving a model on loopback: p0 is the frontend clients talk to
//! (`--request-leases`), every peer runs a worker. Peers can be SIGKILLed and restarted on the
//! same ports and data dir (they rejoin by themselves).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::timeline::worker_registrations;
use crate::clusterbench::process::{free_port, poll_until, MemberProcess};

use crate::clusterbench::stator_cluster::{admin_get, ADMIN_TIMEOUT};

#[derive(Clone, Debug)]
pub struct PeerSettings {
    pub binary: PathBuf,
    pub model: PathBuf,
    pub down_after_ms: u64,
    pub kv_cache_mib: usize,
    /// RAYON_NUM_THREADS of each engine: four engines share the machine's cores.
    pub engine_threads: usize,
    /// How long a (re)started peer may take to load the model and register its worker.
    pub start_timeout: Duration,
    /// Appended to every peer's command line (e.g. `--device cpu` on a machine with a GPU).
    pub extra_args: Vec<String>,
}

struct ModelPeer {
    process: MemberProcess,
    base_url: String,
    admin_token: String,
    node_id: u64,
    /// Worker registrations logged so far; one more is expected after each start.
    registrations: usize,
}

pub struct ModelCluster {
    peers: Vec<ModelPeer>,
    http: reqwest::Client,
    settings: PeerSettings,
}

impl ModelCluster {
    pub async fn start(settings: &PeerSettings, root: &Path, size: usize) -> Result<Self> {
        let http = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .build()?;
        let mut cluster = Self {
            peers: Vec::new(),
            http,
            settings: settings.clone(),
        };
        let mut join: Option<(SocketAddr, String)> = None;
        for index in 0..size {
            let quic: SocketAddr = format!("127.0.0.1:{}", free_port(true)?).parse()?;
            let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port(false)?).parse()?;
            let data_dir = root.join(format!("p{index}"));
            let mut args: Vec<String> = vec![
                "peer".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen".into(),
                quic.to_string(),
                "--http".into(),
                http_addr.to_string(),
                "--model".into(),
                settings.model.display().to_string(),
                "--kv-cache-mib".into(),
                settings.kv_cache_mib.to_string(),
                "--down-after-ms".into(),
                settings.down_after_ms.to_string(),
            ];
            args.extend(settings.extra_args.iter().cloned());
            if index == 0 {
                args.push("--request-leases".into());
            }
            if let Some((addr, token)) = &join {
                args.extend([
                    "--join".into(),
                    addr.to_string(),
                    "--token".into(),
                    token.clone(),
                ]);
            }
            let envs = vec![
                (
                    "STATOR_LOG".to_string(),
                    "info,openraft=warn,sled=warn,quinn=warn".to_string(),
                ),
                (
                    "RAYON_NUM_THREADS".to_string(),
                    settings.engine_threads.to_string(),
                ),
            ];
            let mut process =
                MemberProcess::new(&format!("p{index}"), &settings.binary, args, envs, root);
            process.start()?;
            let base_url = format!("http://{http_addr}");
            cluster.peers.push(ModelPeer {
                process,
                base_url,
                admin_token: String::new(),
                node_id: 0,
                registrations: 0,
            });
            cluster.wait_started(index).await?;
            if index == 0 {
                let process = &cluster.peers[0].process;
                let token = process.join_token().await?;
                join = Some((quic, token));
            }
            let token_file = data_dir.join("admin.token");
            cluster.peers[index].admin_token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("cannot read {}", token_file.display()))?
                .trim()
                .to_string();
            cluster.peers[index].node_id = cluster.status(index).await?["node_id"]
                .as_u64()
                .ok_or_else(|| anyhow!("status without node_id"))?;
        }
        cluster.wait_all_up(settings.start_timeout).await?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn base_url(&self, peer: usize) -> &str {
        &self.peers[peer].base_url
    }

    pub fn node_id(&self, peer: usize) -> u64 {
        self.peers[peer].node_id
    }

    pub fn log(&self, peer: usize) -> String {
        self.peers[peer].process.log()
    }

    pub fn log_tail(&self, peer: usize, lines: usize) -> String {
        self.peers[peer].process.log_tail(lines)
    }

    /// Healthy over HTTP and one more worker registration logged than before this start.
    async fn wait_started(&mut self, peer: usize) -> Result<()> {
        let want = self.peers[peer].registrations + 1;
        let timeout = self.settings.start_timeout;
        let started = poll_until(timeout, Duration::from_millis(50), || async {
            let p = &self.peers[peer];
            let registered = worker_registrations(&p.process.log()) >= want;
            (registered && self.healthy(peer).await).then_some(())
        })
        .await;
        if started.is_none() {
            bail!(
                "p{peer} did not serve and register its worker within {timeout:?}:\n{}",
                self.log_tail(peer, 30)
            );
        }
        self.peers[peer].registrations = want;
        Ok(())
    }

    async fn healthy(&self, peer: usize) -> bool {
        let url = format!("{}/health", self.peers[peer].base_url);
        matches!(
            self.http.get(url).timeout(ADMIN_TIMEOUT).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    async fn admin_get(&self, peer: usize, path: &str) -> Result<Value> {
        let p = &self.peers[peer];
        admin_get(&self.http, &p.base_url, &p.admin_token, path)
            .await
            .with_context(|| format!("peer p{peer}"))
    }

    pub async fn status(&self, peer: usize) -> Result<Value> {
        self.admin_get(peer, "/admin/v1/status").await
    }

    /// The status (`up`, `down`, `left`) of node `id` in `peer`'s applied state.
    pub async fn member_status(&self, peer: usize, id: u64) -> Result<Option<String>> {
        let members = self.admin_get(peer, "/admin/v1/members").await?;
        let list = members
            .as_array()
            .ok_or_else(|| anyhow!("members is not a list: {members}"))?;
        Ok(list
            .iter()
            .find(|m| m["id"].as_u64() == Some(id))
            .and_then(|m| m["status"].as_str())
            .map(str::to_ascii_lowercase))
    }

    /// The peer that says it leads.
    pub async fn leader(&self) -> Option<usize> {
        for peer in 0..self.peers.len() {
            if let Ok(status) = self.status(peer).await {
                if status["is_leader"].as_bool() == Some(true) {
                    return Some(peer);
                }
            }
        }
        None
    }

    /// Sum of every sample of metric `name` on the peer's /metrics.
    pub async fn metric(&self, peer: usize, name: &str) -> Result<f64> {
        let url = format!("{}/metrics", self.peers[peer].base_url);
        let body = self
            .http
            .get(url)
            .timeout(ADMIN_TIMEOUT)
            .send()
            .await?
            .text()
            .await?;
        Ok(sum_of_samples(&body, name))
    }

    /// SIGKILL; the instant the signal went out.
    pub fn sigkill(&mut self, peer: usize) -> Result<Instant> {
        self.peers[peer].process.sigkill()
    }

    /// Starts a killed peer again (it rejoins from its data dir) and waits until it serves,
    /// its worker registered again and the leader shows every member up.
    pub async fn restart(&mut self, peer: usize) -> Result<()> {
        self.peers[peer]
            .process
            .reap(Duration::from_secs(5))
            .await?;
        self.peers[peer].process.start()?;
        self.wait_started(peer).await?;
        self.wait_all_up(self.settings.start_timeout).await
    }

    pub async fn wait_all_up(&self, timeout: Duration) -> Result<()> {
        let ids: Vec<u64> = self.peers.iter().map(|p| p.node_id).collect();
        let up = poll_until(timeout, Duration::from_millis(20), || async {
            let leader = self.leader().await?;
            for id in &ids {
                if self.member_status(leader, *id).await.ok()?.as_deref() != Some("up") {
                    return None;
                }
            }
            Some(())
        })
        .await;
        up.ok_or_else(|| anyhow!("not every member up within {timeout:?}"))
    }
}

/// Prometheus text: the sum of the samples of `name` (any labels); 0 when absent.
pub fn sum_of_samples(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_are_summed_by_exact_name() {
        let body = "# TYPE stator_worker_streams_active gauge\n\
                    stator_worker_streams_active 2\n\
                    stator_worker_streams_active_total 40\n\
                    stator_migration_total{reason=\"reassigned\"} 3\n\
                    stator_migration_total{reason=\"connect\"} 1\n";
        assert_eq!(sum_of_samples(body, "stator_worker_streams_active"), 2.0);
        assert_eq!(sum_of_samples(body, "stator_migration_total"), 4.0);
        assert_eq!(sum_of_samples(body, "stator_absent"), 0.0);
    }
}
