//! The built `kelsonctl` binary: exit codes and the messages an operator sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn kelsonctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kelsonctl")).args(args).output().unwrap()
}

/// `gen cluster` for cluster `demo` with `workers` workers.
fn gen_cluster(output: &Path, workers: &str, extra: &[&str]) -> Output {
    let mut args = vec!["gen", "cluster", "--name", "demo", "--workers", workers, "--output", output.to_str().unwrap()];
    args.extend_from_slice(extra);
    kelsonctl(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cluster_is_generated_and_summarised_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gen_cluster(&tmp.path().join("c"), "1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo-cp-1") && stdout.contains("demo-worker-1"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY") && !stderr(&out).contains("PRIVATE KEY"));
    assert!(tmp.path().join("c/nodes/demo-worker-1/seed.img").is_file());
}

#[test]
fn gen_node_adds_a_worker_and_a_control_plane_node_and_refuses_a_name_twice_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    assert!(gen_cluster(&dir, "1", &[]).status.success());
    let dir_arg = dir.to_str().unwrap();
    let out = kelsonctl(&["gen", "node", "--cluster", dir_arg, "--name", "demo-worker-2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo-worker-2            worker         192.168.100.12   10.244.2.0/24"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"));
    assert!(dir.join("nodes/demo-worker-2/seed.img").is_file());

    let out = kelsonctl(&["gen", "node", "--cluster", dir_arg, "--name", "demo-cp-2", "--role", "control-plane"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo-cp-2                control-plane  192.168.100.13   10.244.3.0/24"), "{stdout}");
    assert!(stdout.contains("adds itself as a learner through https://192.168.100.10:2379"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"));

    let out = kelsonctl(&["gen", "node", "--cluster", dir_arg, "--name", "demo-cp-2", "--role", "control-plane"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "kelsonctl: error: adding node demo-cp-2 to the cluster in {dir_arg}: node demo-cp-2 is already in the cluster"
        )),
        "{err}"
    );
}

#[test]
fn a_malformed_cidr_is_a_usage_error_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gen_cluster(&tmp.path().join("c"), "1", &["--cluster-cidr", "10.244.0.0/33"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--cluster-cidr") && err.contains("\"10.244.0.0/33\" is not an IPv4 CIDR like 10.244.0.0/16"),
        "{err}"
    );
    assert!(!tmp.path().join("c").exists(), "nothing is written on a usage error");
}

#[test]
fn a_missing_required_flag_is_a_usage_error() {
    let out = kelsonctl(&["gen", "cluster", "--name", "demo", "--output", "/nonexistent/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--workers"), "{}", stderr(&out));
}

#[test]
fn a_cluster_cidr_too_small_for_the_nodes_fails_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gen_cluster(&tmp.path().join("c"), "2", &["--cluster-cidr", "10.244.0.0/24", "--pod-prefix", "25"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("kelsonctl: error: generating cluster demo into "), "{err}");
    assert!(
        err.contains("planning the cluster's addresses: cluster CIDR 10.244.0.0/24 holds 2 /25 pod subnets, fewer than the 3 nodes"),
        "{err}"
    );
    assert!(!tmp.path().join("c").exists(), "nothing is written when the plan fails");
}

#[test]
fn a_non_empty_output_directory_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    assert!(gen_cluster(&dir, "1", &[]).status.success());
    let first_ca = std::fs::read(dir.join("pki/ca.crt")).unwrap();

    let out = gen_cluster(&dir, "1", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("output directory {} is not empty (pass --force", dir.display())), "{err}");
    assert_eq!(std::fs::read(dir.join("pki/ca.crt")).unwrap(), first_ca, "a refused run changes nothing");

    let out = gen_cluster(&dir, "0", &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(dir.join("pki/ca.crt")).unwrap(), first_ca);
    assert!(!dir.join("nodes/demo-worker-1").exists(), "--force leaves no stale nodes behind");
}
