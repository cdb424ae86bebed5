//! The Kubernetes version the generated control plane runs comes from one
//! place: the `k8s.io/kubernetes vX.Y.Z` require line of
//! image/kubernetes/go.mod, which pins the programs the node image builds.
//! It reaches the code as `KELSON_KUBERNETES_VERSION`.

use std::path::Path;

const GO_MOD: &str = "../image/kubernetes/go.mod";

/// The version on go.mod's `k8s.io/kubernetes vX.Y.Z` require line, in a
/// `require ( … )` block or a single-line `require`.
fn kubernetes_version(go_mod: &str) -> Option<&str> {
    go_mod.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("require ").unwrap_or(line).trim_start();
        let version = line.strip_prefix("k8s.io/kubernetes ")?.split_whitespace().next()?;
        let numbers: Vec<&str> = version.strip_prefix('v')?.split('.').collect();
        let is_semver =
            numbers.len() == 3 && numbers.iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        is_semver.then_some(version)
    })
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GO_MOD);
    println!("cargo:rerun-if-changed={}", path.display());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!("reading {} for the Kubernetes version: {e}", path.display()),
    };
    match kubernetes_version(&text) {
        Some(version) => println!("cargo:rustc-env=KELSON_KUBERNETES_VERSION={version}"),
        None => panic!("{}: no `k8s.io/kubernetes vX.Y.Z` require line", path.display()),
    }
}
