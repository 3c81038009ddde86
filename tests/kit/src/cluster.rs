use std::path::PathBuf;

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Environment variable that points tests at a kubeconfig other than the local control plane's.
pub const KUBECONFIG_ENV: &str = "RENKU_SSH_KUBECONFIG";

const START_HINT: &str = "start the local control plane with `make cluster-up` (or run the tests with `make test`, \
     which starts and stops it)";

/// Returns the root of the Cargo workspace, where `crds/`, `scripts/` and `.run/` live.
pub fn workspace_root() -> PathBuf {
    let kit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    kit.ancestors().nth(2).map(PathBuf::from).unwrap_or(kit)
}

/// Returns the kubeconfig path: `$RENKU_SSH_KUBECONFIG`, else the one `scripts/cluster.sh up`
/// writes under `$RENKU_SSH_RUN_DIR` (default `<workspace>/.run`).
pub fn kubeconfig_path() -> PathBuf {
    if let Some(path) = std::env::var_os(KUBECONFIG_ENV) {
        return PathBuf::from(path);
    }
    let run_dir = std::env::var_os("RENKU_SSH_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".run"));
    run_dir.join("cluster").join("kubeconfig")
}

/// Connects to the local control plane and checks that it answers.
///
/// Fails, never skips, when the cluster is missing, so a test run without a control plane
/// cannot pass by accident.
pub async fn connect() -> anyhow::Result<Client> {
    let path = kubeconfig_path();
    if !path.exists() {
        bail!("kubeconfig {} not found: {START_HINT}", path.display());
    }
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    client.apiserver_version().await.with_context(|| {
        format!(
            "the API server in {} does not answer: {START_HINT}",
            path.display()
        )
    })?;
    Ok(client)
}
