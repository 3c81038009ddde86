//! The Helm chart in `manifests/renku-ssh` on the local control plane: rendering it, applying
//! the rendered objects, installing it as a Helm release, and kubeconfigs that act as the
//! chart's operator and gateway ServiceAccounts.
//!
//! Helm runs through `scripts/helm.sh`, which builds it from the Go module proxy on first use
//! (several minutes on a cold cache).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{TEST_FIELD_MANAGER, kubeconfig_path, workspace_root};

/// Path of the chart, relative to the workspace root.
pub const CHART_DIR: &str = "manifests/renku-ssh";

/// Lifetime requested for ServiceAccount tokens, in seconds.
pub const TOKEN_SECONDS: i64 = 3600;

/// Returns the chart's folder.
pub fn chart_dir() -> PathBuf {
    workspace_root().join(CHART_DIR)
}

/// Runs `scripts/helm.sh` with `args`, pointed at the local control plane, and returns its
/// standard output. A failure carries helm's standard error.
pub async fn helm(args: &[&str]) -> anyhow::Result<String> {
    let script = workspace_root().join("scripts/helm.sh");
    let output = tokio::process::Command::new(&script)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "helm {} failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.trim()
        );
    }
    Ok(stdout)
}

/// Returns values that keep a test installation inside `namespace`: a loopback gateway host
/// and a webhook that only receives pods of that namespace. Merge a test's own values over them
/// with [`merge_values`].
pub fn test_values(namespace: &str) -> Value {
    json!({
        "gateway": { "host": "127.0.0.1" },
        "webhook": {
            "namespaceSelector": {
                "matchLabels": { "kubernetes.io/metadata.name": namespace },
            },
        },
    })
}

