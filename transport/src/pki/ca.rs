use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::names::{node_dns_name, CLUSTER_DNS_NAME};
use super::pem::{cert_from_pem, cert_to_pem};
use super::{Fingerprint, NodeCsr, NodeIdentity, NodeKey};
use crate::error::PkiError;

const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const NODE_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
// Tolerates peers whose clocks run a little behind the CA's.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
const MAX_CLUSTER_NAME_LEN: usize = 64;

/// The cluster's certificate authority: a self-signed ECDSA P-256 certificate and its key.
pub struct ClusterCa {
    key: KeyPair,
    /// Rebuilt from the CA certificate; used only as the issuer (name, key id) when signing.
    issuer: rcgen::Certificate,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Keeps the DER integer positive.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + lifetime).into();
}

fn sign_error(e: rcgen::Error) -> PkiError {
    PkiError::Signing(e.to_string())
}

/// Certificate parameters of node `node_id`: usable as TLS server and client, names the
/// cluster and the node id. Built by the CA, never taken from the requester.
fn node_cert_params(node_id: u64) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("stator node {node_id}"));
    params.distinguished_name = name;
    params.subject_alt_names = [CLUSTER_DNS_NAME.to_string(), node_dns_name(node_id)]
        .into_iter()
        .map(|dns| dns.try_into().map(SanType::DnsName).map_err(sign_error))
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_VALIDITY);
    Ok(params)
}

impl ClusterCa {
    /// Creates a new CA for the cluster named `cluster_name` (1–64 printable characters).
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        if cluster_name.is_empty()
            || cluster_name.len() > MAX_CLUSTER_NAME_LEN
            || cluster_name.chars().any(|c| c.is_control())
        {
            return Err(PkiError::InvalidInput(format!(
                "cluster name must be 1 to {MAX_CLUSTER_NAME_LEN} printable characters, got {cluster_name:?}"
            )));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::KeyGeneration(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "stator");
        name.push(
            DnType::CommonName,
            format!("stator cluster CA {cluster_name}"),
        );
        params.distinguished_name = name;
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_VALIDITY);
        let issuer = params.self_signed(&key).map_err(sign_error)?;
        let cert_der = issuer.der().to_vec();
        Ok(ClusterCa {
            key,
            issuer,
            cert_der,
        })
    }

    /// Loads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = cert_from_pem(cert_pem.as_bytes())?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
        let params = CertificateParams::from_ca_cert_der(&cert_der.as_slice().into())
            .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(PkiError::InvalidCertificate(
                "certificate is not a CA certificate".into(),
            ));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(PkiError::KeyMismatch);
        }
        // Re-signing yields a different DER (ECDSA is randomised) but the same issuer name and
        // key id, which is all signing needs; `cert_der` keeps the original bytes.
        let issuer = params.self_signed(&key).map_err(sign_error)?;
        Ok(ClusterCa {
            key,
            issuer,
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> String {
        cert_to_pem(&self.cert_der)
    }

    /// The CA private key (PKCS#8 PEM). Store it like a password.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// SHA-256 of the CA certificate DER.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// Signs a node certificate for `node_id` over the public key in `csr`. The CSR's
    /// signature is verified (the requester holds the key); the names it asks for are ignored,
    /// the certificate names `node_id` only.
    pub fn sign_node(&self, node_id: u64, csr: &NodeCsr) -> Result<Vec<u8>, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(&csr.0)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        let cert = node_cert_params(node_id)?
            .signed_by(&request.public_key, &self.issuer, &self.key)
            .map_err(sign_error)?;
        Ok(cert.der().to_vec())
    }

    /// Key and certificate for `node_id` in one step (bootstrap, tests).
    pub fn issue_identity(&self, node_id: u64) -> Result<NodeIdentity, PkiError> {
        let key = NodeKey::generate()?;
        let cert_der = self.sign_node(node_id, &key.csr(node_id)?)?;
        key.into_identity(node_id, cert_der, self.cert_der())
    }
}
