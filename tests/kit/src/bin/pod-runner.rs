//! Stands in for a kubelet for the SSH sidecar of session pods on a machine without one.
//!
//! `pod-runner <namespace> <pod>` waits for the pod and gives it a network namespace of its own
//! ([`PodSandbox`]). It mounts the Secret volumes of the `renku-ssh` container and keeps them in
//! sync as kubelet does, starts the real `renku-sshd` with the container's arguments and a
//! container's environment (none of pod-runner's own variables), and writes the pod's status
//! (Running, with the sandbox address as `podIP`). It runs until SIGTERM or SIGINT and then
//! removes the sandbox. Needs root for the network namespace.
//!
//! NOTE: it serves the pod it found at start. A pod deleted and created again (a restarted
//! session) stays Pending until pod-runner runs again (`make up` starts it). It always uses
//! sandbox subnet 1 (10.213.1.0/30), so two `make up` runs on one machine collide.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use testkit::{PodSandbox, connect, mark_pod_running, sshd_binary, wait_for};

/// Name of the sidecar container the admission webhook adds.
const SIDECAR: &str = "renku-ssh";
/// PATH that container runtimes (containerd, Docker) set when the image sets none.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    // `env -i` starts renku-sshd with only the container's variables, so a login into the
    // session does not see KUBECONFIG or the secrets in pod-runner's own environment.
    let mut env_arguments = vec!["-i".to_owned()];
    env_arguments.extend(
        container_env(&pod, &sidecar)
            .into_iter()
            .map(|(name, value)| format!("{name}={value}")),
    );
    env_arguments.push(sshd_binary()?.display().to_string());
    env_arguments.extend(arguments);
    sandbox.spawn(SIDECAR, Path::new("env"), &env_arguments)?;
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

/// Returns the environment a container runtime gives `container` of `pod`: PATH, HOME and
/// HOSTNAME, then the container's `env` entries with a literal value, in spec order. HOME is
/// pod-runner's own, because renku-sshd runs as the same user.
fn container_env(pod: &Pod, container: &Container) -> Vec<(String, String)> {
    let home = std::env::var("HOME")
        .ok()
        .filter(|home| !home.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let spec = pod.spec.as_ref();
    let host_name = spec
        .and_then(|spec| spec.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut variables = vec![
        ("PATH".to_owned(), CONTAINER_PATH.to_owned()),
        ("HOME".to_owned(), home),
        ("HOSTNAME".to_owned(), host_name),
    ];
    for variable in container.env.iter().flatten() {
        match &variable.value {
            Some(value) => variables.push((variable.name.clone(), value.clone())),
            // NOTE: valueFrom (fieldRef, secretKeyRef, ...) and `$(NAME)` references in values
            // are not resolved; such variables are left out or passed through unexpanded.
            None if variable.value_from.is_some() => println!(
                "pod-runner: env {} of container {} uses valueFrom, which pod-runner does not \
                 resolve; renku-sshd starts without it",
                variable.name, container.name
            ),
            None => variables.push((variable.name.clone(), String::new())),
        }
    }
    variables
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
    fn container_env_has_only_container_variables() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo-0"},
            "spec": {"containers": [{
                "name": SIDECAR,
                "env": [
                    {"name": "LANG", "value": "C.UTF-8"},
                    {"name": "EMPTY"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                ]
            }]}
        }))
        .expect("pod");
        let sidecar = sidecar_of(&pod).expect("sidecar");

        let variables = container_env(&pod, &sidecar);

        let names: Vec<&str> = variables.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "HOSTNAME", "LANG", "EMPTY"]);
        assert_eq!(variables[0].1, CONTAINER_PATH);
        assert_eq!(variables[2].1, "demo-0");
        assert_eq!(variables[3].1, "C.UTF-8");
        assert_eq!(variables[4].1, "");
    }

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
