//! `cluster.caCertHashes` and `cluster.bootstrapTokenExpiration`: a worker
//! joining by a bootstrap token alone, and the token's lifetime. Every
//! error names the field and why, and none carries the token.
#![allow(clippy::unwrap_used)]

use kelson_config::parse;

const HASH: &str = "sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const TOKEN: &str = "abcdef.0123456789abcdef";

fn worker(cluster: &str) -> String {
    format!("apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ncluster:\n{cluster}")
}

fn errors(text: &str) -> Vec<String> {
    parse("join.yaml", text).unwrap_err().0.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect()
}

#[test]
fn a_token_join_needs_only_the_endpoint_the_token_and_the_hashes() {
    let text = worker(&format!(
        "  apiServerEndpoint: https://192.168.100.10:6443\n  bootstrapToken: {TOKEN}\n  caCertHashes: [{HASH}]\n"
    ));
    let config = parse("join.yaml", &text).unwrap();
    assert_eq!(config.cluster.ca_cert_hashes, [HASH]);
    assert!(config.node.hostname.is_none(), "the name comes from each node's meta-data");
}

#[test]
fn malformed_hashes_a_missing_token_or_endpoint_are_each_named() {
    let text = worker("  caCertHashes: [\"sha256:abc\", \"md5:0a1b\"]\n");
    assert_eq!(
        errors(&text),
        [
            "cluster.caCertHashes[0]: \"sha256:abc\" is not sha256:<64 hex digits> (kubeadm's --discovery-token-ca-cert-hash)",
            "cluster.caCertHashes[1]: \"md5:0a1b\" is not sha256:<64 hex digits> (kubeadm's --discovery-token-ca-cert-hash)",
            "cluster.caCertHashes: needs cluster.bootstrapToken: the token signs the cluster-info the hashes check",
            "cluster.caCertHashes: needs cluster.apiServerEndpoint to discover the cluster at",
        ]
    );
    let plain_http = worker(&format!(
        "  apiServerEndpoint: http://10.0.0.1:6443\n  bootstrapToken: {TOKEN}\n  caCertHashes: [{HASH}]\n"
    ));
    assert_eq!(
        errors(&plain_http),
        ["cluster.apiServerEndpoint: \"http://10.0.0.1:6443\" is not an https:// URL (discovery reads cluster-info over TLS)"]
    );
}

#[test]
fn a_control_plane_node_or_one_with_its_own_kubelet_certificate_does_not_join_by_token() {
    let cluster =
        format!("  apiServerEndpoint: https://10.0.0.1:6443\n  bootstrapToken: {TOKEN}\n  caCertHashes: [{HASH}]\n");
    let control_plane = format!("{}node:\n  role: control-plane\n", worker(&cluster));
    assert_eq!(
        errors(&control_plane),
        ["cluster.caCertHashes: only a worker joins by token (a control-plane node carries the cluster's certificates)"]
    );
    let with_cert =
        format!("{}pki:\n  certificates:\n    kubelet:\n      cert: CERT\n      key: KEY\n", worker(&cluster));
    assert_eq!(
        errors(&with_cert),
        ["cluster.caCertHashes: set beside pki.certificates.kubelet: a node joins with its own kubelet certificate or by the token, not both"]
    );
}

#[test]
fn the_expiration_is_an_rfc3339_utc_time_beside_a_token() {
    let good = worker(&format!("  bootstrapToken: {TOKEN}\n  bootstrapTokenExpiration: \"2026-12-09T10:00:00Z\"\n"));
    assert_eq!(
        parse("t.yaml", &good).unwrap().cluster.bootstrap_token_expiration.as_deref(),
        Some("2026-12-09T10:00:00Z")
    );
    for bad in ["2026-12-09 10:00:00", "2026-13-09T10:00:00Z", "2026-12-09T10:00:00+01:00", "tomorrow"] {
        let text = worker(&format!("  bootstrapToken: {TOKEN}\n  bootstrapTokenExpiration: \"{bad}\"\n"));
        assert_eq!(
            errors(&text),
            [format!(
                "cluster.bootstrapTokenExpiration: {bad:?} is not an RFC 3339 UTC time like \"2026-12-09T10:00:00Z\""
            )]
        );
    }
    let alone = worker("  bootstrapTokenExpiration: \"2026-12-09T10:00:00Z\"\n");
    assert_eq!(errors(&alone), ["cluster.bootstrapTokenExpiration: set without cluster.bootstrapToken"]);
}

#[test]
fn no_error_carries_the_token() {
    let text = worker("  bootstrapToken: zzzzzz.notavalidtokenvalue!\n  caCertHashes: [nope]\n");
    let all = errors(&text).join("\n");
    assert!(!all.contains("notavalidtokenvalue"), "{all}");
    assert!(all.contains("cluster.bootstrapToken: not a bootstrap token"), "{all}");
}
