//! TLS with client certificates, and etcd's user/password authentication, against a real
//! etcd: the right certificates and credentials connect; wrong ones fail at once with an
//! error that names the problem (and the flag to fix), never as "try again later".

use std::path::Path;
use std::time::Duration;

use weft_core::store::{Store, StoreError};
use weft_stores::testing::{etcd_or_skip, skip_unless, ClientTls, Etcd, EtcdConfig, Pki};
use weft_stores::{EtcdOptions, EtcdStore};

fn options(tls: &ClientTls) -> EtcdOptions {
    EtcdOptions {
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.cert.clone()),
        key_file: Some(tls.key.clone()),
        timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    }
}

async fn first_op(etcd: &Etcd, options: &EtcdOptions) -> Result<(), StoreError> {
    let store = EtcdStore::connect(&etcd.endpoints(), options).await?;
    store.put("/tls/k", b"v").await?;
    Ok(())
}

fn assert_tls_failure(result: Result<(), StoreError>, case: &str) {
    match result {
        Err(StoreError::Backend(m)) if m.contains("TLS") && m.contains("--etcd-cafile") => {
            eprintln!("{case}: {m}");
        }
        other => panic!("{case}: expected a TLS failure naming the flags, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked() {
    let pki = Pki::new();
    let config = EtcdConfig {
        tls: Some(pki.server()),
        ..EtcdConfig::default()
    };
    let started = tokio::task::spawn_blocking(move || Etcd::start_with(config))
        .await
        .expect("starter");
    let Some(etcd) = skip_unless("client_certificates_are_required_and_checked", started) else {
        return;
    };

    let good = options(&pki.client("ca", "ca"));
    let store = EtcdStore::connect(&etcd.endpoints(), &good)
        .await
        .expect("connect");
    store.put("/tls/k", b"v").await.expect("put over TLS");
    assert_eq!(
        store.get("/tls/k").await.expect("get").map(|e| e.value),
        Some(b"v".to_vec())
    );

    // No client certificate: etcd requires one.
    let no_cert = EtcdOptions {
        cert_file: None,
        key_file: None,
        ..good.clone()
    };
    let started = std::time::Instant::now();
    assert_tls_failure(first_op(&etcd, &no_cert).await, "no client certificate");
    // A client certificate from a CA etcd does not trust.
    assert_tls_failure(
        first_op(&etcd, &options(&pki.client("ca", "rogue"))).await,
        "rogue client certificate",
    );
    // The wrong CA for the server's certificate.
    assert_tls_failure(
        first_op(&etcd, &options(&pki.client("rogue", "ca"))).await,
        "wrong CA",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failures are quick"
    );
    // Plain HTTP to a TLS member fails too (and is no success).
    let plain = EtcdOptions {
        timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    };
    assert!(first_op(&etcd, &plain).await.is_err());

    // Files that are missing or half-given are refused before anything is sent.
    let missing = EtcdOptions {
        ca_file: Some(Path::new("/nonexistent/ca.pem").to_path_buf()),
        ..good.clone()
    };
    let err = first_op(&etcd, &missing).await.expect_err("missing CA");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("--etcd-cafile /nonexistent/ca.pem")),
        "{err}"
    );
    let half = EtcdOptions {
        key_file: None,
        ..good
    };
    let err = first_op(&etcd, &half).await.expect_err("cert without key");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("--etcd-keyfile")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_are_checked() {
    let Some(etcd) = etcd_or_skip("username_and_password_are_checked") else {
        return;
    };
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        let out = etcd.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    let creds = |user: &str, password: &str| EtcdOptions {
        username: Some(user.to_string()),
        password: Some(password.to_string()),
        timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(&etcd.endpoints(), &creds("root", "rootpw"))
        .await
        .expect("the right password connects");
    store.put("/auth/k", b"v").await.expect("put");
    assert_eq!(store.list("/auth/").await.expect("list").entries.len(), 1);

    let err = EtcdStore::connect(&etcd.endpoints(), &creds("root", "wrong"))
        .await
        .expect_err("a wrong password");
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("--etcd-password")),
        "{err}"
    );
    let anonymous = EtcdOptions {
        timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    };
    let err = first_op(&etcd, &anonymous)
        .await
        .expect_err("no credentials");
    assert!(!err.is_transient(), "{err}");
}
