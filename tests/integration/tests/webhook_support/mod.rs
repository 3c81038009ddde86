//! Set-up shared by the webhook tests: the webhook in-process on a free loopback port,
//! registered for one test namespace only, and objects shaped like the ones amalthea creates.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::AmaltheaSession;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ApiResource, DeleteParams, DynamicObject};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use testkit::{TestNamespace, wait_for};
use tokio::task::JoinHandle;
use webhook::cache::SessionCache;
use webhook::config::{
    ObjectName, Registration, SelfManagedTls, SubjectAltName, WebhookConfigurationRef,
};
use webhook::sidecar::InjectionConfig;
use webhook::{Config, SshPolicy, TlsConfig};

/// Install image the tests configure. No kubelet runs, so no image is ever pulled.
pub const INSTALL_IMAGE: &str = "registry.invalid/renku-sshd:test";
/// Image of the session container in the test StatefulSets.
pub const SESSION_IMAGE: &str = "registry.invalid/renku/python:3.12";
/// Time allowed for the control plane to create objects.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Returns a free TCP port on 127.0.0.1. Another process could take it before the webhook binds
/// it; on this single-user test machine that has not happened.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Name of the MutatingWebhookConfiguration of the webhook serving `namespace`.
pub fn configuration_name(namespace: &str) -> String {
    format!("renku-ssh-webhook-{namespace}")
}

/// Settings for a webhook on `127.0.0.1:port` that serves `namespace` only: its caches watch that
/// namespace, its certificate Secret lives there, and it registers itself with a namespace
/// selector for it, so that tests running in parallel never call each other's webhooks.
pub fn test_config(namespace: &str, policy: SshPolicy, port: u16) -> Config {
    let namespace_selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            namespace.to_owned(),
        )])),
        ..Default::default()
    };
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        policy,
        watch_namespace: Some(namespace.to_owned()),
        injection: InjectionConfig::new(INSTALL_IMAGE),
        tls: TlsConfig::SelfManaged(SelfManagedTls {
            secret: ObjectName::new(namespace, webhook::config::DEFAULT_TLS_SECRET),
            service: ObjectName::new(namespace, webhook::config::DEFAULT_SERVICE),
            extra_sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
            sync_ca_bundle: true,
        }),
        webhook_configuration: WebhookConfigurationRef {
            name: configuration_name(namespace),
            webhook_name: webhook::config::DEFAULT_WEBHOOK_NAME.to_owned(),
        },
        registration: Some(Registration {
            url: format!("https://127.0.0.1:{port}/mutate"),
            namespace_selector: Some(namespace_selector),
        }),
        cache_sync_wait: Duration::from_secs(2),
    }
}

/// A webhook serving in the background of the test.
pub struct RunningWebhook {
    pub address: SocketAddr,
    pub ca_pem: Option<String>,
    pub cache: Arc<SessionCache>,
    pub registry: Registry,
    configuration: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), webhook::Error>>>,
}

impl RunningWebhook {
    /// Binds and runs the webhook, and waits until its MutatingWebhookConfiguration exists
    /// (when it registers itself) and its caches have synced.
    pub async fn start(client: &Client, config: Config) -> anyhow::Result<Self> {
        let configuration = config.webhook_configuration.name.clone();
        let registers = config.registration.is_some();
        let mut registry = Registry::default();
        let bound = webhook::Webhook::bind(config, client.clone(), &mut registry).await?;
        let address = bound.local_addr();
        let ca_pem = bound.ca_bundle().map(str::to_owned);
        let cache = bound.session_cache();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async {
            let _ = stopped.await;
        }));
        if registers {
            let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
            wait_for(&api, &configuration, TIMEOUT, |_| true).await?;
        }
        anyhow::ensure!(
            cache.wait_synced(TIMEOUT).await,
            "the webhook caches did not sync"
        );
        Ok(Self {
            address,
            ca_pem,
            cache,
            registry,
            configuration,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the server and waits until its port is closed. The MutatingWebhookConfiguration
    /// stays registered.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("webhook task panicked")??;
        }
        Ok(())
    }

    /// Returns the webhook's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode");
        text
    }

    /// Returns the value of the admissions counter for `result` and `reason`, 0 when absent.
    pub fn admissions(&self, result: &str, reason: &str) -> u64 {
        let prefix = format!(
            "renku_ssh_webhook_admissions_total{{result=\"{result}\",reason=\"{reason}\"}} "
        );
        self.metrics_text()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RunningWebhook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let name = self.configuration.clone();
        // The test's runtime may be the one dropping this value, so the delete runs on a fresh
        // runtime with a fresh client, as TestNamespace does.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = testkit::connect().await?;
                let api = Api::<MutatingWebhookConfiguration>::all(client);
                if api.get_opt(&name).await?.is_some() {
                    api.delete(&name, &DeleteParams::default()).await?;
                }
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(error)) = outcome {
            eprintln!(
                "failed to delete MutatingWebhookConfiguration {}: {error:#}",
                self.configuration
            );
        }
    }
}

