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

/// Returns a `cargo` command (`$CARGO`, else `cargo`) that runs in the workspace root without
/// the variables cargo sets for the running test, such as `CARGO_MANIFEST_DIR`.
///
/// ring 0.17's build script declares `cargo:rerun-if-env-changed=CARGO_MANIFEST_DIR`. A nested
/// build that inherited the test's value would therefore rebuild ring and every crate above it,
/// and the next `cargo test` would rebuild them once more.
pub fn cargo_command() -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(workspace_root());
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else {
            continue;
        };
        let set_for_test = matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
        ) || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_");
        if set_for_test {
            command.env_remove(name);
        }
    }
    command
}
