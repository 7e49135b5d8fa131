//! Tunnel advertisements on Kubernetes (issue #9): one Lease per node in netward's
//! namespace, `netward-tunnel-<node>`, holding the listener in the annotation
//! [`ADDR_ANNOTATION`] and renewed while the node serves. A Lease whose
//! `renewTime + leaseDurationSeconds` has passed (a node that died without withdrawing)
//! no longer counts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::peers::Peers;
use crate::mesh::Advertiser;

/// The Lease name prefix; the node name follows.
pub const LEASE_PREFIX: &str = "netward-tunnel-";
/// The annotation holding the tunnel listener, `ip:port`.
pub const ADDR_ANNOTATION: &str = "netward.io/tunnel-addr";

/// The Lease that advertises `node`'s tunnel.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// Timing of the advertisements.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// netward's namespace.
    pub namespace: String,
    /// `leaseDurationSeconds`: how long an advertisement lasts without renewal.
    pub lease_duration: Duration,
    /// How often this node renews its Lease.
    pub renew_every: Duration,
    /// How often expiry is re-evaluated without API events.
    pub expiry_check: Duration,
}

impl LeaseConfig {
    /// 30 s Leases renewed every 10 s in `namespace`.
    pub fn new(namespace: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_owned(),
            lease_duration: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            expiry_check: Duration::from_secs(1),
        }
    }
}

