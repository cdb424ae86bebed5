//! PID 1's static pods as the cluster sees them. The kubelet does not know
//! the control plane Kelson runs itself (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler), and mirror pods are not an
//! option (the kubelet deletes those it does not own). So, as
//! node-problem-detector does, PID 1 uses the node's own credentials to
//! keep Node conditions about its static pods and to post Events when they
//! start, restart or fail their readiness probe.
//!
//! - [`conditions()`]: `KelsonStaticPodsHealthy` and `KelsonEtcdHealthy`
//!   from the pod manager's status (pure).
//! - [`events()`]: what changed between two statuses, as events (pure).
//! - [`Reporter`]: the task that patches `nodes/<node>/status` and posts
//!   the events, retrying quietly while the API server is down.
//!
//! And the node network following the cluster:
//! - [`cluster_view()`]: every other Node's pod CIDR via its InternalIP,
//!   from the Node objects (pure).
//! - [`NodeWatcher`]: the task that watches the Nodes and publishes that
//!   view, writing a pinned pod CIDR into the node's own Node.
//! - [`AddonApplier`]: on control-plane nodes, the cluster objects those
//!   need (the grant that lets nodes read every Node, and what a worker
//!   joining by bootstrap token needs), server-side applied.
//!
//! And joining by token: [`discovery`], kubeadm's token discovery of the
//! cluster CA.

mod addons;
mod conditions;
pub mod discovery;
mod events;
mod node_watcher;
mod problems;
mod reporter;
mod routes;

pub use addons::{addons, AddonApplier, TokenJoin, ADDONS_CERTIFICATE, BOOTSTRAPPERS, FIELD_MANAGER, NODE_READER};
pub use conditions::{conditions, ETCD_HEALTHY, STATIC_PODS_HEALTHY};
pub use events::{events, EventSpec, EventType};
pub use node_watcher::NodeWatcher;
pub use reporter::{Reporter, ReporterConfig, ReporterError, Timing, COMPONENT};
pub use routes::{cluster_view, ClusterView, NodeAddressing, PeerNode};
#[cfg(test)]
mod fixture;
