//! Test kit for tests that run against the local control plane started by `make cluster-up`.
//!
//! It connects to that cluster, gives each test its own namespace, installs the project's CRDs,
//! writes a Pod's `status` the way a kubelet would, and removes what a test created. Without a
//! running control plane every entry point fails with a message that says how to start one.

mod chart;
mod cluster;
mod crds;
mod namespace;
mod pods;
mod sandbox;
mod wait;

pub use chart::{
    CHART_DIR, ChartInstall, ClusterScopedCleanup, apply_objects, chart_dir,
    client_from_kubeconfig, helm, merge_values, objects_of_kind, parse_documents, render_chart,
    test_values,
};
pub use cluster::{cargo_command, connect, kubeconfig_path, workspace_root};
pub use crds::{apply_crd, install_project_crds};
pub use namespace::TestNamespace;
pub use pods::{mark_pod_running, set_pod_status};
pub use sandbox::{PodSandbox, sshd_binary, write_secret_volume};
pub use wait::{wait_for, wait_until_deleted};

/// Field manager used by tests for the objects they write themselves.
pub const TEST_FIELD_MANAGER: &str = "renku-ssh-tests";
