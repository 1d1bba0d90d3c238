use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;

use super::names::node_id_of;
use super::pem::{cert_from_pem, cert_to_pem, key_from_pem, key_to_pem};
use super::Fingerprint;
use crate::error::PkiError;

const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "node.pem";
const KEY_FILE: &str = "node.key";

/// What a node needs to speak TLS in the cluster. `key_der` is PKCS#8.
#[derive(Clone)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub ca_cert_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("ca_fingerprint", &self.ca_fingerprint())
            .finish_non_exhaustive()
    }
}

/// Checks that `cert` is signed by `ca`, is currently valid and belongs to `key`; returns the
/// node id the certificate names.
pub(crate) fn verify_identity(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<u64, PkiError> {
    let (_, ca) = x509_parser::parse_x509_certificate(ca)
        .map_err(|e| PkiError::InvalidCertificate(format!("CA certificate: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::InvalidCertificate(format!("node certificate: {e}")))?;
    parsed
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| {
            PkiError::InvalidCertificate("node certificate is not signed by the cluster CA".into())
        })?;
    if !parsed.validity().is_valid() {
        return Err(PkiError::InvalidCertificate(format!(
            "node certificate is not valid now (valid {} to {})",
            parsed.validity().not_before,
            parsed.validity().not_after
        )));
    }
    let key = KeyPair::try_from(key).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
    if parsed.public_key().raw != key.public_key_der().as_slice() {
        return Err(PkiError::KeyMismatch);
    }
    node_id_of(&parsed)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io {
        action,
        path,
        source,
    }
}

/// Writes `contents` to `path` via a temporary file and a rename, so that a crash never leaves
/// a half-written identity; `private` files get mode 0600 from creation on.
fn write_atomically(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io_error("create", &tmp))?;
    #[cfg(unix)]
    {
        // A stale temporary file keeps its old mode through open(); force it.
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set permissions of", &tmp))?;
    }
    file.write_all(contents).map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("rename into", path))
}

fn read_file(path: PathBuf) -> Result<Vec<u8>, PkiError> {
    fs::read(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            PkiError::MissingFile { path }
        } else {
            PkiError::Io {
                action: "read",
                path,
                source,
            }
        }
    })
}

impl NodeIdentity {
    /// Saves `ca.pem`, `node.pem` and `node.key` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        write_atomically(
            &dir.join(CA_FILE),
            cert_to_pem(&self.ca_cert_der).as_bytes(),
            false,
        )?;
        write_atomically(
            &dir.join(CERT_FILE),
            cert_to_pem(&self.cert_der).as_bytes(),
            false,
        )?;
        write_atomically(
            &dir.join(KEY_FILE),
            key_to_pem(&self.key_der).as_bytes(),
            true,
        )
    }

    /// Loads an identity saved by [`NodeIdentity::save`] and checks that its parts fit
    /// together (CA signature, validity, key). The node id comes from the certificate.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let with_path = |path: PathBuf, e: PkiError| match e {
            PkiError::InvalidCertificate(m) => {
                PkiError::InvalidCertificate(format!("{}: {m}", path.display()))
            }
            PkiError::InvalidKey(m) => PkiError::InvalidKey(format!("{}: {m}", path.display())),
            other => other,
        };
        let ca_path = dir.join(CA_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let ca_cert_der =
            cert_from_pem(&read_file(ca_path.clone())?).map_err(|e| with_path(ca_path, e))?;
        let cert_der =
            cert_from_pem(&read_file(cert_path.clone())?).map_err(|e| with_path(cert_path, e))?;
        let key_der =
            key_from_pem(&read_file(key_path.clone())?).map_err(|e| with_path(key_path, e))?;
        let node_id = verify_identity(&ca_cert_der, &cert_der, &key_der)?;
        Ok(NodeIdentity {
            node_id,
            ca_cert_der,
            cert_der,
            key_der,
        })
    }

    pub fn ca_fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.ca_cert_der)
    }
}
