//! Stands in for a kubelet for the SSH sidecar of session pods on a machine without one.
//!
//! `pod-runner <namespace> <pod>` waits for the pod and gives it a network namespace of its own
//! ([`PodSandbox`]). It mounts the Secret volumes of the `renku-ssh` container and keeps them in
//! sync as kubelet does, starts the real `renku-sshd` with the container's arguments, and writes
//! the pod's status (Running, with the sandbox address as `podIP`). It runs until SIGTERM or
//! SIGINT and then removes the sandbox. Needs root for the network namespace.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use testkit::{PodSandbox, connect, mark_pod_running, sshd_binary, wait_for};

/// Name of the sidecar container the admission webhook adds.
const SIDECAR: &str = "renku-ssh";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namespace, pod_name] = args.as_slice() else {
        bail!("usage: pod-runner <namespace> <pod>");
    };
    let subnet = std::env::var("POD_RUNNER_SUBNET")
        .ok()
        .map(|value| value.parse::<u8>())
        .transpose()
        .context("POD_RUNNER_SUBNET must be a number from 0 to 255")?
        .unwrap_or(1);

    let client = connect().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    println!("pod-runner: waiting for pod {namespace}/{pod_name}");
    let pod = wait_for(&pods, pod_name, Duration::from_secs(300), |_| true).await?;
    let sidecar = sidecar_of(&pod)?;

    let mut sandbox = PodSandbox::create(subnet)?;
    let mut arguments: Vec<String> = sidecar
        .command
        .iter()
        .flatten()
        .chain(sidecar.args.iter().flatten())
        .cloned()
        .collect();
    if arguments.is_empty() {
        bail!("container {SIDECAR} of pod {pod_name} has neither command nor args");
    }
    // The init container would copy renku-sshd into the pod; here the locally built one runs.
    arguments.remove(0);
    for (mount_path, secret_name, volume) in secret_mounts(&pod, &sidecar) {
        let directory = sandbox
            .mount_secret(&client, namespace, &secret_name, &volume)
            .await?;
        rewrite_prefix(&mut arguments, &mount_path, &directory);
    }
    sandbox.spawn(SIDECAR, &sshd_binary()?, &arguments)?;
    mark_pod_running(&pods, pod_name, &sandbox.pod_ip().to_string()).await?;
    println!(
        "pod-runner: {namespace}/{pod_name} runs renku-sshd at {}:2222 (network namespace {})",
        sandbox.pod_ip(),
        sandbox.netns()
    );

    admin::shutdown_signal().await;
    println!(
        "pod-runner: stopping {namespace}/{pod_name}; sidecar log:\n{}",
        sandbox.log(SIDECAR)
    );
    Ok(())
}

fn sidecar_of(pod: &Pod) -> anyhow::Result<Container> {
    let containers = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .find(|container| container.name == SIDECAR)
        .cloned()
        .with_context(|| {
            format!(
                "pod {} has no {SIDECAR} container: the admission webhook did not inject it; \
             check that the operator runs and that SSH is enabled for the session",
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// Returns `(mount path, Secret name, volume name)` for each Secret volume the sidecar mounts.
fn secret_mounts(pod: &Pod, sidecar: &Container) -> Vec<(String, String, String)> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    sidecar
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|mount| {
            let volume = volumes.iter().find(|volume| volume.name == mount.name)?;
            let secret_name = volume.secret.as_ref()?.secret_name.clone()?;
            Some((mount.mount_path.clone(), secret_name, mount.name.clone()))
        })
        .collect()
}

/// Replaces `prefix` at the start of each argument (or of the value of `--flag=value`) with
/// `directory`, mapping paths inside the pod onto the sandbox.
fn rewrite_prefix(arguments: &mut [String], prefix: &str, directory: &std::path::Path) {
    let prefix = prefix.trim_end_matches('/');
    for argument in arguments.iter_mut() {
        let (flag, value) = match argument.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (format!("{flag}="), value.to_owned()),
            _ => (String::new(), argument.clone()),
        };
        if let Some(rest) = value.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            let mapped = PathBuf::from(format!("{}{rest}", directory.display()));
            *argument = format!("{flag}{}", mapped.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_prefix_maps_paths_and_flag_values() {
        let mut arguments = vec![
            "--host-key".to_owned(),
            "/etc/renku-ssh/hostkey/ssh_host_ed25519_key".to_owned(),
            "--authorized-keys=/etc/renku-ssh/hostkeys-other/x".to_owned(),
            "/etc/renku-ssh/hostkey".to_owned(),
        ];
        rewrite_prefix(
            &mut arguments,
            "/etc/renku-ssh/hostkey",
            std::path::Path::new("/tmp/v"),
        );
        assert_eq!(arguments[1], "/tmp/v/ssh_host_ed25519_key");
        assert_eq!(
            arguments[2],
            "--authorized-keys=/etc/renku-ssh/hostkeys-other/x"
        );
        assert_eq!(arguments[3], "/tmp/v");
    }
}
