//! Custom resource types of renku-ssh.
//!
//! - [`SshAccess`] (kind `SSHAccess`, `ssh.renku.io/v1alpha1`): SSH access to one running
//!   session, owned by this project.
//! - [`AmaltheaSession`] (`amalthea.dev/v1alpha1`): a lossless read and patch model of the
//!   session resource that amalthea owns.
//!
//! The `crdgen` binary writes both CRDs to `crds/` (see [`crd_files`]).
//!
//! This library enables no Kubernetes version feature of k8s-openapi; the binary that links it
//! chooses one.

mod schema;
mod string_enum;

pub mod amalthea;
pub mod condition;
pub mod crd_files;
pub mod ssh_access;

pub use amalthea::{AmaltheaSession, AmaltheaSessionSpec, AmaltheaSessionStatus};
pub use ssh_access::{SshAccess, SshAccessSpec, SshAccessStatus};
