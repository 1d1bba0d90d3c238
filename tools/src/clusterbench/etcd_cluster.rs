//! A 3-member etcd cluster on loopback with etcd's default settings (heartbeat 100 ms,
//! election timeout 1000 ms), reached through its gRPC API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::etcd_client::EtcdConnection;
use super::process::{free_port, poll_until, MemberProcess};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

struct EtcdMember {
    process: MemberProcess,
    client_addr: SocketAddr,
    member_id: u64,
}

pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    connections: Vec<EtcdConnection>,
}

impl EtcdCluster {
    pub async fn start(binary: &Path, root: &Path, size: usize) -> Result<Self> {
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port(false)?, free_port(false)?));
        }
        let initial_cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut processes = Vec::new();
        for (index, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                "--name".to_string(),
                format!("m{index}"),
                "--data-dir".into(),
                root.join(format!("etcd{index}")).display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url,
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url,
                "--initial-cluster".into(),
                initial_cluster.join(","),
                "--initial-cluster-token".into(),
                "stator-clusterbench".into(),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            let mut process =
                MemberProcess::new(&format!("etcd{index}"), binary, args, Vec::new(), root);
            process.start()?;
            processes.push((
                process,
                format!("127.0.0.1:{client}").parse::<SocketAddr>()?,
            ));
        }
        let mut members = Vec::new();
        let mut connections = Vec::new();
        for (process, client_addr) in processes {
            let connection = connect_when_ready(client_addr, &process).await?;
            // A member answers Status only once the cluster has formed.
            let member_id = poll_until(START_TIMEOUT, Duration::from_millis(20), || async {
                connection
                    .status(PROBE_TIMEOUT)
                    .await
                    .ok()
                    .and_then(|(member, _)| member)
            })
            .await
            .ok_or_else(|| {
                anyhow!(
                    "{} gave no member id:\n{}",
                    process.name,
                    process.log_tail(20)
                )
            })?;
            members.push(EtcdMember {
                process,
                client_addr,
                member_id,
            });
            connections.push(connection);
        }
        let cluster = Self {
            members,
            connections,
        };
        for index in 0..size {
            cluster.wait_serving(index, START_TIMEOUT).await?;
        }
        Ok(cluster)
    }

    /// One connection per member; a clone shares them.
    pub fn connections(&self) -> Vec<EtcdConnection> {
        self.connections.clone()
    }

    pub async fn leader(&self) -> Option<usize> {
        for connection in &self.connections {
            if let Ok((_, Some(leader))) = connection.status(PROBE_TIMEOUT).await {
                return self.members.iter().position(|m| m.member_id == leader);
            }
        }
        None
    }

    pub fn sigkill(&mut self, member: usize) -> Result<Instant> {
        self.members[member].process.sigkill()
    }

    /// Starts a killed member again and reconnects to it.
    pub async fn restart(&mut self, member: usize) -> Result<()> {
        let m = &mut self.members[member];
        m.process.reap(Duration::from_secs(5)).await?;
        m.process.start()?;
        self.connections[member] = connect_when_ready(m.client_addr, &m.process).await?;
        Ok(())
    }

    /// Until a linearizable read through `member` succeeds: it has a leader and is caught up.
    pub async fn wait_serving(&self, member: usize, timeout: Duration) -> Result<()> {
        let connection = &self.connections[member];
        poll_until(timeout, Duration::from_millis(20), || async {
            connection
                .get(b"clusterbench-probe", PROBE_TIMEOUT)
                .await
                .ok()
        })
        .await
        .ok_or_else(|| {
            let p = &self.members[member].process;
            anyhow!(
                "{} not serving within {timeout:?}:\n{}",
                p.name,
                p.log_tail(20)
            )
        })
    }

    pub async fn wait_all_serving(&self, timeout: Duration) -> Result<()> {
        for member in 0..self.members.len() {
            self.wait_serving(member, timeout).await?;
        }
        Ok(())
    }
}

async fn connect_when_ready(addr: SocketAddr, process: &MemberProcess) -> Result<EtcdConnection> {
    match poll_until(START_TIMEOUT, Duration::from_millis(20), || async {
        EtcdConnection::connect(addr, PROBE_TIMEOUT).await.ok()
    })
    .await
    {
        Some(connection) => Ok(connection),
        None => bail!(
            "{} accepts no connection on {addr}:\n{}",
            process.name,
            process.log_tail(20)
        ),
    }
}
