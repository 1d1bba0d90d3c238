use std::str::FromStr;

use crate::{ClusterCa, Fingerprint, JoinToken, NodeCsr, NodeIdentity, NodeKey, PkiError};

#[test]
fn token_round_trips_through_text() {
    let ca = ClusterCa::generate("prod").unwrap();
    let token = JoinToken::new(ca.fingerprint());
    let text = token.to_string();
    assert!(text.starts_with("stator1-"), "{text}");
    let parsed: JoinToken = text.parse().unwrap();
    assert_eq!(parsed, token);
    assert_eq!(parsed.ca_fingerprint, ca.fingerprint());
    // Surrounding whitespace from copy-paste is tolerated.
    assert_eq!(format!("  {text}\n").parse::<JoinToken>().unwrap(), token);
    assert_ne!(
        JoinToken::new(ca.fingerprint()).secret,
        token.secret,
        "secrets are random"
    );
}

#[test]
fn malformed_tokens_give_clear_errors() {
    let fp = Fingerprint([7; 32]).to_string();
    let secret = "a".repeat(64);
    let cases = [
        (String::new(), "expected stator1-"),
        ("stator1".to_string(), "expected stator1-"),
        (format!("stator2-{fp}-{secret}"), "must start with"),
        (
            format!("stator1-{}-{secret}", &fp[..60]),
            "64 hex characters",
        ),
        (
            format!("stator1-{}zz-{secret}", &fp[..62]),
            "64 hex characters",
        ),
        (format!("stator1-{fp}-short"), "secret must be"),
        (
            format!("stator1-{fp}-{}", "a".repeat(300)),
            "secret must be",
        ),
        (
            format!("stator1-{fp}-{}!", "a".repeat(20)),
            "may contain only",
        ),
    ];
    for (text, expected) in cases {
        match JoinToken::from_str(&text) {
            Err(PkiError::InvalidToken(message)) => {
                assert!(message.contains(expected), "{text:?}: {message}")
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn secret_hash_is_hex_sha256_of_the_secret() {
    let token = JoinToken {
        ca_fingerprint: Fingerprint([0; 32]),
        secret: "abc".into(),
    };
    assert_eq!(
        token.secret_hash(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn fingerprint_is_sha256_of_the_ca_certificate_in_hex() {
    let ca = ClusterCa::generate("fp").unwrap();
    let fp = ca.fingerprint();
    assert_eq!(fp, Fingerprint::of_der(&ca.cert_der()));
    let text = fp.to_string();
    assert_eq!(text.len(), 64);
    assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
    assert!("xyz".parse::<Fingerprint>().is_err());
}

#[test]
fn identity_save_load_round_trip_with_private_key_mode_0600() {
    let ca = ClusterCa::generate("disk").unwrap();
    let identity = ca.issue_identity(42).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested/data");
    identity.save(&data_dir).unwrap();
    let loaded = NodeIdentity::load(&data_dir).unwrap();
    assert_eq!(loaded.node_id, 42);
    assert_eq!(loaded.cert_der, identity.cert_der);
    assert_eq!(loaded.key_der, identity.key_der);
    assert_eq!(loaded.ca_cert_der, identity.ca_cert_der);
    assert_eq!(loaded.ca_fingerprint(), ca.fingerprint());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Saving again over an existing identity works (node restarts).
    identity.save(&data_dir).unwrap();
    // The private key never shows up in logs.
    assert!(!format!("{identity:?}").contains(&hex::encode(&identity.key_der)));
}

#[test]
fn loading_a_missing_or_corrupt_identity_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    match NodeIdentity::load(dir.path()) {
        Err(err @ PkiError::MissingFile { .. }) => {
            assert!(err.to_string().contains("ca.pem"), "{err}")
        }
        other => panic!("{other:?}"),
    }
    let ca = ClusterCa::generate("corrupt").unwrap();
    ca.issue_identity(1).unwrap().save(dir.path()).unwrap();
    std::fs::write(dir.path().join("node.pem"), "not a certificate").unwrap();
    match NodeIdentity::load(dir.path()) {
        Err(err @ PkiError::InvalidCertificate(_)) => {
            assert!(err.to_string().contains("node.pem"), "{err}")
        }
        other => panic!("{other:?}"),
    }
    // A key that belongs to another node's certificate.
    let dir = tempfile::tempdir().unwrap();
    let mut mixed = ca.issue_identity(1).unwrap();
    mixed.key_der = ca.issue_identity(2).unwrap().key_der;
    mixed.save(dir.path()).unwrap();
    assert!(matches!(
        NodeIdentity::load(dir.path()),
        Err(PkiError::KeyMismatch)
    ));
    // A certificate from another CA.
    let dir = tempfile::tempdir().unwrap();
    let mut foreign = ca.issue_identity(1).unwrap();
    foreign.ca_cert_der = ClusterCa::generate("other").unwrap().cert_der();
    foreign.save(dir.path()).unwrap();
    match NodeIdentity::load(dir.path()) {
        Err(PkiError::InvalidCertificate(message)) => {
            assert!(
                message.contains("not signed by the cluster CA"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ca_reloaded_from_pem_keeps_its_fingerprint_and_signs_trusted_certs() {
    let ca = ClusterCa::generate("reload").unwrap();
    let reloaded = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    assert_eq!(reloaded.cert_der(), ca.cert_der());
    let key = NodeKey::generate().unwrap();
    let cert = reloaded.sign_node(9, &key.csr(9).unwrap()).unwrap();
    let identity = key.into_identity(9, cert, ca.cert_der()).unwrap();
    assert_eq!(identity.node_id, 9);
}

#[test]
fn ca_from_pem_rejects_wrong_key_and_non_ca_certificates() {
    let ca = ClusterCa::generate("a").unwrap();
    let other = ClusterCa::generate("b").unwrap();
    assert!(matches!(
        ClusterCa::from_pem(&ca.cert_pem(), &other.key_pem()),
        Err(PkiError::KeyMismatch)
    ));
    let node = ca.issue_identity(3).unwrap();
    let node_cert_pem = crate::pki::pem::cert_to_pem(&node.cert_der);
    assert!(ClusterCa::from_pem(&node_cert_pem, &ca.key_pem()).is_err());
    assert!(matches!(
        ClusterCa::from_pem("garbage", &ca.key_pem()),
        Err(PkiError::InvalidCertificate(_))
    ));
    assert!(matches!(
        ClusterCa::from_pem(&ca.cert_pem(), "garbage"),
        Err(PkiError::InvalidKey(_))
    ));
    assert!(ClusterCa::generate("").is_err());
    assert!(ClusterCa::generate(&"x".repeat(65)).is_err());
}

#[test]
fn ca_decides_the_node_id_not_the_csr() {
    let ca = ClusterCa::generate("csr").unwrap();
    let key = NodeKey::generate().unwrap();
    let csr = key.csr(5).unwrap();
    assert!(csr.0.contains("BEGIN CERTIFICATE REQUEST"));
    let cert_for_7 = ca.sign_node(7, &csr).unwrap();
    match key.into_identity(5, cert_for_7, ca.cert_der()) {
        Err(PkiError::InvalidCertificate(message)) => {
            assert!(message.contains("node 7"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_csrs_and_foreign_certificates_are_rejected() {
    let ca = ClusterCa::generate("csr").unwrap();
    assert!(matches!(
        ca.sign_node(
            1,
            &NodeCsr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into()
            )
        ),
        Err(PkiError::InvalidCsr(_))
    ));
    assert!(matches!(
        ca.sign_node(1, &NodeCsr("hello".into())),
        Err(PkiError::InvalidCsr(_))
    ));
    // A certificate signed for a different key cannot be paired with this key.
    let key = NodeKey::generate().unwrap();
    let other_key = NodeKey::generate().unwrap();
    let cert = ca.sign_node(1, &other_key.csr(1).unwrap()).unwrap();
    assert!(matches!(
        key.into_identity(1, cert, ca.cert_der()),
        Err(PkiError::KeyMismatch)
    ));
}
