//! PEM encoding and decoding of certificates and PKCS#8 keys.

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::error::PkiError;

const LINE_LEN: usize = 64;

fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(LINE_LEN) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub(crate) fn cert_to_pem(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

pub(crate) fn key_to_pem(pkcs8_der: &[u8]) -> String {
    encode("PRIVATE KEY", pkcs8_der)
}

pub(crate) fn cert_from_pem(pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    CertificateDer::from_pem_slice(pem)
        .map(|der| der.to_vec())
        .map_err(|e| PkiError::InvalidCertificate(format!("not a PEM certificate: {e}")))
}

pub(crate) fn key_from_pem(pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map(|der| der.secret_pkcs8_der().to_vec())
        .map_err(|e| PkiError::InvalidKey(format!("not a PEM PKCS#8 private key: {e}")))
}
