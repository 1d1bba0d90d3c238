//! How node identities are written into and read from certificates.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::error::PkiError;

/// DNS name every node certificate carries; clients verify servers against it.
pub(crate) const CLUSTER_DNS_NAME: &str = "stator.cluster";

const NODE_NAME_PREFIX: &str = "node-";
const NODE_NAME_SUFFIX: &str = ".stator.cluster";

/// The DNS SAN that carries a node id, e.g. `node-7.stator.cluster`.
pub(crate) fn node_dns_name(node_id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{node_id}{NODE_NAME_SUFFIX}")
}

fn parse_node_dns_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(NODE_NAME_PREFIX)?
        .strip_suffix(NODE_NAME_SUFFIX)?;
    // Reject "+7" or "007" so that one id has exactly one spelling.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// Extracts the node id from a parsed node certificate; exactly one node SAN must be present.
pub(crate) fn node_id_of(cert: &X509Certificate<'_>) -> Result<u64, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCertificate(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| PkiError::InvalidCertificate("no subjectAltName".into()))?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => parse_node_dns_name(dns),
            _ => None,
        });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => Err(PkiError::InvalidCertificate(
            "certificate names no node id".into(),
        )),
        (Some(_), Some(_)) => Err(PkiError::InvalidCertificate(
            "certificate names more than one node id".into(),
        )),
    }
}

/// Node id of a DER certificate.
pub(crate) fn node_id_of_der(cert_der: &[u8]) -> Result<u64, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    node_id_of(&cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip_and_reject_lookalikes() {
        assert_eq!(parse_node_dns_name(&node_dns_name(42)), Some(42));
        assert_eq!(
            parse_node_dns_name(&node_dns_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "node-.stator.cluster",
            "node-+1.stator.cluster",
            "node-01.stator.cluster",
            "node-1.evil.cluster",
            "stator.cluster",
            "node-99999999999999999999.stator.cluster",
        ] {
            assert_eq!(parse_node_dns_name(bad), None, "{bad}");
        }
    }
}
