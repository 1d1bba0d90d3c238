//! A 3-peer `stator` cluster on loopback and its admin-API client.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use super::h2::H2Connection;
use super::process::{free_port, poll_until, MemberProcess};

const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET base/path` on a peer's admin API with its token; the JSON body, or the error status.
pub async fn admin_get(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> Result<Value> {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(ADMIN_TIMEOUT)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("GET {path} on {base}: HTTP {status}: {body}");
    }
    Ok(body)
}

struct StatorPeer {
    process: MemberProcess,
    node_id: u64,
}

/// The admin API of every peer; clones share the connections. Writes go over one HTTP/2
/// connection per peer, as etcd's gRPC writes do (`h2.rs`); the occasional admin reads over
/// HTTP/1.1 keep-alive.
#[derive(Clone)]
pub struct StatorClient {
    http: reqwest::Client,
    /// (base URL, admin token) per peer.
    peers: Vec<(String, String)>,
    /// Per peer; `None` until `connect_writes` (and while a killed peer is down).
    writes: Vec<Option<H2Connection>>,
}

impl StatorClient {
    fn new(peers: Vec<(String, String)>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .build()?;
        let writes = vec![None; peers.len()];
        Ok(Self {
            http,
            peers,
            writes,
        })
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Opens the write connection to `peer` (its HTTP port must be accepting).
    async fn connect_writes(&mut self, peer: usize) -> Result<()> {
        let addr: SocketAddr = self.peers[peer]
            .0
            .trim_start_matches("http://")
            .parse()
            .context("peer base URL is not http://HOST:PORT")?;
        self.writes[peer] = Some(H2Connection::connect(addr, ADMIN_TIMEOUT).await?);
        Ok(())
    }

    /// `PUT /admin/v1/meta/{key}`: Ok once the write is committed and applied.
    pub async fn put(
        &self,
        peer: usize,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let (base, token) = &self.peers[peer];
        let link = self.writes[peer]
            .as_ref()
            .ok_or_else(|| format!("no write connection to {base}"))?;
        let body = serde_json::to_vec(&serde_json::json!({ "value": value }))
            .map_err(|e| format!("request body: {e}"))?;
        let request = hyper::Request::put(format!("{}/admin/v1/meta/{key}", link.base()))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = tokio::time::timeout(timeout, link.send(request))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| format!("transport: {e}"))?;
        let status = response.status();
        if status.as_u16() == 200 {
            Ok(())
        } else {
            Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&response.into_body().to_bytes())
            ))
        }
    }

    async fn admin_get(&self, peer: usize, path: &str) -> Result<Value> {
        let (base, token) = &self.peers[peer];
        admin_get(&self.http, base, token, path).await
    }

    pub async fn status(&self, peer: usize) -> Result<Value> {
        self.admin_get(peer, "/admin/v1/status").await
    }

    /// (member id, status) as the peer's applied state shows them.
    pub async fn member_statuses(&self, peer: usize) -> Result<Vec<(u64, String)>> {
        let members = self.admin_get(peer, "/admin/v1/members").await?;
        members
            .as_array()
            .ok_or_else(|| anyhow!("members is not a list: {members}"))?
            .iter()
            .map(|m| {
                let id = m["id"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("member without id: {m}"))?;
                let status = m["status"]
                    .as_str()
                    .ok_or_else(|| anyhow!("member without status: {m}"))?;
                Ok((id, status.to_string()))
            })
            .collect()
    }

    pub async fn healthy(&self, peer: usize) -> bool {
        let (base, _) = &self.peers[peer];
        matches!(
            self.http.get(format!("{base}/health")).timeout(ADMIN_TIMEOUT).send().await,
            Ok(r) if r.status().as_u16() == 200
        )
    }
}

pub struct StatorCluster {
    peers: Vec<StatorPeer>,
    client: StatorClient,
}

impl StatorCluster {
    /// Bootstraps the first peer, joins the others, waits until every peer is healthy.
    /// `peer_log` is the peers' `STATOR_LOG` filter; their logs are `root/stator{i}.log`.
    pub async fn start(binary: &Path, root: &Path, size: usize, peer_log: &str) -> Result<Self> {
        let mut processes = Vec::new();
        let mut bases = Vec::new();
        let mut first_quic: Option<(SocketAddr, String)> = None;
        for index in 0..size {
            let quic: SocketAddr = format!("127.0.0.1:{}", free_port(true)?).parse()?;
            let http: SocketAddr = format!("127.0.0.1:{}", free_port(false)?).parse()?;
            let data_dir = root.join(format!("stator{index}"));
            let mut args = vec![
                "peer".to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen".into(),
                quic.to_string(),
                "--http".into(),
                http.to_string(),
                "--no-model".into(),
            ];
            if let Some((addr, token)) = &first_quic {
                args.extend([
                    "--join".to_string(),
                    addr.to_string(),
                    "--token".into(),
                    token.clone(),
                ]);
            }
            let envs = vec![("STATOR_LOG".to_string(), peer_log.to_string())];
            let mut process =
                MemberProcess::new(&format!("stator{index}"), binary, args, envs, root);
            process.start()?;
            let base = format!("http://{http}");
            let probe = StatorClient::new(vec![(base.clone(), String::new())])?;
            if poll_until(START_TIMEOUT, Duration::from_millis(50), || async {
                probe.healthy(0).await.then_some(())
            })
            .await
            .is_none()
            {
                bail!(
                    "{} not healthy after {START_TIMEOUT:?}:\n{}",
                    process.name,
                    process.log_tail(30)
                );
            }
            if index == 0 {
                let token = process.join_token().await?;

                first_quic = Some((quic, token));
            }
            let token = std::fs::read_to_string(data_dir.join("admin.token"))
                .context("cannot read admin.token")?
                .trim()
                .to_string();
            bases.push((base, token));
            processes.push(process);
        }
        let mut client = StatorClient::new(bases)?;
        for index in 0..size {
            client.connect_writes(index).await?;
        }
        let mut peers = Vec::new();
        for (index, process) in processes.into_iter().enumerate() {
            let node_id = client.status(index).await?["node_id"]
                .as_u64()
                .ok_or_else(|| anyhow!("status without node_id"))?;
            peers.push(StatorPeer { process, node_id });
        }
        let cluster = Self { peers, client };
        cluster.wait_all_up(START_TIMEOUT).await?;
        Ok(cluster)
    }

    pub fn client(&self) -> StatorClient {
        self.client.clone()
    }

    pub fn node_id(&self, peer: usize) -> u64 {
        self.peers[peer].node_id
    }

    /// The peer that says it leads (asking the others first is not needed: a leader knows).
    pub async fn leader(&self) -> Option<usize> {
        for index in 0..self.peers.len() {
            if let Ok(status) = self.client.status(index).await {
                if status["is_leader"].as_bool() == Some(true) {
                    return Some(index);
                }
            }
        }
        None
    }

    pub fn sigkill(&mut self, peer: usize) -> Result<Instant> {
        self.peers[peer].process.sigkill()
    }

    pub async fn restart(&mut self, peer: usize) -> Result<()> {
        let process = &mut self.peers[peer].process;
        process.reap(Duration::from_secs(5)).await?;
        self.client.writes[peer] = None;
        process.start()?;
        let client = &self.client;
        poll_until(START_TIMEOUT, Duration::from_millis(20), || async {
            client.healthy(peer).await.then_some(())
        })
        .await
        .ok_or_else(|| {
            anyhow!(
                "{} not healthy after restart",
                self.peers[peer].process.name
            )
        })?;
        self.client.connect_writes(peer).await
    }

    /// Every peer healthy, a leader elected, and the leader's state shows every member `up`.
    pub async fn wait_all_up(&self, timeout: Duration) -> Result<()> {
        let ids: Vec<u64> = self.peers.iter().map(|p| p.node_id).collect();
        let ready = poll_until(timeout, Duration::from_millis(20), || async {
            for index in 0..self.peers.len() {
                if !self.client.healthy(index).await {
                    return None;
                }
            }
            let leader = self.leader().await?;
            let statuses = self.client.member_statuses(leader).await.ok()?;
            ids.iter()
                .all(|id| statuses.iter().any(|(m, s)| m == id && s == "up"))
                .then_some(())
        })
        .await;
        ready.ok_or_else(|| {
            let logs: Vec<String> = self
                .peers
                .iter()
                .map(|p| format!("--- {} ---\n{}", p.process.name, p.process.log_tail(15)))
                .collect();
            anyhow!(
                "stator cluster not all up within {timeout:?}\n{}",
                logs.join("\n")
            )
        })
    }
}
