//! The Helm chart in manifests/renku-ssh, rendered by the real helm (built by scripts/helm.sh).
//! The tests cover lint, the objects of the default and sample values, the values schema and
//! the template checks, and the environment variables against the binaries' flags. They also
//! compare the chart's CRD copy with crds/ and read the generated gateway host key back with
//! the real ssh-keygen.
//!
//! None of these tests needs the control plane; helm_cluster.rs applies the chart to it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use testkit::{chart_dir, helm, merge_values, objects_of_kind, render_chart, workspace_root};

const RELEASE: &str = "renku-ssh";
const NAMESPACE: &str = "renku";

fn minimal_values() -> Value {
    json!({ "gateway": { "host": "ssh.renku.example.org" } })
}

fn with(overlay: Value) -> Value {
    let mut values = minimal_values();
    merge_values(&mut values, &overlay);
    values
}

fn sample(name: &str) -> PathBuf {
    workspace_root().join("manifests/samples").join(name)
}

fn read_sample(name: &str) -> Value {
    let path = sample(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    testkit::parse_documents(&text)
        .expect("sample parses")
        .remove(0)
}

fn chart_path() -> String {
    chart_dir().to_string_lossy().into_owned()
}

/// Renders the chart with `--set` arguments and returns helm's error message, if any.
async fn render_error(sets: &[&str]) -> Option<String> {
    let chart = chart_path();
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        NAMESPACE,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm(&args).await.err().map(|error| format!("{error:#}"))
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let of_kind = objects_of_kind(objects, kind);
    of_kind.get(name).copied().unwrap_or_else(|| {
        panic!(
            "no {kind} {name}; rendered: {:?}",
            of_kind.keys().collect::<Vec<_>>()
        )
    })
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|containers| containers.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {}", deployment["metadata"]["name"]))
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    (
                        entry["name"].as_str().unwrap_or_default().to_owned(),
                        entry.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env_of(container)
        .into_iter()
        .find(|(key, _)| key == name)
        .and_then(|(_, entry)| entry["value"].as_str().map(str::to_owned))
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Returns the environment variable names a config module declares with `env = "..."`.
fn declared_env(relative: &str) -> BTreeSet<String> {
    let path = workspace_root().join(relative);
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut names = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(start) = rest.find("env = \"") {
        rest = &rest[start + "env = \"".len()..];
        if let Some(end) = rest.find('"') {
            names.insert(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    names
}

#[tokio::test]
async fn chart_crds_match_generated() -> anyhow::Result<()> {
    let generated = workspace_root().join("crds/ssh.renku.io_sshaccesses.yaml");
    let copy = chart_dir().join("crds/ssh.renku.io_sshaccesses.yaml");
    let generated_text = std::fs::read_to_string(&generated)?;
    let copy_text = std::fs::read_to_string(&copy)?;
    assert!(
        generated_text == copy_text,
        "{} differs from {}: run `make helm-crds` to copy it",
        copy.display(),
        generated.display()
    );

    let shipped: BTreeSet<String> = std::fs::read_dir(chart_dir().join("crds"))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    // The AmaltheaSession CRD belongs to Amalthea's own installation.
    assert_eq!(
        shipped,
        BTreeSet::from(["ssh.renku.io_sshaccesses.yaml".to_owned()])
    );
    Ok(())
}

#[tokio::test]
async fn lint_passes_for_samples() -> anyhow::Result<()> {
    let chart = chart_path();
    for name in ["values-minimal.yaml", "values-production.yaml"] {
        let values = sample(name);
        let output = helm(&[
            "lint",
            "--strict",
            &chart,
            "--values",
            &values.to_string_lossy(),
        ])
        .await?;
        assert!(output.contains("0 chart(s) failed"), "{name}: {output}");
    }
    Ok(())
}

#[tokio::test]
async fn default_render_is_hardened() -> anyhow::Result<()> {
    let objects = render_chart(RELEASE, NAMESPACE, &minimal_values()).await?;

    let expected_kinds = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(
        kinds(&objects),
        expected_kinds.iter().map(|kind| kind.to_string()).collect()
    );

    for (name, component) in [
        ("renku-ssh-operator", "operator"),
        ("renku-ssh-gateway", "gateway"),
    ] {
        let deployment = one(&objects, "Deployment", name);
        assert_eq!(deployment["spec"]["replicas"], 2, "{name}");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], name, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        let main = container(deployment, component);
        let security = &main["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/livez", "{name}");
        assert_eq!(
            main["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
        assert!(
            main["resources"]["requests"]["memory"].is_string(),
            "{name}: no memory request"
        );
        assert!(
            main["resources"]["limits"]["memory"].is_string(),
            "{name}: no memory limit"
        );
        let pdb = one(&objects, "PodDisruptionBudget", name);
        assert_eq!(pdb["spec"]["minAvailable"], 1, "{name}");
    }

    let operator = container(
        one(&objects, "Deployment", "renku-ssh-operator"),
        "operator",
    );
    let ports: Vec<&Value> = operator["ports"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|port| port["name"] == "webhook" && port["containerPort"] == 8443)
    );
    assert!(
        ports
            .iter()
            .any(|port| port["name"] == "admin" && port["containerPort"] == 8080)
    );
    let webhook_service = one(&objects, "Service", "renku-ssh-webhook");
    assert_eq!(webhook_service["spec"]["ports"][0]["port"], 443);

    let configuration = one(
        &objects,
        "MutatingWebhookConfiguration",
        "renku-ssh-webhook",
    );
    let webhook = &configuration["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(
        webhook["objectSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "AmaltheaSession"
    );
    assert_eq!(
        webhook["clientConfig"]["service"]["name"],
        "renku-ssh-webhook"
    );
    assert!(
        webhook["clientConfig"].get("caBundle").is_none(),
        "the operator owns caBundle"
    );
    assert!(
        configuration["metadata"].get("annotations").is_none(),
        "no cainjector annotation"
    );

    let service = one(&objects, "Service", "renku-ssh-gateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["ports"][0]["port"], 22);
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");

    let host_key = one(&objects, "Secret", "renku-ssh-gateway-host-key");
    assert_eq!(
        host_key["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // The operator creates the CA Secret at run time, so Helm never renders or replaces it.
    assert!(!objects_of_kind(&objects, "Secret").contains_key("renku-ssh-gateway-ca"));
    Ok(())
}

#[tokio::test]
async fn env_matches_binary_flags() -> anyhow::Result<()> {
    let operator_flags: BTreeSet<String> = declared_env("crates/operator/src/config.rs")
        .into_iter()
        .chain(declared_env("crates/webhook/src/config.rs"))
        .chain(["POD_NAME".to_owned(), "POD_NAMESPACE".to_owned()])
        .collect();
    let gateway_flags = declared_env("crates/gateway/src/config.rs");
    assert!(
        gateway_flags.contains("POD_NAMESPACE"),
        "the gateway reads its namespace from POD_NAMESPACE"
    );

    for values in [minimal_values(), read_sample("values-production.yaml")] {
        let objects = render_chart(RELEASE, NAMESPACE, &values).await?;
        let cases = [
            ("renku-ssh-operator", "operator", &operator_flags),
            ("renku-ssh-gateway", "gateway", &gateway_flags),
        ];
        for (name, component, flags) in cases {
            let main = container(one(&objects, "Deployment", name), component);
            for (variable, _) in env_of(main) {
                assert!(
                    flags.contains(&variable),
                    "{name} sets {variable}, which no flag of the binary reads"
                );
            }
        }
    }

    // Flags without a default that the binaries refuse to start without.
    let objects = render_chart(RELEASE, NAMESPACE, &minimal_values()).await?;
    let operator = container(
        one(&objects, "Deployment", "renku-ssh-operator"),
        "operator",
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_GATEWAY_HOST").as_deref(),
        Some("ssh.renku.example.org")
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_CA_SECRET").as_deref(),
        Some("renku/renku-ssh-gateway-ca")
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_WEBHOOK_INSTALL_IMAGE").as_deref(),
        Some("renku-sshd:0.1.0")
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_GATEWAY_POD_SELECTOR").as_deref(),
        Some("app.kubernetes.io/instance=renku-ssh,app.kubernetes.io/name=renku-ssh-gateway")
    );
    let gateway = container(one(&objects, "Deployment", "renku-ssh-gateway"), "gateway");
    assert_eq!(
        env_value(gateway, "RENKU_SSH_GATEWAY_HOST_KEY_SECRET").as_deref(),
        Some("renku/renku-ssh-gateway-host-key")
    );
    assert_eq!(
        env_value(gateway, "RENKU_SSH_GATEWAY_CA_SECRET").as_deref(),
        Some("renku/renku-ssh-gateway-ca")
    );
    Ok(())
}

#[tokio::test]
async fn cert_manager_mode_renders_certificate() -> anyhow::Result<()> {
    let values = with(json!({ "webhook": { "certManager": { "enabled": true } } }));
    let objects = render_chart(RELEASE, NAMESPACE, &values).await?;

    let issuer = one(&objects, "Issuer", "renku-ssh-webhook-selfsigned");
    assert_eq!(issuer["spec"], json!({ "selfSigned": {} }));
    let certificate = one(&objects, "Certificate", "renku-ssh-webhook-tls");
    assert_eq!(certificate["spec"]["secretName"], "renku-ssh-webhook-tls");
    let names = certificate["spec"]["dnsNames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        names.contains(&json!("renku-ssh-webhook.renku.svc")),
        "{names:?}"
    );
    let configuration = one(
        &objects,
        "MutatingWebhookConfiguration",
        "renku-ssh-webhook",
    );
    assert_eq!(
        configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "renku/renku-ssh-webhook-tls"
    );
    let deployment = one(&objects, "Deployment", "renku-ssh-operator");
    let operator = container(deployment, "operator");
    assert_eq!(
        env_value(operator, "RENKU_SSH_WEBHOOK_TLS_MODE").as_deref(),
        Some("files")
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_WEBHOOK_TLS_CERT_FILE").as_deref(),
        Some("/etc/renku-ssh/webhook-tls/tls.crt")
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|volume| volume["secret"]["secretName"] == "renku-ssh-webhook-tls"),
        "{volumes:?}"
    );

    // An existing issuer replaces the self-signed one.
    let values = read_sample("values-production.yaml");
    let objects = render_chart(RELEASE, NAMESPACE, &values).await?;
    assert!(objects_of_kind(&objects, "Issuer").is_empty());
    let certificate = one(&objects, "Certificate", "renku-ssh-webhook-tls");
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    Ok(())
}

#[tokio::test]
async fn namespaced_sessions_use_roles() -> anyhow::Result<()> {
    let values = with(json!({ "sessions": { "namespace": "renku-sessions" } }));
    let objects = render_chart(RELEASE, NAMESPACE, &values).await?;

    let cluster_roles: Vec<&str> = objects_of_kind(&objects, "ClusterRole")
        .into_keys()
        .collect();
    assert_eq!(
        cluster_roles,
        ["renku-ssh-operator-webhook"],
        "only the webhook configuration is cluster-scoped"
    );
    for name in ["renku-ssh-operator", "renku-ssh-gateway"] {
        let role = one(&objects, "Role", name);
        assert_eq!(role["metadata"]["namespace"], "renku-sessions", "{name}");
        let binding = one(&objects, "RoleBinding", name);
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE, "{name}");
    }
    let operator = container(
        one(&objects, "Deployment", "renku-ssh-operator"),
        "operator",
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_NAMESPACE").as_deref(),
        Some("renku-sessions")
    );
    let gateway = container(one(&objects, "Deployment", "renku-ssh-gateway"), "gateway");
    assert_eq!(
        env_value(gateway, "RENKU_SSH_GATEWAY_WATCH_NAMESPACE").as_deref(),
        Some("renku-sessions")
    );
    let webhook = &one(
        &objects,
        "MutatingWebhookConfiguration",
        "renku-ssh-webhook",
    )["webhooks"][0];
    assert_eq!(
        webhook["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "renku-sessions"
    );
    Ok(())
}

#[tokio::test]
async fn optional_objects_follow_values() -> anyhow::Result<()> {
    let values = with(json!({
        "gateway": { "autoscaling": { "enabled": true, "minReplicas": 3, "maxReplicas": 9 } },
        "metrics": { "serviceMonitor": { "enabled": true, "labels": { "release": "prometheus" } } },
        "networkPolicy": { "sessions": { "enabled": true } },
    }));
    let objects = render_chart(RELEASE, NAMESPACE, &values).await?;

    let autoscaler = one(&objects, "HorizontalPodAutoscaler", "renku-ssh-gateway");
    assert_eq!(autoscaler["spec"]["minReplicas"], 3);
    assert_eq!(autoscaler["spec"]["maxReplicas"], 9);
    let gateway = one(&objects, "Deployment", "renku-ssh-gateway");
    assert!(
        gateway["spec"].get("replicas").is_none(),
        "the autoscaler owns replicas"
    );

    let monitors = objects_of_kind(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for monitor in monitors.values() {
        assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
        assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    }

    let sidecar = one(&objects, "NetworkPolicy", "renku-ssh-sidecar");
    assert_eq!(sidecar["metadata"]["namespace"], NAMESPACE);
    let rule = &sidecar["spec"]["ingress"][0];
    assert_eq!(rule["ports"][0]["port"], 2222);
    assert_eq!(
        rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "renku-ssh-gateway"
    );

    let values = with(json!({
        "userPreferences": { "url": "https://renku.example.org/api/users/{user}/keys" },
        "identityProvider": {
            "issuer": "https://renku.example.org/auth/realms/Renku",
            "clientSecret": { "existingSecret": "operator-client" },
        },
        "operator": { "refreshToken": { "existingSecret": "refresh" } },
    }));
    let objects = render_chart(RELEASE, NAMESPACE, &values).await?;
    let deployment = one(&objects, "Deployment", "renku-ssh-operator");
    let operator = container(deployment, "operator");
    assert_eq!(
        env_value(operator, "RENKU_SSH_USER_PREFERENCES_CLIENT_SECRET_FILE").as_deref(),
        Some("/etc/renku-ssh/client-secret/client-secret")
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_USER_PREFERENCES_ISSUER").as_deref(),
        Some("https://renku.example.org/auth/realms/Renku")
    );
    assert_eq!(
        env_value(operator, "RENKU_SSH_REFRESH_TOKEN_FILE").as_deref(),
        Some("/etc/renku-ssh/refresh-token/token")
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let secrets: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|volume| volume["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, BTreeSet::from(["operator-client", "refresh"]));
    let policy = one(&objects, "NetworkPolicy", "renku-ssh-operator");
    let egress_ports: Vec<Value> = policy["spec"]["egress"]
        .as_array()
        .map(|rules| rules.iter().map(|rule| rule["ports"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        egress_ports.len(),
        3,
        "DNS, API server and identity provider: {egress_ports:?}"
    );
    Ok(())
}

#[tokio::test]
async fn schema_rejects_bad_values() {
    let base = "gateway.host=ssh.renku.example.org";
    let cases: [(&[&str], &[&str]); 11] = [
        (
            &[base, "sessions.sshPolicy=some"],
            &["/sessions/sshPolicy", "'all', 'annotated', 'explicit'"],
        ),
        (
            &[base, "gateway.limits.idleTimeout=1 hour"],
            &["/gateway/limits/idleTimeout", "does not match pattern"],
        ),
        (
            &[base, "gateway.service.type=External"],
            &["/gateway/service/type"],
        ),
        (
            &[base, "gateway.service.port=70000"],
            &["/gateway/service/port", "maximum"],
        ),
        (
            &[base, "gateway.containerPort=22"],
            &["/gateway/containerPort", "minimum"],
        ),
        (
            &[base, "gateway.replica=3"],
            &["additional properties 'replica' not allowed"],
        ),
        (
            &[base, "keyPolicy.allowedKeyTypes={ssh-dss}"],
            &["/keyPolicy/allowedKeyTypes/0"],
        ),
        (
            &[base, "keyPolicy.maxKeysPerUser=300"],
            &["/keyPolicy/maxKeysPerUser", "maximum"],
        ),
        (
            &[base, "userPreferences.url=http://renku.example.org/{user}"],
            &["/userPreferences/url"],
        ),
        (
            &[base, "userPreferences.url=https://renku.example.org/keys"],
            &["/userPreferences/url"],
        ),
        (
            &["gateway.host=https://ssh.example.org"],
            &["/gateway/host"],
        ),
    ];
    for (sets, fragments) in cases {
        let message = render_error(sets)
            .await
            .unwrap_or_else(|| panic!("{sets:?} must be rejected"));
        assert!(
            message.contains("values don't meet the specifications of the schema"),
            "{sets:?}: {message}"
        );
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "{sets:?}: expected {fragment:?} in {message}"
            );
        }
    }
}

#[tokio::test]
async fn templates_reject_inconsistent_values() {
    let base = "gateway.host=ssh.renku.example.org";
    let url = "userPreferences.url=https://renku.example.org/users/{user}/keys";
    let issuer = "identityProvider.issuer=https://renku.example.org/auth/realms/Renku";
    let cases: [(&[&str], &str); 6] = [
        (&[], "gateway.host is required"),
        (
            &[base, url],
            "needs identityProvider.issuer or identityProvider.tokenEndpoint",
        ),
        (
            &[base, url, issuer],
            "needs identityProvider.clientSecret.existingSecret",
        ),
        (
            &[base, "operator.replicas=1"],
            "operator.pdb.minAvailable (1) must be below operator.replicas (1)",
        ),
        (
            &[
                base,
                "gateway.autoscaling.enabled=true",
                "gateway.autoscaling.maxReplicas=1",
            ],
            "gateway.autoscaling.maxReplicas (1) is below minReplicas (2)",
        ),
        (
            &[base, "gateway.replicas=1"],
            "gateway.pdb.minAvailable (1) must be below the gateway's replicas (1)",
        ),
    ];
    for (sets, fragment) in cases {
        let message = render_error(sets)
            .await
            .unwrap_or_else(|| panic!("{sets:?} must be rejected"));
        assert!(
            message.contains(fragment),
            "{sets:?}: expected {fragment:?} in {message}"
        );
    }
    let disabled = [
        base,
        "operator.replicas=1",
        "operator.pdb.enabled=false",
        "gateway.replicas=1",
        "gateway.pdb.enabled=false",
    ];
    assert_eq!(
        render_error(&disabled).await,
        None,
        "single replicas without PDBs are valid"
    );
}

/// Writes `text` to `folder/name`, readable by the owner only.
fn private_file(folder: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let path = folder.join(name);
    std::fs::write(&path, text).expect("write file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn ssh_keygen(args: &[&str]) -> std::process::Output {
    Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen runs (install openssh-client with scripts/install-deps.sh)")
}

/// Decodes a Secret's data key with coreutils `base64`.
fn secret_text(secret: &Value, key: &str) -> String {
    use std::io::Write;

    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret has no {key}"));
    let mut child = Command::new("base64")
        .arg("--decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(encoded.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("base64 finishes");
    assert!(output.status.success(), "{key} is not base64");
    String::from_utf8(output.stdout).expect("UTF-8 key")
}

#[tokio::test]
async fn generated_host_key_is_openssh_ed25519() -> anyhow::Result<()> {
    let objects = render_chart(RELEASE, NAMESPACE, &minimal_values()).await?;
    let secret = one(&objects, "Secret", "renku-ssh-gateway-host-key");
    let private = secret_text(secret, "ssh_host_ed25519_key");
    let public = secret_text(secret, "ssh_host_ed25519_key.pub");
    assert!(
        private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        "{}",
        &private[..40]
    );
    assert!(
        public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
        "{public}"
    );

    let folder = std::env::temp_dir().join(format!("renku-ssh-hostkey-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let key_path = private_file(&folder, "key", &private);
    let key = key_path.to_string_lossy().into_owned();

    // ssh-keygen reads the key and reports the public half it stores.
    let derived = ssh_keygen(&["-y", "-f", &key]);
    assert!(
        derived.status.success(),
        "{}",
        String::from_utf8_lossy(&derived.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout).trim(),
        public.trim()
    );

    // A signature made with the private seed verifies against the public key, so the two
    // halves belong together.
    let message = private_file(&folder, "message", "renku-ssh host key check\n");
    let message = message.to_string_lossy().into_owned();
    let signed = ssh_keygen(&["-Y", "sign", "-f", &key, "-n", "file", &message]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let signers = private_file(&folder, "allowed_signers", &format!("gateway {public}"));
    let verify = Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-f",
            &signers.to_string_lossy(),
            "-I",
            "gateway",
            "-n",
            "file",
        ])
        .args(["-s", &format!("{message}.sig")])
        .stdin(std::fs::File::open(&message)?)
        .output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let second = render_chart(RELEASE, NAMESPACE, &minimal_values()).await?;
    let other = secret_text(
        one(&second, "Secret", "renku-ssh-gateway-host-key"),
        "ssh_host_ed25519_key.pub",
    );
    assert_ne!(
        other, public,
        "each render without a stored Secret makes a new key"
    );
    std::fs::remove_dir_all(&folder)?;
    Ok(())
}

/// Returns the paths of the leaves of `value`; an empty object or a list is a leaf.
fn leaf_paths(value: &Value, prefix: &str, paths: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, paths);
            }
        }
        _ => paths.push(prefix.to_owned()),
    }
}

#[tokio::test]
async fn readme_documents_every_value() -> anyhow::Result<()> {
    let values_text = std::fs::read_to_string(chart_dir().join("values.yaml"))?;
    let values = testkit::parse_documents(&values_text)?.remove(0);
    let readme = std::fs::read_to_string(chart_dir().join("README.md"))?;
    let mut paths = Vec::new();
    leaf_paths(&values, "", &mut paths);
    assert!(paths.len() > 100, "values.yaml has {} leaves", paths.len());

    let undocumented: Vec<&String> = paths
        .iter()
        .filter(|path| {
            // A row may document a whole object, such as `operator.resources`.
            let mut prefix = path.as_str();
            loop {
                if readme.contains(&format!("| `{prefix}` |")) {
                    return false;
                }
                match prefix.rsplit_once('.') {
                    Some((parent, _)) => prefix = parent,
                    None => return true,
                }
            }
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "values missing from the README table: {undocumented:?}"
    );
    Ok(())
}
