//! Mutual TLS between node proxies: node identities and certificates, the HTTP/2
//! `CONNECT` tunnel that carries cross-node connections, and the certificate signer.
//! The protocol is documented in `docs/mtls.md`.

pub mod identity;
pub mod ktls;
pub mod kube_peers;
pub mod node_cert;
pub mod peers;
pub mod signer;
pub mod tunnel;
