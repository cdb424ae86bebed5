//! `kernel-config PATH`: checks a kernel `.config` against what a Kelson
//! node needs; exits 1 listing every unmet option.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: kernel-config PATH-TO-KERNEL-CONFIG");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kernel-config: reading {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let config = kernel_config::KernelConfig::parse(&text);
    let unmet = kernel_config::check(&config, kernel_config::REQUIRED);
    if unmet.is_empty() {
        println!("kernel-config: {path} meets all {} requirements", kernel_config::REQUIRED.len());
        return ExitCode::SUCCESS;
    }
    for u in &unmet {
        eprintln!("kernel-config: {path}: {u}");
    }
    eprintln!("kernel-config: {} of {} requirements unmet", unmet.len(), kernel_config::REQUIRED.len());
    ExitCode::FAILURE
}
