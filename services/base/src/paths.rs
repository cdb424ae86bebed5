//! The node's well-known paths that more than one component reads or
//! writes. A path only one crate uses stays with that crate.

/// Static pod manifests: written by the config stage, watched by the pod
/// manager.
pub const MANIFEST_DIR: &str = "/etc/kubernetes/manifests";
/// The node's certificates and keys from the machine config; the kubelet's
/// and kube-proxy's rendered configs point into it.
pub const PKI_DIR: &str = "/etc/kelson/pki";
/// The cluster CA's certificate inside [`PKI_DIR`].
pub const CA_FILE: &str = "/etc/kelson/pki/ca.crt";
/// The CNI network config kelson-net writes and containerd reads.
pub const CNI_CONFLIST: &str = "/etc/cni/net.d/10-kelson.conflist";
/// OCI image layouts shipped in the image (read-only /usr): the static
/// pods' images and the pod sandbox image.
pub const IMAGE_LAYOUTS: &str = "/usr/lib/kelson/images";
