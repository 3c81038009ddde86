use serde_json::{Value, json};

use super::*;

const SESSION: &str = "alice-session";

fn fixture() -> Value {
    let text = include_str!("../../tests/fixtures/session-pod.yaml");
    serde_yaml::from_str(text).expect("fixture is valid YAML")
}

fn config() -> InjectionConfig {
    InjectionConfig::new("registry.example/renku-sshd:1.0")
}

/// Applies the builder's patch to `pod` and returns the result.
fn injected(pod: &Value, config: &InjectionConfig) -> Value {
    let patch = build_patch(pod, SESSION, config).expect("the builder returns a patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    patched
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry named {name} in {pod:#}"))
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    container(pod, "volumes", name)
}

fn mount_paths(container: &Value) -> Vec<&str> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|mount| mount["mountPath"].as_str())
        .collect()
}

#[test]
fn sidecar_copies_session_container() {
    let pod = fixture();
    let patched = injected(&pod, &config());
    let main = container(&pod, "containers", SESSION_CONTAINER);
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);

    assert_eq!(sidecar["image"], "renku/python:3.12");
    assert_eq!(sidecar["imagePullPolicy"], "IfNotPresent");
    assert_eq!(sidecar["env"], main["env"]);
    assert_eq!(sidecar["envFrom"], main["envFrom"]);
    assert_eq!(sidecar["workingDir"], "/home/jovyan/work");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1000);
    assert_eq!(sidecar["securityContext"]["runAsGroup"], 100);
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    let expected_paths = [
        "/home/jovyan/work",
        "/dev/shm",
        "/var/run/secrets/kubernetes.io/serviceaccount",
        BIN_DIR,
        KEYS_DIR,
        HOST_KEY_DIR,
    ];
    assert_eq!(mount_paths(sidecar), expected_paths);
    assert!(sidecar.get("args").is_some());
    assert_ne!(
        sidecar["args"], main["args"],
        "the session's own args are not copied"
    );
}

#[test]
fn sidecar_runs_sshd_with_session_principal() {
    let patched = injected(&fixture(), &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    assert_eq!(sidecar["command"], json!(["/opt/renku-ssh/bin/renku-sshd"]));
    let expected_args = json!([
        "--listen",
        "0.0.0.0:2222",
        "--host-key",
        "/etc/renku-ssh/hostkey/ssh_host_ed25519_key",
        "--authorized-keys",
        "/etc/renku-ssh/keys/authorized_keys",
        "--trusted-user-ca-keys",
        "/etc/renku-ssh/keys/trusted_user_ca_keys",
        "--principal",
        "alice-session",
    ]);
    assert_eq!(sidecar["args"], expected_args);
    assert_eq!(
        sidecar["ports"],
        json!([{ "name": "ssh", "containerPort": 2222, "protocol": "TCP" }])
    );
}

#[test]
fn sidecar_is_locked_down_with_small_resources() {
    let patched = injected(&fixture(), &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    let context = &sidecar["securityContext"];
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["capabilities"], json!({ "drop": ["ALL"] }));
    assert!(context.get("privileged").is_none());
    assert_eq!(
        sidecar["resources"]["requests"],
        json!({ "cpu": "10m", "memory": "32Mi" })
    );
    assert_eq!(
        sidecar["resources"]["limits"],
        json!({ "cpu": "1", "memory": "512Mi" })
    );
}

#[test]
fn secret_volumes_are_optional_whole_directories() {
    let patched = injected(&fixture(), &config());
    let keys = volume(&patched, KEYS_VOLUME);
    assert_eq!(keys["secret"]["secretName"], "alice-session-ssh-keys");
    assert_eq!(keys["secret"]["optional"], true);
    let host_key = volume(&patched, HOST_KEY_VOLUME);
    assert_eq!(
        host_key["secret"]["secretName"],
        "alice-session-ssh-hostkey"
    );
    assert_eq!(host_key["secret"]["optional"], true);
    assert!(volume(&patched, BIN_VOLUME)["emptyDir"].is_object());

    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    for mount in sidecar["volumeMounts"].as_array().expect("mounts") {
        assert!(mount.get("subPath").is_none(), "subPath mount {mount}");
        assert!(
            mount.get("subPathExpr").is_none(),
            "subPathExpr mount {mount}"
        );
    }
    let own_mounts: Vec<_> = sidecar["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|mount| {
            mount["mountPath"]
                .as_str()
                .is_some_and(|path| path.contains("renku-ssh"))
        })
        .collect();
    assert_eq!(own_mounts.len(), 3);
    assert!(own_mounts.iter().all(|mount| mount["readOnly"] == true));
}

