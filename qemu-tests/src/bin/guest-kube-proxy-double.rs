//! TEST DOUBLE for the kube-proxy, copied into QEMU guests by the services tests;
//! the double itself lives in test-doubles/ (this only names a binary the
//! tests of this package can find).

fn main() -> std::process::ExitCode {
    kelson_test_doubles::run(kelson_test_doubles::KUBE_PROXY)
}
