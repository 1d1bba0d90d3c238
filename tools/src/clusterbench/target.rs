//! The two systems under test behind one face: start, write, find the leader, kill, restart.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::etcd_client::EtcdConnection;
use super::etcd_cluster::EtcdCluster;
use super::stator_cluster::{StatorClient, StatorCluster};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    Stator,
    Etcd,
}

impl SystemKind {
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Stator => "stator",
            SystemKind::Etcd => "etcd",
        }
    }
}

/// A write client for every member of one cluster; clones share connections.
#[derive(Clone)]
pub enum KvClient {
    Stator(StatorClient),
    Etcd(Vec<EtcdConnection>),
}

impl KvClient {
    pub fn member_count(&self) -> usize {
        match self {
            KvClient::Stator(c) => c.peer_count(),
            KvClient::Etcd(c) => c.len(),
        }
    }

    /// One write through `member`; Ok only when acknowledged (committed).
    pub async fn put(
        &self,
        member: usize,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        match self {
            KvClient::Stator(c) => c.put(member, key, value, timeout).await,
            KvClient::Etcd(c) => c[member]
                .put(key.as_bytes(), value.as_bytes(), timeout)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

pub enum Cluster {
    Stator(StatorCluster),
    Etcd(EtcdCluster),
}

impl Cluster {
    pub async fn start(
        kind: SystemKind,
        binary: &Path,
        root: &Path,
        size: usize,
        stator_log: &str,
    ) -> Result<Self> {
        Ok(match kind {
            SystemKind::Stator => {
                Cluster::Stator(StatorCluster::start(binary, root, size, stator_log).await?)
            }
            SystemKind::Etcd => Cluster::Etcd(EtcdCluster::start(binary, root, size).await?),
        })
    }

    pub fn kind(&self) -> SystemKind {
        match self {
            Cluster::Stator(_) => SystemKind::Stator,
            Cluster::Etcd(_) => SystemKind::Etcd,
        }
    }

    pub fn client(&self) -> KvClient {
        match self {
            Cluster::Stator(c) => KvClient::Stator(c.client()),
            Cluster::Etcd(c) => KvClient::Etcd(c.connections()),
        }
    }

    pub async fn leader(&self, timeout: Duration) -> Result<usize> {
        let found = super::process::poll_until(timeout, Duration::from_millis(20), || async {
            match self {
                Cluster::Stator(c) => c.leader().await,
                Cluster::Etcd(c) => c.leader().await,
            }
        })
        .await;
        found.ok_or_else(|| anyhow!("{}: no leader within {timeout:?}", self.kind().name()))
    }

    pub fn sigkill(&mut self, member: usize) -> Result<Instant> {
        match self {
            Cluster::Stator(c) => c.sigkill(member),
            Cluster::Etcd(c) => c.sigkill(member),
        }
    }

    /// Starts a killed member again and waits until the whole cluster serves with it.
    pub async fn restart_and_settle(&mut self, member: usize, timeout: Duration) -> Result<()> {
        match self {
            Cluster::Stator(c) => {
                c.restart(member).await?;
                c.wait_all_up(timeout).await
            }
            Cluster::Etcd(c) => {
                c.restart(member).await?;
                c.wait_all_serving(timeout).await
            }
        }
    }
}