#[test]
fn secret_mode_follows_fs_group() {
    let with_group = injected(&fixture(), &config());
    assert_eq!(
        volume(&with_group, KEYS_VOLUME)["secret"]["defaultMode"],
        0o440
    );
    assert_eq!(
        volume(&with_group, HOST_KEY_VOLUME)["secret"]["defaultMode"],
        0o440
    );

    let mut pod = fixture();
    pod["spec"]["securityContext"] = json!({});
    let without_group = injected(&pod, &config());
    assert_eq!(
        volume(&without_group, KEYS_VOLUME)["secret"]["defaultMode"],
        0o444
    );
    assert_eq!(
        volume(&without_group, HOST_KEY_VOLUME)["secret"]["defaultMode"],
        0o444
    );
}

#[test]
fn install_container_copies_binary() {
    let patched = injected(&fixture(), &config());
    let install = container(&patched, "initContainers", INSTALL_CONTAINER);
    assert_eq!(install["image"], "registry.example/renku-sshd:1.0");
    assert_eq!(
        install["command"],
        json!(["/bin/cp", "/renku-sshd", "/opt/renku-ssh/bin/renku-sshd"])
    );
    assert_eq!(
        install["volumeMounts"],
        json!([{ "name": BIN_VOLUME, "mountPath": BIN_DIR }])
    );
    let context = &install["securityContext"];
    assert_eq!(context["runAsUser"], 1000);
    assert_eq!(context["runAsGroup"], 100);
    assert_eq!(context["runAsNonRoot"], true);
    assert_eq!(context["readOnlyRootFilesystem"], true);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    let names: Vec<_> = patched["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|container| container["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["git-clone", INSTALL_CONTAINER],
        "the pod's own init containers run first"
    );
}

#[test]
fn dedicated_image_replaces_only_image() {
    let mut config = config();
    config.sidecar_image = SidecarImage::Dedicated {
        image: "registry.example/ssh-tools:2".to_owned(),
        pull_policy: Some("Always".to_owned()),
    };
    let pod = fixture();
    let patched = injected(&pod, &config);
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    let main = container(&pod, "containers", SESSION_CONTAINER);
    assert_eq!(sidecar["image"], "registry.example/ssh-tools:2");
    assert_eq!(sidecar["imagePullPolicy"], "Always");
    assert_eq!(sidecar["env"], main["env"]);
    assert_eq!(sidecar["workingDir"], main["workingDir"]);
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1000);
}

#[test]
fn pod_security_context_supplies_identity() {
    let mut pod = fixture();
    pod["spec"]["securityContext"] =
        json!({ "runAsUser": 1500, "runAsGroup": 1600, "fsGroup": 1600 });
    let main = pod["spec"]["containers"][1]
        .as_object_mut()
        .expect("main container");
    main.remove("securityContext");
    let patched = injected(&pod, &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1500);
    assert_eq!(sidecar["securityContext"]["runAsGroup"], 1600);
    assert!(sidecar["securityContext"].get("runAsNonRoot").is_none());
    let install = container(&patched, "initContainers", INSTALL_CONTAINER);
    assert_eq!(install["securityContext"]["runAsUser"], 1500);
}