/// Creates a test namespace and waits for its default ServiceAccount, without which the
/// ServiceAccount admission plugin rejects pods.
pub async fn namespace_with_account(
    client: &Client,
    prefix: &str,
) -> anyhow::Result<TestNamespace> {
    testkit::install_project_crds(client).await?;
    let namespace = TestNamespace::create(client, prefix).await?;
    wait_for(
        &namespace.api::<ServiceAccount>(),
        "default",
        TIMEOUT,
        |_| true,
    )
    .await?;
    Ok(namespace)
}

/// Returns an AmaltheaSession, annotated with `ssh.renku.io/enabled: "true"` when `annotated`.
pub fn amalthea_session(name: &str, annotated: bool) -> AmaltheaSession {
    let mut session: AmaltheaSession = serde_json::from_value(json!({
        "apiVersion": "amalthea.dev/v1alpha1",
        "kind": "AmaltheaSession",
        "metadata": { "name": name },
        "spec": {
            "session": { "image": SESSION_IMAGE, "port": 8888, "runAsUser": 1000, "runAsGroup": 1000 },
            "hibernated": false,
        },
    }))
    .expect("valid AmaltheaSession");
    if annotated {
        session.metadata.annotations = Some(BTreeMap::from([(
            webhook::policy::ENABLED_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
    }
    session
}

/// Returns an SSHAccess named `name` for session `session`.
pub fn ssh_access(name: &str, session: &str) -> api::SshAccess {
    serde_json::from_value(json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": { "name": name },
        "spec": { "sessionRef": { "name": session }, "user": "0c1d2e3f-user" },
    }))
    .expect("valid SSHAccess")
}

/// Returns a StatefulSet shaped like amalthea's for session `name`: one replica, the session
/// labels, a session container with env, working directory, mounts and user, an authentication
/// proxy container and an init container. The pod does not mount a service account token, so
/// that the pod's containers can be compared with the template byte for byte.
pub fn session_stateful_set(name: &str) -> StatefulSet {
    let labels = json!({
        "app.kubernetes.io/name": "AmaltheaSession",
        "app.kubernetes.io/instance": name,
    });
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": { "fsGroup": 1000 },
                    "initContainers": [{
                        "name": "init-workspace",
                        "image": "registry.invalid/renku/init:1",
                        "volumeMounts": [{ "name": "workspace", "mountPath": "/home/jovyan/work" }],
                    }],
                    "containers": [
                        {
                            "name": "amalthea-session",
                            "image": SESSION_IMAGE,
                            "args": ["jupyter", "lab", "--port=8888"],
                            "workingDir": "/home/jovyan/work",
                            "env": [
                                { "name": "RENKU_SESSION", "value": "1" },
                                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            ],
                            "envFrom": [{ "configMapRef": { "name": format!("{name}-env"), "optional": true } }],
                            "ports": [{ "name": "http", "containerPort": 8888 }],
                            "resources": { "requests": { "cpu": "100m", "memory": "256Mi" } },
                            "securityContext": { "runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true },
                            "volumeMounts": [
                                { "name": "workspace", "mountPath": "/home/jovyan/work" },
                                { "name": "shm", "mountPath": "/dev/shm" },
                            ],
                        },
                        {
                            "name": "authproxy",
                            "image": "registry.invalid/renku/authproxy:1",
                            "ports": [{ "name": "proxy", "containerPort": 65535 }],
                        },
                    ],
                    "volumes": [
                        { "name": "workspace", "emptyDir": {} },
                        { "name": "shm", "emptyDir": { "medium": "Memory" } },
                    ],
                },
            },
        },
    }))
    .expect("valid StatefulSet")
}

/// Reads an object as the API server's raw JSON, without a round trip through typed structs.
pub async fn raw_json<K>(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Value>
where
    K: kube::Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let object = api
        .get(name)
        .await
        .with_context(|| format!("reading {name}"))?;
    Ok(serde_json::to_value(object)?)
}

/// Returns the entry named `name` in the JSON list `list`.
pub fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|item| item["name"] == name)
}

/// Returns the names in the JSON list `list`.
pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str().map(str::to_owned))
        .collect()
}
