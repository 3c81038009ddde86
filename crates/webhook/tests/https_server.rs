//! The HTTPS server with certificate files, over real TLS connections on loopback: admission
//! reviews get a patch in the response, and a rewritten certificate is served without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;
use webhook::admission::Admission;
use webhook::cache::SessionCache;
use webhook::config::{FileTls, SubjectAltName};
use webhook::sidecar::InjectionConfig;
use webhook::tls::{CertResolver, KeyedCertificate, certs, files};
use webhook::{Metrics, SshPolicy};

fn issue(ca: &KeyedCertificate) -> KeyedCertificate {
    let sans = [SubjectAltName::Ip([127, 0, 0, 1].into())];
    certs::issue_serving(ca, &sans, OffsetDateTime::now_utc()).expect("serving certificate")
}

fn write_files(directory: &Path, serving: &KeyedCertificate) {
    // Written to new names and renamed, as the kubelet swaps Secret volume content atomically.
    for (name, content) in [
        ("tls.crt", &serving.cert_pem),
        ("tls.key", &serving.key_pem),
    ] {
        let staging = directory.join(format!(".{name}.new"));
        std::fs::write(&staging, content).expect("write");
        std::fs::rename(&staging, directory.join(name)).expect("rename");
    }
}

fn client_trusting(ca: &KeyedCertificate) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn session_pod_review() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7f0c1bd4-1111-4a5b-9c7d-000000000001",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "name": "alice-0",
            "namespace": "renku",
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:statefulset-controller" },
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "alice-0",
                    "namespace": "renku",
                    "labels": {
                        "app.kubernetes.io/name": "AmaltheaSession",
                        "app.kubernetes.io/instance": "alice",
                    },
                },
                "spec": { "containers": [{ "name": "amalthea-session", "image": "renku/python:3.12" }] },
            },
            "oldObject": null,
            "dryRun": false,
        },
    })
}

async fn start_server(file_tls: &FileTls) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (key, contents) = files::load(file_tls).await.expect("certificate files load");
    let resolver = Arc::new(CertResolver::new(key));
    tokio::spawn(files::reload_on_change(
        file_tls.clone(),
        resolver.clone(),
        contents,
    ));
    let admission = Admission::new(
        Arc::new(SessionCache::new(SshPolicy::All)),
        InjectionConfig::new("registry.example/renku-sshd:1"),
        Metrics::default(),
        Duration::from_millis(100),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let tls = webhook::tls::server_config(resolver).expect("TLS config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(webhook::server::serve(
        listener,
        tls,
        webhook::server::router(admission),
        async {
            let _ = stopped.await;
        },
    ));
    (address, stop)
}

#[tokio::test]
async fn review_over_tls_returns_patch() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let ca = certs::generate_ca(OffsetDateTime::now_utc()).expect("CA");
    write_files(directory.path(), &issue(&ca));
    let file_tls = FileTls {
        cert_file: directory.path().join("tls.crt"),
        key_file: directory.path().join("tls.key"),
        reload_interval: Duration::from_millis(50),
    };
    let (address, _stop) = start_server(&file_tls).await;

    let response = client_trusting(&ca)
        .post(format!("https://{address}/mutate"))
        .json(&session_pod_review())
        .send()
        .await
        .expect("request over TLS");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON response");
    let answer = &body["response"];
    assert_eq!(answer["uid"], "7f0c1bd4-1111-4a5b-9c7d-000000000001");
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["patch"].as_str().expect("patch is base64 text"))
        .expect("base64");
    let patch: Value = serde_json::from_slice(&patch).expect("patch is JSON");
    let paths: Vec<&str> = patch
        .as_array()
        .expect("patch is a list")
        .iter()
        .filter_map(|operation| operation["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/volumes",
            "/spec/initContainers",
            "/spec/containers/-"
        ]
    );
    assert_eq!(patch[2]["value"]["name"], "renku-ssh");

    let invalid = client_trusting(&ca)
        .post(format!("https://{address}/mutate"))
        .body("not json")
        .send()
        .await
        .expect("request over TLS");
    assert_eq!(invalid.status(), 400);
}

#[tokio::test]
async fn rewritten_files_are_served_without_restart() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let first_ca = certs::generate_ca(OffsetDateTime::now_utc()).expect("CA");
    write_files(directory.path(), &issue(&first_ca));
    let file_tls = FileTls {
        cert_file: directory.path().join("tls.crt"),
        key_file: directory.path().join("tls.key"),
        reload_interval: Duration::from_millis(50),
    };
    let (address, _stop) = start_server(&file_tls).await;
    let url = format!("https://{address}/mutate");
    assert!(
        client_trusting(&first_ca)
            .post(&url)
            .json(&session_pod_review())
            .send()
            .await
            .is_ok()
    );

    let second_ca = certs::generate_ca(OffsetDateTime::now_utc()).expect("second CA");
    write_files(directory.path(), &issue(&second_ca));
    let second_client = client_trusting(&second_ca);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if second_client
            .post(&url)
            .json(&session_pod_review())
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh client, because a client could resume its earlier TLS session without seeing the
    // new certificate.
    let old_trust = client_trusting(&first_ca)
        .post(&url)
        .json(&session_pod_review())
        .send()
        .await;
    assert!(
        old_trust.is_err(),
        "a client trusting only the old CA must now fail"
    );

    // Invalid content keeps the current certificate.
    std::fs::write(directory.path().join("tls.key"), "not a key").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        second_client
            .post(&url)
            .json(&session_pod_review())
            .send()
            .await
            .is_ok()
    );
}
