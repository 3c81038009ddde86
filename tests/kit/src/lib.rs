//! Test kit for tests that run against the local control plane started by `make cluster-up`.
//!
//! It connects to that cluster, gives each test its own namespace, installs the project's CRDs,
//! writes a Pod's `status` the way a kubelet would, and removes what a test created. Without a
//! running control plane every entry point fails with a message that says how to start one.

mod cluster;
mod crds;
mod namespace;
mod pods;
mod wait;

pub use cluster::{connect, kubeconfig_path, workspace_root};
pub use crds::{apply_crd, install_project_crds};
pub use namespace::TestNamespace;
pub use pods::{mark_pod_running, set_pod_status};
pub use wait::{wait_for, wait_until_deleted};

/// Field manager used by tests for the objects they write themselves.
pub const TEST_FIELD_MANAGER: &str = "renku-ssh-tests";