/// Merges `overlay` into `base`, key by key for objects; any other value in `overlay`
/// replaces the one in `base`, as Helm merges values files.
pub fn merge_values(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge_values(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// A values file in the temporary folder, removed when dropped.
struct ValuesFile(PathBuf);

impl ValuesFile {
    fn write(values: &Value) -> anyhow::Result<Self> {
        let suffix: u64 = rand::thread_rng().r#gen();
        let path = std::env::temp_dir().join(format!("renku-ssh-values-{suffix:016x}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(values)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Renders the chart with `helm template` and returns its objects, CRDs excluded.
pub async fn render_chart(
    release: &str,
    namespace: &str,
    values: &Value,
) -> anyhow::Result<Vec<Value>> {
    let file = ValuesFile::write(values)?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    let text = helm(&[
        "template",
        release,
        chart,
        "--namespace",
        namespace,
        "--values",
        file.path(),
    ])
    .await?;
    parse_documents(&text)
}

/// Parses a multi-document YAML stream, skipping empty documents.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("parsing rendered YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// Applies `objects` with server-side apply, in order. Namespaced objects without a namespace
/// go to `namespace`.
pub async fn apply_objects(
    client: &Client,
    namespace: &str,
    objects: &[Value],
) -> anyhow::Result<()> {
    for object in objects {
        apply_object(client, namespace, object).await?;
    }
    Ok(())
}

async fn apply_object(client: &Client, namespace: &str, object: &Value) -> anyhow::Result<()> {
    let dynamic: DynamicObject = serde_json::from_value(object.clone())
        .context("rendered object is not a Kubernetes object")?;
    let types = dynamic
        .types
        .clone()
        .context("rendered object without apiVersion and kind")?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let name = dynamic
        .metadata
        .name
        .clone()
        .context("rendered object without a name")?;
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {}", types.kind))?;
    let api: Api<DynamicObject> = match capabilities.scope {
        kube::discovery::Scope::Namespaced => {
            let object_namespace = dynamic.metadata.namespace.as_deref().unwrap_or(namespace);
            Api::namespaced_with(client.clone(), object_namespace, &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply(TEST_FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {} {name}", types.kind))?;
    Ok(())
}

/// Deletes the cluster-scoped objects of one release (ClusterRoles, ClusterRoleBindings, the
/// MutatingWebhookConfiguration) when dropped, which deleting the test namespace would leave
/// behind.
pub struct ClusterScopedCleanup {
    release: String,
    armed: bool,
}

impl ClusterScopedCleanup {
    /// Arms the cleanup for the objects labelled with `release`.
    pub fn new(release: &str) -> Self {
        Self {
            release: release.to_owned(),
            armed: true,
        }
    }

    /// Keeps the objects, for example after `helm uninstall` removed them already.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ClusterScopedCleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/part-of=renku-ssh",
            self.release
        );
        // Same reason as in TestNamespace: the test's runtime may be the one dropping this.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(delete_cluster_objects(&selector))
        })
        .join();
        if let Ok(Err(error)) = outcome {
            eprintln!(
                "failed to delete the cluster-scoped objects of release {}: {error:#}",
                self.release
            );
        }
    }
}

/// The chart installed as a Helm release in a test namespace, with kubeconfigs for its two
/// ServiceAccounts.
///
/// Dropping it removes the kubeconfigs and the release's cluster-scoped objects (see
/// [`ClusterScopedCleanup`]) unless [`ChartInstall::uninstall`] ran.
pub struct ChartInstall {
    release: String,
    namespace: String,
    operator_kubeconfig: PathBuf,
    gateway_kubeconfig: PathBuf,
    folder: PathBuf,
    cleanup: ClusterScopedCleanup,
}

impl ChartInstall {
    /// Installs the chart into `namespace` (`helm upgrade --install`, no waiting for pods), as
    /// a release named like the namespace, and writes kubeconfigs with fresh tokens of the
    /// operator and gateway ServiceAccounts.
    pub async fn install(client: &Client, namespace: &str, values: &Value) -> anyhow::Result<Self> {
        let release = namespace.to_owned();
        let cleanup = ClusterScopedCleanup::new(&release);
        run_upgrade(&release, namespace, values).await?;
        let folder = std::env::temp_dir().join(format!("renku-ssh-chart-{namespace}"));
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let install = Self {
            release,
            namespace: namespace.to_owned(),
            operator_kubeconfig: folder.join("operator.kubeconfig"),
            gateway_kubeconfig: folder.join("gateway.kubeconfig"),
            folder,
            cleanup,
        };
        let kubeconfigs = [
            ("operator", &install.operator_kubeconfig),
            ("gateway", &install.gateway_kubeconfig),
        ];
        for (component, path) in kubeconfigs {
            let account = install.service_account(client, component).await?;
            let token = request_token(client, namespace, &account).await?;
            write_kubeconfig(path, &format!("{namespace}-{account}"), &token)?;
        }
        Ok(install)
    }

    /// Runs `helm upgrade` of this release with `values`.
    pub async fn upgrade(&self, values: &Value) -> anyhow::Result<()> {
        run_upgrade(&self.release, &self.namespace, values).await
    }

    /// Runs `helm uninstall`. Objects with `helm.sh/resource-policy: keep` stay.
    pub async fn uninstall(mut self) -> anyhow::Result<()> {
        helm(&["uninstall", &self.release, "--namespace", &self.namespace]).await?;
        self.cleanup.disarm();
        Ok(())
    }

    /// Returns the Helm release name.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Returns the prefix of the release's object names, as the chart's `renku-ssh.fullname`
    /// makes it without name overrides: the release name, followed by `-renku-ssh` unless it
    /// contains that already, cut to 40 characters.
    pub fn fullname(&self) -> String {
        let full = if self.release.contains("renku-ssh") {
            self.release.clone()
        } else {
            format!("{}-renku-ssh", self.release)
        };
        full.chars()
            .take(40)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned()
    }

    /// Returns the path of a kubeconfig that authenticates as the operator's ServiceAccount.
    pub fn operator_kubeconfig(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// Returns the path of a kubeconfig that authenticates as the gateway's ServiceAccount.
    pub fn gateway_kubeconfig(&self) -> &Path {
        &self.gateway_kubeconfig
    }

    /// Returns a client that acts as the operator's ServiceAccount.
    pub async fn operator_client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.operator_kubeconfig).await
    }

    /// Returns a client that acts as the gateway's ServiceAccount.
    pub async fn gateway_client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.gateway_kubeconfig).await
    }

    /// Returns the name of the ServiceAccount of `component` (`operator` or `gateway`).
    pub async fn service_account(
        &self,
        client: &Client,
        component: &str,
    ) -> anyhow::Result<String> {
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
            self.release
        );
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&selector))
            .await?;
        match accounts.items.as_slice() {
            [account] => account
                .metadata
                .name
                .clone()
                .context("ServiceAccount without a name"),
            other => bail!(
                "expected one ServiceAccount with labels {selector} in {}, found {}",
                self.namespace,
                other.len()
            ),
        }
    }
}

