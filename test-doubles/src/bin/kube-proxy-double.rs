//! TEST DOUBLE for kube-proxy (see the crate docs): records its argv and
//! config, serves /healthz, crashes or hangs on demand.

fn main() -> std::process::ExitCode {
    kelson_test_doubles::run(kelson_test_doubles::KUBE_PROXY)
}
