//! The shim on its own, for tests and for running by hand: what PID 1 runs
//! as `/sbin/init shim ARGS…`, here as `kelson-shim ARGS…`.

fn main() -> std::process::ExitCode {
    kelson_containers::shim::main(std::env::args_os().skip(1))
}
