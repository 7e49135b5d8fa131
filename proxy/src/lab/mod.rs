//! `netward lab`: Kubernetes scenarios built from network namespaces, enforced by
//! netward on each node, and probed with real clients. The e2e tests use the same parts.

pub mod bundled;
pub mod expect;
pub mod netns;
pub mod probe;
pub mod run;
pub mod servers;
pub mod services;
pub mod topology;
