use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::{TEST_FIELD_MANAGER, wait_for, workspace_root};

/// Applies a CRD with server-side apply and waits until the API server reports it Established.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd
        .metadata
        .name
        .clone()
        .context("CRD without metadata.name")?;
    api.patch(
        &name,
        &PatchParams::apply(TEST_FIELD_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    wait_for(&api, &name, Duration::from_secs(30), |crd| {
        crd.status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await?;
    Ok(())
}

/// Installs every CRD in the workspace's `crds/` folder.
pub async fn install_project_crds(client: &Client) -> anyhow::Result<()> {
    let folder = workspace_root().join("crds");
    let mut paths: Vec<_> = std::fs::read_dir(&folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        apply_crd(client, &read_crd(&path)?).await?;
    }
    Ok(())
}

fn read_crd(path: &Path) -> anyhow::Result<CustomResourceDefinition> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {} as a CRD", path.display()))
}
