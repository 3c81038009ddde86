//! Admission latency of the sidecar webhook with populated watch caches, measured two ways:
//! review round trips sent straight to the webhook over HTTPS, and the webhook's own histogram
//! for pods that kube-apiserver sends it. Prints the figures; fails when the p99 reaches 250 ms,
//! far below the 5 s webhook timeout.

mod webhook_support;

use std::time::{Duration, Instant};

use api::AmaltheaSession;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::{Value, json};
use testkit::connect;
use webhook::SshPolicy;
use webhook_support::*;

/// Sessions created before measuring; a third annotated, a third with an SSHAccess.
const SESSIONS: usize = 300;
/// Reviews sent straight to the webhook.
const DIRECT_REVIEWS: usize = 2000;
/// Pods created through kube-apiserver.
const API_SERVER_PODS: usize = 60;
/// Upper bound asserted for the p99.
const MAX_P99: Duration = Duration::from_millis(250);

fn review(namespace: &str, index: usize) -> Value {
    let session = format!("session-{}", index % SESSIONS);
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{index:012}"),
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "name": format!("{session}-0"),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:statefulset-controller" },
            "object": session_pod_json(&session),
            "oldObject": null,
            "dryRun": false,
        },
    })
}

fn session_pod_json(session: &str) -> Value {
    let stateful_set = serde_json::to_value(session_stateful_set(session)).expect("serialise");
    let mut template = stateful_set["spec"]["template"].clone();
    template["metadata"]["name"] = json!(format!("{session}-0"));
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"] })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

/// Returns the upper bound of the histogram bucket that contains the p99, from the Prometheus
/// text of the webhook's metrics, and the number of observations.
fn histogram_p99(metrics: &str) -> (f64, u64) {
    let mut buckets = Vec::new();
    for line in metrics.lines() {
        let Some(rest) =
            line.strip_prefix("renku_ssh_webhook_admission_duration_seconds_bucket{le=\"")
        else {
            continue;
        };
        let Some((bound, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let bound = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().expect("bucket bound")
        };
        buckets.push((bound, count.trim().parse::<u64>().expect("bucket count")));
    }
    let total = buckets.last().map(|(_, count)| *count).unwrap_or(0);
    let threshold = (total as f64 * 0.99).ceil() as u64;
    let bound = buckets
        .iter()
        .find(|(_, count)| *count >= threshold)
        .map(|(bound, _)| *bound);
    (bound.unwrap_or(f64::INFINITY), total)
}

#[tokio::test]
async fn admission_latency_p99_is_small() -> anyhow::Result<()> {
    let client = connect().await?;
    let namespace = namespace_with_account(&client, "webhook-latency").await?;
    let config = test_config(namespace.name(), SshPolicy::Annotated, free_port()?);
    let webhook = RunningWebhook::start(&client, config).await?;

    let sessions = namespace.api::<AmaltheaSession>();
    let accesses = namespace.api::<api::SshAccess>();
    futures::stream::iter(0..SESSIONS)
        .map(|index| {
            let sessions = sessions.clone();
            let accesses = accesses.clone();
            async move {
                let name = format!("session-{index}");
                sessions
                    .create(
                        &PostParams::default(),
                        &amalthea_session(&name, index % 3 == 0),
                    )
                    .await?;
                if index % 3 == 1 {
                    accesses
                        .create(
                            &PostParams::default(),
                            &ssh_access(&format!("{name}-access"), &name),
                        )
                        .await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    let last = format!("session-{}", SESSIONS - 1);
    let deadline = Instant::now() + TIMEOUT;
    while !webhook.cache.facts(namespace.name(), &last).session_found {
        anyhow::ensure!(Instant::now() < deadline, "the caches never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Straight to the webhook over one keep-alive HTTPS connection.
    let ca_pem = webhook.ca_pem.clone().expect("self-managed CA");
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .build()?;
    let url = format!("https://{}/mutate", webhook.address);
    let bodies: Vec<Vec<u8>> = (0..DIRECT_REVIEWS)
        .map(|index| serde_json::to_vec(&review(namespace.name(), index)))
        .collect::<Result<_, _>>()?;
    let mut round_trips = Vec::with_capacity(DIRECT_REVIEWS);
    let mut injected = 0;
    for body in bodies {
        let started = Instant::now();
        let response = https
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let answer: Value = response.json().await?;
        round_trips.push(started.elapsed());
        assert_eq!(answer["response"]["allowed"], true);
        if answer["response"]["patch"].is_string() {
            injected += 1;
        }
    }
    round_trips.sort();
    let direct_p50 = percentile(&round_trips, 0.50);
    let direct_p99 = percentile(&round_trips, 0.99);
    let direct_max = round_trips[round_trips.len() - 1];
    // Sessions 0, 3, 6, ... are annotated and 1, 4, 7, ... have an SSHAccess.
    assert_eq!(
        injected,
        (0..DIRECT_REVIEWS)
            .filter(|index| index % SESSIONS % 3 != 2)
            .count()
    );

    // Through kube-apiserver: pods of annotated sessions.
    let pods = namespace.api::<Pod>();
    let mut creates = Vec::with_capacity(API_SERVER_PODS);
    for index in 0..API_SERVER_PODS {
        let session = format!("session-{}", index * 3);
        let pod: Pod = serde_json::from_value(session_pod_json(&session))?;
        let started = Instant::now();
        let created = pods.create(&PostParams::default(), &pod).await?;
        creates.push(started.elapsed());
        let containers = created.spec.expect("spec").containers;
        assert!(
            containers
                .iter()
                .any(|container| container.name == "renku-ssh")
        );
    }
    creates.sort();
    let (server_p99_bucket, observations) = histogram_p99(&webhook.metrics_text());

    eprintln!(
        "direct HTTPS reviews: n={DIRECT_REVIEWS} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        direct_p50.as_secs_f64() * 1000.0,
        direct_p99.as_secs_f64() * 1000.0,
        direct_max.as_secs_f64() * 1000.0,
    );
    eprintln!(
        "pod creates through kube-apiserver: n={API_SERVER_PODS} p50={:.2} ms p99={:.2} ms",
        percentile(&creates, 0.50).as_secs_f64() * 1000.0,
        percentile(&creates, 0.99).as_secs_f64() * 1000.0,
    );
    eprintln!(
        "webhook-side histogram: n={observations} p99 <= {} ms (bucket bound)",
        server_p99_bucket * 1000.0
    );
    assert!(direct_p99 < MAX_P99, "direct p99 {direct_p99:?}");
    assert!(
        server_p99_bucket < MAX_P99.as_secs_f64(),
        "webhook-side p99 bucket {server_p99_bucket}"
    );

    namespace.delete_and_wait().await
}
