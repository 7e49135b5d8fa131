//! netward's controller: the Kubernetes model, label selectors, the compiled
//! policy snapshot and the one authorization engine, plus the sources that feed it.
//!
//! The engine is pure: plain data in, a [`Decision`] out, with its reason. No tokio,
//! no kube client.
#![forbid(unsafe_code)]

pub mod addresses;
pub mod backends;
pub mod cluster;
pub mod cluster_policy;
pub mod engine;
#[cfg(feature = "kube")]
pub mod kube;
pub mod load;
pub mod model;
pub mod names;
pub mod render;
pub mod snapshot;
pub mod strict;
pub mod workloads;

pub use backends::Backend;
pub use cluster::Cluster;
pub use cluster_policy::{Action, ClusterNetworkPolicy, Tier};
pub use engine::{
    Decision, Endpoint, Exemption, Explanation, Flow, Matrix, Side, Transport, Verdict,
};
pub use load::Manifests;
pub use model::{Direction, Mode, MtlsMode, Protocol};
pub use snapshot::{ClusterPolicyId, PodId, PolicyId, Snapshot};
