use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use serde::{Deserialize, Serialize};

use super::identity::verify_identity;
use super::names::node_dns_name;
use super::NodeIdentity;
use crate::error::PkiError;

/// PEM of a PKCS#10 certificate signing request made by a joining node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCsr(pub String);

/// A fresh key pair held by a joining node; the private key never leaves it.
pub struct NodeKey {
    key: KeyPair,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<secret>)")
    }
}

impl NodeKey {
    /// Generates an ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::KeyGeneration(e.to_string()))?;
        Ok(NodeKey { key })
    }

    /// A CSR asking for a certificate for `node_id`, signed with this key.
    pub fn csr(&self, node_id: u64) -> Result<NodeCsr, PkiError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("stator node {node_id}"));
        params.distinguished_name = name;
        let dns = node_dns_name(node_id)
            .try_into()
            .map_err(|e: rcgen::Error| PkiError::InvalidCsr(e.to_string()))?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        let pem = params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        Ok(NodeCsr(pem))
    }

    /// Combines this key with the certificate the CA signed for it. Checks that the
    /// certificate is the CA's, names `node_id`, and belongs to this key.
    pub fn into_identity(
        self,
        node_id: u64,
        cert_der: Vec<u8>,
        ca_cert_der: Vec<u8>,
    ) -> Result<NodeIdentity, PkiError> {
        let key_der = self.key.serialize_der();
        let named = verify_identity(&ca_cert_der, &cert_der, &key_der)?;
        if named != node_id {
            return Err(PkiError::InvalidCertificate(format!(
                "certificate is for node {named}, expected node {node_id}"
            )));
        }
        Ok(NodeIdentity {
            node_id,
            ca_cert_der,
            cert_der,
            key_der,
        })
    }
}
