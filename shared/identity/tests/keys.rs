//! Key files, the keyring, the policy and signatures, on real files in a
//! temporary folder.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_identity::{Authority, Identity, IdentityError, KeyDir, Keyring, Policy};

fn repayment() -> Envelope {
    parse_input_line(
        &json!({"id":"pay-1","type":"repayment.received","occurred_at":"2024-03-01T12:00:00+05:30",
            "payload":{"loan_id":"L1","payment_id":"P1","amount":"5000.00","value_date":"2024-03-01"}})
        .to_string(),
    )
    .unwrap()
}

fn policy() -> Policy {
    Policy::from_pairs([("input", &["repayment.received"][..]), ("npa", &[][..])])
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_file_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    let created = keys.create_identity("npa", false).unwrap();
    assert_eq!(mode(&keys.key_path("npa")), 0o600);
    assert_eq!(mode(keys.path()), 0o700);
    assert!(created.key_id().starts_with("npa:"));
    assert_eq!(created.key_id().len(), "npa:".len() + 16);
    let loaded = Identity::load_key_file(&keys.key_path("npa")).unwrap();
    assert_eq!(loaded.key_id(), created.key_id());
}

#[test]
fn readable_key_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    keys.create_identity("npa", false).unwrap();
    let path = keys.key_path("npa");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Identity::load_key_file(&path).unwrap_err();
    assert!(matches!(
        error,
        IdentityError::Permissions { mode: 0o644, .. }
    ));
    assert!(error.to_string().contains("chmod 600"), "{error}");
}

#[test]
fn existing_key_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let first = keys.create_identity("npa", false).unwrap();
    let error = keys.create_identity("npa", false).unwrap_err();
    assert!(matches!(error, IdentityError::Exists { .. }));
    assert!(error.to_string().contains("--force"), "{error}");
    let second = keys.create_identity("npa", true).unwrap();
    assert_ne!(first.key_id(), second.key_id());
    let keyring = Keyring::load(&keys.keyring_path()).unwrap();
    assert!(keyring.keys.contains_key(first.key_id()));
    assert!(keyring.keys.contains_key(second.key_id()));
    assert_eq!(
        Identity::load_key_file(&keys.key_path("npa"))
            .unwrap()
            .key_id(),
        second.key_id()
    );
}

#[test]
fn invalid_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    for name in ["", "../npa", "NPA", "a:b", &"x".repeat(65)] {
        let error = keys.create_identity(name, false).unwrap_err();
        assert!(
            matches!(error, IdentityError::InvalidName { .. }),
            "{name:?}: {error}"
        );
    }
}

#[test]
fn missing_key_without_create_names_command() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let error = Authority::load(&keys, &["npa"], false, &policy()).unwrap_err();
    assert!(
        error.to_string().contains("underwrite identity npa"),
        "{error}"
    );
}

#[test]
fn signature_is_deterministic_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let authority = Authority::load(&keys, &["input"], true, &policy()).unwrap();
    let mut first = repayment();
    let mut second = repayment();
    authority.sign("input", &mut first).unwrap();
    authority.sign("input", &mut second).unwrap();
    assert_eq!(first.to_json(), second.to_json());
    assert!(first.key_id.as_deref().unwrap().starts_with("input:"));
    authority.verify(&first).unwrap();
    // The policy file was written from the default.
    assert_eq!(Policy::load(&keys.policy_path()).unwrap(), policy());
}

#[test]
fn changed_body_is_checked_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let authority = Authority::load(&keys, &["input"], true, &policy()).unwrap();
    let mut event = repayment();
    let body = authority.sign("input", &mut event).unwrap();
    assert_eq!(body, event.to_json());
    let parsed = Envelope::from_slice(body.as_bytes()).unwrap();
    authority.verify_body(&parsed, body.as_bytes()).unwrap();

    let changed = body.replace("5000.00", "50000.00");
    let parsed = Envelope::from_slice(changed.as_bytes()).unwrap();
    let error = authority
        .verify_body(&parsed, changed.as_bytes())
        .unwrap_err();
    assert_eq!(error.code(), "authz_bad_signature");
    assert!(error.to_string().contains("verification failed"), "{error}");

    // Another process with the same keys has none of these bodies in its
    // memo, so it runs the full check, and it passes.
    let other = Authority::load(&keys, &["input"], false, &policy()).unwrap();
    let parsed = Envelope::from_slice(body.as_bytes()).unwrap();
    other.verify_body(&parsed, body.as_bytes()).unwrap();
    let parsed = Envelope::from_slice(changed.as_bytes()).unwrap();
    assert_eq!(
        other
            .verify_body(&parsed, changed.as_bytes())
            .unwrap_err()
            .code(),
        "authz_bad_signature"
    );
}

#[test]
fn each_rejection_has_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let authority = Authority::load(&keys, &["input", "npa"], true, &policy()).unwrap();

    let unsigned = repayment();
    let error = authority.verify(&unsigned).unwrap_err();
    assert_eq!(error.code(), "authz_unsigned");
    assert!(error.to_string().contains("pay-1"), "{error}");

    let mut forged = repayment();
    let stranger = Identity::generate("input").unwrap();
    stranger.sign(&mut forged);
    let error = authority.verify(&forged).unwrap_err();
    assert_eq!(error.code(), "authz_unknown_key");
    assert!(error.to_string().contains(stranger.key_id()), "{error}");

    let mut tampered = repayment();
    authority.sign("input", &mut tampered).unwrap();
    tampered.payload["amount"] = json!("50000.00");
    let error = authority.verify(&tampered).unwrap_err();
    assert_eq!(error.code(), "authz_bad_signature");

    let mut garbled = repayment();
    authority.sign("input", &mut garbled).unwrap();
    garbled.signature = Some("not base64!".into());
    assert_eq!(
        authority.verify(&garbled).unwrap_err().code(),
        "authz_bad_signature"
    );

    let mut impersonating = repayment();
    authority.sign("npa", &mut impersonating).unwrap();
    let error = authority.verify(&impersonating).unwrap_err();
    assert_eq!(error.code(), "authz_policy");
    assert!(error.to_string().contains("source"), "{error}");

    let mut outside = repayment();
    outside.source = "npa".into();
    authority.sign("npa", &mut outside).unwrap();
    let error = authority.verify(&outside).unwrap_err();
    assert_eq!(error.code(), "authz_policy");
    assert!(
        error
            .to_string()
            .contains("may not emit repayment.received"),
        "{error}"
    );
}

#[test]
fn keyring_with_wrong_id_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let created = keys.create_identity("npa", false).unwrap();
    let mut keyring = Keyring::load(&keys.keyring_path()).unwrap();
    let entry = keyring.keys.remove(created.key_id()).unwrap();
    keyring.keys.insert("npa:0000000000000000".into(), entry);
    keyring.save(&keys.keyring_path()).unwrap();
    let error = Authority::load(&keys, &["npa"], true, &policy())
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("does not match the public key"),
        "{error}"
    );
}