impl Drop for ChartInstall {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

async fn delete_cluster_objects(selector: &str) -> anyhow::Result<()> {
    let client = crate::connect().await?;
    let list = ListParams::default().labels(selector);
    let delete = DeleteParams::background();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete_collection(&delete, &list)
        .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .delete_collection(&delete, &list)
        .await?;
    Api::<ClusterRole>::all(client)
        .delete_collection(&delete, &list)
        .await?;
    Ok(())
}

async fn run_upgrade(release: &str, namespace: &str, values: &Value) -> anyhow::Result<()> {
    let file = ValuesFile::write(values)?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    helm(&[
        "upgrade",
        "--install",
        release,
        chart,
        "--namespace",
        namespace,
        "--values",
        file.path(),
    ])
    .await?;
    Ok(())
}

/// Requests a token for a ServiceAccount through the TokenRequest API.
async fn request_token(client: &Client, namespace: &str, account: &str) -> anyhow::Result<String> {
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": { "expirationSeconds": TOKEN_SECONDS },
    }))?;
    let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let response: TokenRequest = api
        .create_subresource("token", account, &Default::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{account}"))?;
    response
        .status
        .and_then(|status| status.token)
        .context("TokenRequest answered without a token")
}

/// Writes a kubeconfig for the local control plane that authenticates with `token`.
fn write_kubeconfig(path: &Path, user: &str, token: &str) -> anyhow::Result<()> {
    let admin = Kubeconfig::read_from(kubeconfig_path())?;
    let context_name = admin
        .current_context
        .clone()
        .context("admin kubeconfig without current-context")?;
    let context = admin
        .contexts
        .iter()
        .find(|context| context.name == context_name)
        .and_then(|context| context.context.as_ref())
        .context("admin kubeconfig without its current context")?;
    let cluster = admin
        .clusters
        .iter()
        .find(|cluster| cluster.name == context.cluster)
        .and_then(|cluster| cluster.cluster.as_ref())
        .context("admin kubeconfig without the cluster of its current context")?;
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "local",
            "cluster": {
                "server": cluster.server,
                "certificate-authority-data": cluster.certificate_authority_data,
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": user, "context": { "cluster": "local", "user": user } }],
        "current-context": user,
    });
    let text = serde_yaml::to_string(&kubeconfig)?;
    write_private_file(path, &text)
}

fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Returns a client for the kubeconfig at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Ok(Client::try_from(config)?)
}

/// Returns the objects of `kind` among `objects`, keyed by name.
pub fn objects_of_kind<'a>(objects: &'a [Value], kind: &str) -> BTreeMap<&'a str, &'a Value> {
    objects
        .iter()
        .filter(|object| object["kind"] == kind)
        .map(|object| {
            (
                object["metadata"]["name"].as_str().unwrap_or_default(),
                object,
            )
        })
        .collect()
}