#[test]
fn container_security_context_wins_over_pod() {
    let mut pod = fixture();
    pod["spec"]["securityContext"] = json!({ "runAsUser": 1500, "runAsGroup": 1600 });
    pod["spec"]["containers"][1]["securityContext"] = json!({ "runAsUser": 2000 });
    let patched = injected(&pod, &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    assert_eq!(sidecar["securityContext"]["runAsUser"], 2000);
    assert_eq!(
        sidecar["securityContext"]["runAsGroup"], 1600,
        "group still from the pod"
    );
}

#[test]
fn unknown_identity_leaves_sidecar_user_unset() {
    let mut pod = fixture();
    pod["spec"]["securityContext"] = json!({});
    pod["spec"]["containers"][1]
        .as_object_mut()
        .expect("main")
        .remove("securityContext");
    let patched = injected(&pod, &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    assert!(sidecar["securityContext"].get("runAsUser").is_none());
    assert!(sidecar["securityContext"].get("runAsGroup").is_none());
    let install = container(&patched, "initContainers", INSTALL_CONTAINER);
    assert_eq!(install["securityContext"]["runAsUser"], 65534);
    assert_eq!(install["securityContext"]["runAsNonRoot"], true);
}

#[test]
fn seccomp_profile_of_session_container_is_kept() {
    let mut pod = fixture();
    pod["spec"]["containers"][1]["securityContext"]["seccompProfile"] =
        json!({ "type": "RuntimeDefault" });
    let patched = injected(&pod, &config());
    for (list, name) in [
        ("containers", SIDECAR_CONTAINER),
        ("initContainers", INSTALL_CONTAINER),
    ] {
        let context = &container(&patched, list, name)["securityContext"];
        assert_eq!(
            context["seccompProfile"],
            json!({ "type": "RuntimeDefault" }),
            "{name}"
        );
    }
}

#[test]
fn first_container_without_amalthea_session() {
    let pod = json!({
        "metadata": { "name": "plain" },
        "spec": { "containers": [
            { "name": "work", "image": "busybox:1", "env": [{ "name": "A", "value": "1" }] },
            { "name": "other", "image": "nginx:1" },
        ]},
    });
    let patched = injected(&pod, &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    assert_eq!(sidecar["image"], "busybox:1");
    assert_eq!(sidecar["env"], json!([{ "name": "A", "value": "1" }]));
    assert_eq!(mount_paths(sidecar), [BIN_DIR, KEYS_DIR, HOST_KEY_DIR]);
}

#[test]
fn patch_creates_missing_lists() {
    let pod = json!({ "spec": { "containers": [{ "name": "work", "image": "busybox:1" }] } });
    let patch = build_patch(&pod, SESSION, &config()).expect("patch");
    let paths: Vec<String> = patch
        .0
        .iter()
        .map(|operation| operation.path().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/volumes",
            "/spec/initContainers",
            "/spec/containers/-"
        ]
    );
    let patched = injected(&pod, &config());
    assert_eq!(patched["spec"]["volumes"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        patched["spec"]["initContainers"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn patch_only_appends() {
    let pod = fixture();
    let patch = build_patch(&pod, SESSION, &config()).expect("patch");
    for operation in &patch.0 {
        assert!(matches!(operation, PatchOperation::Add(_)), "{operation:?}");
        assert!(
            operation.path().to_string().ends_with("/-"),
            "{}",
            operation.path()
        );
    }
    let patched = injected(&pod, &config());
    let original = pod["spec"]["containers"].as_array().expect("containers");
    let after = patched["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(after.len(), original.len() + 1);
    assert_eq!(
        &after[..original.len()],
        original.as_slice(),
        "existing containers unchanged"
    );
    assert_eq!(patched["metadata"], pod["metadata"]);
}

#[test]
fn injected_pod_is_not_injected_again() {
    let patched = injected(&fixture(), &config());
    assert_eq!(
        build_patch(&patched, SESSION, &config()),
        Err(NotInjected::AlreadyInjected)
    );
}

#[test]
fn conflicts_skip_injection() {
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "port 2222",
            Box::new(|pod| {
                pod["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 2222 }]);
            }),
        ),
        (
            "volume name",
            Box::new(|pod| {
                let volumes = pod["spec"]["volumes"].as_array_mut().expect("volumes");
                volumes.push(json!({ "name": KEYS_VOLUME, "emptyDir": {} }));
            }),
        ),
        (
            "mount path",
            Box::new(|pod| {
                let mounts = pod["spec"]["containers"][1]["volumeMounts"]
                    .as_array_mut()
                    .expect("mounts");
                mounts.push(json!({ "name": "shm", "mountPath": "/etc/renku-ssh/keys/" }));
            }),
        ),
        (
            "install container name",
            Box::new(|pod| {
                let init = pod["spec"]["initContainers"]
                    .as_array_mut()
                    .expect("init containers");
                init.push(json!({ "name": INSTALL_CONTAINER, "image": "x" }));
            }),
        ),
    ];
    for (case, change) in cases {
        let mut pod = fixture();
        change(&mut pod);
        let result = build_patch(&pod, SESSION, &config());
        assert!(
            matches!(result, Err(NotInjected::Conflict(_))),
            "{case}: {result:?}"
        );
    }
}

#[test]
fn invalid_pods_are_reported() {
    let no_spec = json!({ "metadata": {} });
    let no_containers = json!({ "spec": { "containers": [] } });
    let no_image = json!({ "spec": { "containers": [{ "name": "amalthea-session" }] } });
    for pod in [no_spec, no_containers, no_image] {
        let result = build_patch(&pod, SESSION, &config());
        assert!(
            matches!(result, Err(NotInjected::InvalidPod(_))),
            "{pod}: {result:?}"
        );
    }
}

#[test]
fn bidirectional_propagation_is_not_copied() {
    let mut pod = fixture();
    pod["spec"]["containers"][1]["volumeMounts"][0]["mountPropagation"] = json!("Bidirectional");
    pod["spec"]["containers"][1]["volumeMounts"][1]["mountPropagation"] = json!("HostToContainer");
    let patched = injected(&pod, &config());
    let sidecar = container(&patched, "containers", SIDECAR_CONTAINER);
    assert!(sidecar["volumeMounts"][0].get("mountPropagation").is_none());
    assert_eq!(
        sidecar["volumeMounts"][1]["mountPropagation"],
        "HostToContainer"
    );
    let main = container(&patched, "containers", SESSION_CONTAINER);
    assert_eq!(main["volumeMounts"][0]["mountPropagation"], "Bidirectional");
}