/// Advertises this node's tunnel with a Lease, and follows every node's.
pub struct LeasePeers {
    api: Api<Lease>,
    cfg: LeaseConfig,
    renewer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for LeasePeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasePeers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl LeasePeers {
    /// An advertiser in `cfg.namespace`.
    pub fn new(client: Client, cfg: LeaseConfig) -> LeasePeers {
        LeasePeers {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            renewer: Arc::new(Mutex::new(None)),
        }
    }

    /// Follows the Leases: the feed holds the non-expired advertisements. The task ends
    /// when every receiver is gone.
    pub fn watch(&self) -> watch::Receiver<Arc<Peers>> {
        let (tx, rx) = watch::channel(Arc::new(Peers::default()));
        tokio::spawn(follow(self.api.clone(), self.cfg.expiry_check, tx));
        rx
    }

    /// Stops the renewals; the handle completes once the task is gone.
    fn stop_renewing(&self) -> Option<JoinHandle<()>> {
        let h = self.renewer.lock().ok()?.take()?;
        h.abort();
        Some(h)
    }
}

impl Drop for LeasePeers {
    fn drop(&mut self) {
        let _ = self.stop_renewing();
    }
}

impl Advertiser for LeasePeers {
    fn advertise(&self, node: &str, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<()>> {
        let _ = self.stop_renewing();
        let (api, cfg, node) = (self.api.clone(), self.cfg.clone(), node.to_owned());
        let renewer = self.renewer.clone();
        Box::pin(async move {
            put(&api, &cfg, &node, addr)
                .await
                .map_err(std::io::Error::other)?;
            info!(node, tunnel.addr = %addr, lease = %lease_name(&node), "tunnel advertised");
            let task = tokio::spawn({
                let node = node.clone();
                async move {
                    let mut tick = tokio::time::interval(cfg.renew_every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        match put(&api, &cfg, &node, addr).await {
                            Ok(()) => debug!(node, "tunnel lease renewed"),
                            Err(e) => warn!(node, error = %e, "cannot renew the tunnel lease"),
                        }
                    }
                }
            });
            if let Ok(mut r) = renewer.lock()
                && let Some(old) = r.replace(task)
            {
                old.abort();
            }
            Ok(())
        })
    }

    fn withdraw(&self, node: &str) -> BoxFuture<'static, std::io::Result<()>> {
        let renewer = self.stop_renewing();
        let (api, node) = (self.api.clone(), node.to_owned());
        Box::pin(async move {
            // No renewal may recreate the Lease after the delete.
            if let Some(h) = renewer {
                let _ = h.await;
            }
            let name = lease_name(&node);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
            info!(node, lease = %name, "tunnel withdrawn");
            Ok(())
        })
    }
}

fn lease(cfg: &LeaseConfig, node: &str, addr: SocketAddr, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(node)),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "netward".to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                ADDR_ANNOTATION.to_owned(),
                addr.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(
                i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// Creates or replaces this node's Lease with a fresh renewTime.
async fn put(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    node: &str,
    addr: SocketAddr,
) -> Result<(), kube::Error> {
    let name = lease_name(node);
    let mut want = lease(cfg, node, addr, Timestamp::now());
    match api.get_opt(&name).await? {
        None => api.create(&PostParams::default(), &want).await.map(|_| ()),
        Some(current) => {
            want.metadata.resource_version = current.metadata.resource_version;
            if let (Some(spec), Some(old)) = (want.spec.as_mut(), current.spec) {
                spec.acquire_time = old.acquire_time.or(spec.acquire_time.take());
            }
            api.replace(&name, &PostParams::default(), &want)
                .await
                .map(|_| ())
        }
    }
}

/// The advertised listener of a Lease that has not expired at `now`.
pub fn advertised(lease: &Lease, now: Timestamp) -> Option<(String, SocketAddr)> {
    let name = lease.metadata.name.as_deref()?;
    let node = name.strip_prefix(LEASE_PREFIX)?;
    let addr: SocketAddr = lease
        .metadata
        .annotations
        .as_ref()?
        .get(ADDR_ANNOTATION)?
        .parse()
        .ok()?;
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(node) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = i64::from(spec.lease_duration_seconds?);
    let expires = renewed.as_second().saturating_add(secs);
    (expires > now.as_second()).then(|| (node.to_owned(), addr))
}

fn peers_of(leases: &HashMap<String, Lease>, now: Timestamp) -> Peers {
    Peers::from_entries(leases.values().filter_map(|l| advertised(l, now)))
}

async fn follow(api: Api<Lease>, every: Duration, tx: watch::Sender<Arc<Peers>>) {
    let stream = watch_stream(api, watcher::Config::default()).default_backoff();
    let mut stream = pin!(stream);
    let mut leases: HashMap<String, Lease> = HashMap::new();
    let mut init: HashMap<String, Lease> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = |leases: &HashMap<String, Lease>| {
        let peers = peers_of(leases, Timestamp::now());
        tx.send_if_modified(|cur| {
            if **cur == peers {
                false
            } else {
                info!(peers = peers.len(), "tunnel peers changed");
                *cur = Arc::new(peers);
                true
            }
        });
    };
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                match ev {
                    Ok(Event::Init) => init.clear(),
                    Ok(Event::InitApply(l)) => {
                        if let Some(n) = l.metadata.name.clone() {
                            init.insert(n, l);
                        }
                    }
                    Ok(Event::InitDone) => leases = std::mem::take(&mut init),
                    Ok(Event::Apply(l)) => {
                        if let Some(n) = l.metadata.name.clone() {
                            leases.insert(n, l);
                        }
                    }
                    Ok(Event::Delete(l)) => {
                        if let Some(n) = &l.metadata.name {
                            leases.remove(n);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "watching the tunnel leases");
                        continue;
                    }
                }
                publish(&leases);
            }
            _ = tick.tick() => publish(&leases),
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_well_formed_leases_count() {
        let cfg = LeaseConfig::new("ns");
        let addr: SocketAddr = "10.0.0.1:15008".parse().unwrap_or_else(|e| panic!("{e}"));
        let t0 = Timestamp::from_second(1_000_000).unwrap_or_else(|e| panic!("{e}"));
        let l = lease(&cfg, "node-a", addr, t0);
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(advertised(&l, at(29)), Some(("node-a".to_owned(), addr)));
        assert_eq!(advertised(&l, at(30)), None, "expired");
        let mut other = l.clone();
        other.metadata.name = Some("netward-signer".to_owned());
        assert_eq!(advertised(&other, at(1)), None, "not a tunnel lease");
        let mut wrong = l.clone();
        if let Some(s) = wrong.spec.as_mut() {
            s.holder_identity = Some("node-b".to_owned());
        }
        assert_eq!(advertised(&wrong, at(1)), None, "held by another node");
        let mut bad = l;
        bad.metadata.annotations = Some(BTreeMap::from([(
            ADDR_ANNOTATION.to_owned(),
            "nope".to_owned(),
        )]));
        assert_eq!(advertised(&bad, at(1)), None, "bad address");
    }
}
