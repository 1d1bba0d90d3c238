use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::Fingerprint;
use crate::error::PkiError;

const TOKEN_PREFIX: &str = "stator1";
const SECRET_BYTES: usize = 32;
const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 256;

/// Admits a new node: pins the cluster CA (fingerprint) and proves the holder was invited
/// (secret). Text form: `stator1-<64 hex fingerprint>-<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: Fingerprint,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("secret", &"<secret>")
            .finish()
    }
}

impl JoinToken {
    /// A token for the CA `fp` with a random 32-byte secret.
    pub fn new(fp: Fingerprint) -> Self {
        let secret: [u8; SECRET_BYTES] = rand::random();
        JoinToken {
            ca_fingerprint: fp,
            secret: hex::encode(secret),
        }
    }

    /// Hex SHA-256 of the secret: what the cluster stores to check tokens without keeping them.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}-{}-{}", self.ca_fingerprint, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: String| PkiError::InvalidToken(why);
        let s = s.trim();
        let mut parts = s.splitn(3, '-');
        let (Some(prefix), Some(fp), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(format!(
                "expected {TOKEN_PREFIX}-<64 hex fingerprint>-<secret>, got {} characters without that shape",
                s.len()
            )));
        };
        if prefix != TOKEN_PREFIX {
            return Err(invalid(format!(
                "token must start with {TOKEN_PREFIX:?} (is it a stator join token?)"
            )));
        }
        let ca_fingerprint = fp.parse::<Fingerprint>().map_err(|_| {
            invalid(format!(
                "CA fingerprint must be 64 hex characters, got {} characters",
                fp.len()
            ))
        })?;
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
            return Err(invalid(format!(
                "secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters, got {}",
                secret.len()
            )));
        }
        if !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "secret may contain only letters, digits, '-' and '_'".into(),
            ));
        }
        Ok(JoinToken {
            ca_fingerprint,
            secret: secret.to_string(),
        })
    }
}
