//! rustls configurations: the member server/client and the joiner's pinned-CA client.
//! Always TLS 1.3 with the ring provider.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::error::TransportError;
use crate::pki::{Fingerprint, NodeIdentity};

/// ALPN of connections between cluster members (client certificate required).
pub(crate) const MEMBER_ALPN: &[u8] = b"stator/1";
/// ALPN of joining nodes without a certificate; only join methods are served.
pub(crate) const JOIN_ALPN: &[u8] = b"stator-join/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn ca_roots(ca_cert_der: &[u8]) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_cert_der.to_vec()))?;
    Ok(Arc::new(roots))
}

fn private_key(identity: &NodeIdentity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()))
}

/// Server side: presents [node cert, CA cert] so joiners can pin the CA; verifies client
/// certificates against the CA but lets clients without one through, so that join
/// connections work. The endpoint closes member-ALPN connections lacking a certificate.
pub(crate) fn server_config(
    identity: &NodeIdentity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TransportError> {
    let provider = provider();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(
        ca_roots(&identity.ca_cert_der).map_err(tls_error)?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_error)?;
    let chain = vec![
        CertificateDer::from(identity.cert_der.clone()),
        CertificateDer::from(identity.ca_cert_der.clone()),
    ];
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, private_key(identity))
        .map_err(tls_error)?;
    config.alpn_protocols = vec![MEMBER_ALPN.to_vec(), JOIN_ALPN.to_vec()];
    quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(tls_error)
}

/// Member client: verifies the server against the cluster CA and authenticates with the
/// node certificate.
pub(crate) fn member_client_config(
    identity: &NodeIdentity,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TransportError> {
    let provider = provider();
    let server_verifier = WebPkiServerVerifier::builder_with_provider(
        ca_roots(&identity.ca_cert_der).map_err(tls_error)?,
        provider.clone(),
    )
    .build()
    .map_err(tls_error)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(
            vec![CertificateDer::from(identity.cert_der.clone())],
            private_key(identity),
        )
        .map_err(tls_error)?;
    config.alpn_protocols = vec![MEMBER_ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(tls_error)
}

/// Joiner client: no certificate of its own; trusts the server only if the chain it sends
/// contains the CA named by the join token's fingerprint and the node certificate verifies
/// against that CA.
pub(crate) fn join_client_config(
    ca_fingerprint: Fingerprint,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        ca_fingerprint,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(tls_error)
}

/// A client configuration that offers the member ALPN without a certificate; lets tests
/// prove the server refuses it.
#[cfg(test)]
pub(crate) fn certless_member_client_config(
    ca_cert_der: &[u8],
) -> quinn::crypto::rustls::QuicClientConfig {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        ca_roots(ca_cert_der).expect("valid CA"),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![MEMBER_ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(config).expect("QUIC config")
}

#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| Fingerprint::of_der(cert) == self.ca_fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "server does not present the CA {} named by the join token",
                    self.ca_fingerprint
                ))
            })?;
        let pinned =
            WebPkiServerVerifier::builder_with_provider(ca_roots(ca)?, self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        pinned.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
