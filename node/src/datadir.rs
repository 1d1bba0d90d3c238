//! The peer's data directory: who this node is and which cluster it belongs to.
//!
//! ```text
//! DIR/node.json     node id, cluster id, CA fingerprint, advertised addresses
//! DIR/tls/          CA certificate and key, node certificate and key (keys 0600)
//! DIR/admin.token   admin API bearer token (0600)
//! DIR/raft/         sled database: Raft log, vote, state machine, snapshots
//! ```
//! `node.json` is written last during bootstrap/join, so a half-initialised directory (crash
//! mid-join) is detected and refused with instructions instead of being half-used.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub node_id: u64,
    pub cluster_id: String,
    /// Hex SHA-256 of the cluster CA certificate.
    pub ca_fingerprint: String,
}

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create data dir {}", root.display()))?;
        // The directory holds private keys and the admin token: owner only.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }
    fn record_path(&self) -> PathBuf {
        self.root.join("node.json")
    }
    fn admin_token_path(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    fn ca_key_path(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }

    /// The node record, when this directory already belongs to a cluster.
    pub fn record(&self) -> Result<Option<NodeRecord>> {
        let path = self.record_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let rec = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is corrupt; restore it or start with an empty data dir",
                        path.display()
                    )
                })?;
                Ok(Some(rec))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let leftovers = fs::read_dir(&self.root)?.next().is_some();
                if leftovers {
                    bail!(
                        "data dir {} is not empty but has no node.json: a bootstrap or join was \
                         interrupted. Move the directory away and start again.",
                        self.root.display()
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn write_record(&self, rec: &NodeRecord) -> Result<()> {
        write_atomic(&self.record_path(), &serde_json::to_vec_pretty(rec)?, 0o600)
    }

    pub fn admin_token(&self) -> Result<String> {
        read_secret(&self.admin_token_path())
    }
    pub fn write_admin_token(&self, token: &str) -> Result<()> {
        write_atomic(&self.admin_token_path(), token.as_bytes(), 0o600)
    }

    /// The join token this peer bootstrapped or joined with (only its hash is replicated).
    pub fn join_token(&self) -> Result<String> {
        read_secret(&self.root.join("join.token"))
    }
    pub fn write_join_token(&self, token: &str) -> Result<()> {
        write_atomic(&self.root.join("join.token"), token.as_bytes(), 0o600)
    }

    pub fn ca_key_pem(&self) -> Result<String> {
        read_secret(&self.ca_key_path())
    }
    pub fn write_ca_key_pem(&self, pem: &str) -> Result<()> {
        fs::create_dir_all(self.tls_dir())?;
        write_atomic(&self.ca_key_path(), pem.as_bytes(), 0o600)
    }
}

/// Reads the admin token of a data dir without opening it for a peer (used by `stator ctl`).
pub fn read_admin_token(root: &Path) -> Result<String> {
    read_secret(&root.join("admin.token"))
}

fn read_secret(path: &Path) -> Result<String> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_string())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A random token of 32 bytes, hex.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_has_no_record_and_a_written_one_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(&tmp.path().join("d")).unwrap();
        assert!(dd.record().unwrap().is_none());
        let rec = NodeRecord {
            node_id: 7,
            cluster_id: "c".into(),
            ca_fingerprint: "ab".into(),
        };
        dd.write_record(&rec).unwrap();
        assert_eq!(dd.record().unwrap(), Some(rec));
    }

    #[test]
    fn half_initialised_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(tmp.path()).unwrap();
        dd.write_admin_token("x").unwrap();
        let err = dd.record().unwrap_err().to_string();
        assert!(err.contains("interrupted"), "{err}");
    }

    #[test]
    fn secrets_are_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::open(tmp.path()).unwrap();
        dd.write_admin_token("secret").unwrap();
        let mode = fs::metadata(tmp.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(dd.admin_token().unwrap(), "secret");
    }
}
