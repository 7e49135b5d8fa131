//! Service backends as kube-proxy sees them: the pods a Service's selector matches in its
//! namespace, each with the port its `targetPort` resolves to. The lab's DNAT rules and
//! `netward explain --to <Service>` both read them from here, so that what `explain`
//! decides per backend is what the lab's datapath sees after DNAT.

use crate::model::{Pod, PortRef, Service, ServicePort};
use crate::snapshot::{PodId, Snapshot};

/// One backend of a Service port: kube-proxy may DNAT a connection to `pod:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The pod.
    pub pod: PodId,
    /// The pod's port: the `targetPort` number, or the named container port it resolves to.
    pub port: u16,
}

/// Whether a Service's selector picks this pod: same namespace, not terminated, every
/// selector label equal. A Service without selector picks none (its EndpointSlices are
/// written by hand).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(selector) = &svc.selector else {
        return false;
    };
    pod.namespace == svc.namespace
        && !pod.terminated
        && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// The port a Service port sends to on this pod: the `targetPort` number, or the pod's
/// container port of that name for the Service port's protocol. `None` when the pod has
/// no such named port: it is then no backend of this Service port, as with EndpointSlices.
pub fn target_port(port: &ServicePort, pod: &Pod) -> Option<u16> {
    match &port.target {
        PortRef::Number(n) => Some(*n),
        PortRef::Name(name) => pod.named_port(name, port.protocol),
    }
}

impl Snapshot {
    /// The Service with this namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
            .map(|s| s.as_ref())
    }

    /// The pods a Service's selector picks ([`selects`]), sorted by `namespace/name`,
    /// whether or not they have the port a Service port targets.
    pub fn service_pods(&self, svc: &Service) -> Vec<PodId> {
        let mut ids: Vec<PodId> = self
            .pods
            .iter()
            .enumerate()
            .filter(|(_, e)| e.present && selects(svc, &e.pod))
            .map(|(i, _)| PodId(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        ids.sort_by(|a, b| {
            let (pa, pb) = (self.pod(*a), self.pod(*b));
            (&pa.namespace, &pa.name).cmp(&(&pb.namespace, &pb.name))
        });
        ids
    }

    /// The backends of one Service port, sorted by pod `namespace/name`: the pods its
    /// selector picks that have the port its `targetPort` names ([`target_port`]).
    pub fn service_backends(&self, svc: &Service, port: &ServicePort) -> Vec<Backend> {
        self.service_pods(svc)
            .into_iter()
            .filter_map(|pod| target_port(port, self.pod(pod)).map(|port| Backend { pod, port }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::Cluster;
    use crate::model::{ContainerPort, Labels, Protocol};

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    }

    fn pod(ns: &str, name: &str, app: &str, http: Option<u16>) -> Pod {
        let mut p = Pod::new(ns, name, labels(&[("app", app)]));
        if let Some(port) = http {
            p.ports.push(ContainerPort {
                name: Some("http".to_owned()),
                port,
                protocol: Protocol::Tcp,
            });
        }
        p
    }

    fn service(selector: Option<Labels>, target: PortRef) -> Service {
        Service {
            namespace: "shop".to_owned(),
            name: "web".to_owned(),
            cluster_ips: vec![],
            selector,
            ports: vec![ServicePort {
                name: Some("http".to_owned()),
                protocol: Protocol::Tcp,
                port: 80,
                target,
            }],
        }
    }

    fn snapshot() -> Snapshot {
        let mut c = Cluster::default();
        c.upsert_pod(pod("shop", "web-2", "web", Some(9090)));
        c.upsert_pod(pod("shop", "web-1", "web", Some(8080)));
        c.upsert_pod(pod("shop", "web-3", "web", None));
        c.upsert_pod(pod("shop", "db", "db", Some(8080)));
        c.upsert_pod(pod("other", "web-1", "web", Some(8080)));
        let mut gone = pod("shop", "web-0", "web", Some(8080));
        gone.terminated = true;
        c.upsert_pod(gone);
        let mut host = pod("shop", "web-h", "web", Some(8080));
        host.host_network = true;
        c.upsert_pod(host);
        Snapshot::compile(&c)
    }

    fn names(snap: &Snapshot, b: &[Backend]) -> Vec<(String, u16)> {
        b.iter().map(|b| (snap.pod(b.pod).key(), b.port)).collect()
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_pods_without_them_are_no_backends() {
        let snap = snapshot();
        let svc = service(
            Some(labels(&[("app", "web")])),
            PortRef::Name("http".into()),
        );
        let b = snap.service_backends(&svc, &svc.ports[0]);
        assert_eq!(
            names(&snap, &b),
            vec![
                ("shop/web-1".to_owned(), 8080),
                ("shop/web-2".to_owned(), 9090),
                ("shop/web-h".to_owned(), 8080),
            ]
        );
        // web-3 is selected but lacks the port; web-0 has terminated; other/web-1 is
        // in another namespace.
        let selected: Vec<String> = snap
            .service_pods(&svc)
            .into_iter()
            .map(|p| snap.pod(p).key())
            .collect();
        assert_eq!(
            selected,
            vec!["shop/web-1", "shop/web-2", "shop/web-3", "shop/web-h"]
        );
    }

    #[test]
    fn numeric_target_ports_apply_to_every_selected_pod() {
        let snap = snapshot();
        let svc = service(Some(labels(&[("app", "web")])), PortRef::Number(7000));
        let b = snap.service_backends(&svc, &svc.ports[0]);
        assert_eq!(b.len(), 4);
        assert!(b.iter().all(|b| b.port == 7000));
    }

    #[test]
    fn a_named_port_of_another_protocol_does_not_count() {
        let snap = snapshot();
        let mut svc = service(
            Some(labels(&[("app", "web")])),
            PortRef::Name("http".into()),
        );
        svc.ports[0].protocol = Protocol::Udp;
        assert!(snap.service_backends(&svc, &svc.ports[0]).is_empty());
    }

    #[test]
    fn a_service_without_selector_has_no_backends() {
        let snap = snapshot();
        let svc = service(None, PortRef::Number(80));
        assert!(snap.service_pods(&svc).is_empty());
        assert!(snap.service_backends(&svc, &svc.ports[0]).is_empty());
    }

    #[test]
    fn deleted_pods_are_no_backends() {
        let snap = snapshot().without_pod("shop", "web-1");
        let svc = service(
            Some(labels(&[("app", "web")])),
            PortRef::Name("http".into()),
        );
        let b = snap.service_backends(&svc, &svc.ports[0]);
        assert_eq!(
            names(&snap, &b),
            vec![
                ("shop/web-2".to_owned(), 9090),
                ("shop/web-h".to_owned(), 8080)
            ]
        );
    }
}
