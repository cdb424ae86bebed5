//! Test doubles for the kubelet and kube-proxy. **They are not the real
//! programs**: no registry reachable here packages those, so tests put
//! these in their slots (`kubelet.binary`, `kubeProxy.binary`). A double:
//!
//! - prints that it is a test double, its pid and argv;
//! - records its argv (`<name>.argv`, one argument per line) and a copy of
//!   the file given by `--config` (`<name>.config`) into the record
//!   directory (`--double-record-dir` / `KELSON_DOUBLE_RECORD_DIR`, else the
//!   config file's directory);
//! - serves `GET /healthz` → `200 ok` on 127.0.0.1: the port from
//!   `--double-healthz-port` / `KELSON_DOUBLE_HEALTHZ_PORT`, else the
//!   config file's (`healthzPort:` for the kubelet, the port of
//!   `healthzBindAddress:` for kube-proxy), else 10248 / 10256;
//! - exits with a code at once (`--double-exit-code=N` alone), or after a
//!   delay (`--double-crash-after=SECONDS`, code from `--double-exit-code`,
//!   default 1);
//! - ignores SIGTERM if asked (`--double-ignore-sigterm` or
//!   `KELSON_DOUBLE_IGNORE_SIGTERM=1`), to test the SIGKILL after a grace
//!   period.
//!
//! Flags win over environment variables. Flags reach a double on the node
//! through the machine config's `extraArgs`. Std only (plus libc for the
//! signal), so the binaries link statically.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Which program a double stands in for.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub name: &'static str,
    pub default_port: u16,
    /// Finds the health port in the config file the real program reads.
    pub port_from_config: fn(&str) -> Option<u16>,
}

pub const KUBELET: Role = Role { name: "kubelet-double", default_port: 10248, port_from_config: kubelet_port };
pub const KUBE_PROXY: Role = Role { name: "kube-proxy-double", default_port: 10256, port_from_config: kube_proxy_port };

/// `healthzPort: N` at the top level of a KubeletConfiguration.
fn kubelet_port(config: &str) -> Option<u16> {
    top_level_value(config, "healthzPort")?.parse().ok()
}

/// The port of `healthzBindAddress: host:port` in a KubeProxyConfiguration.
fn kube_proxy_port(config: &str) -> Option<u16> {
    top_level_value(config, "healthzBindAddress")?.rsplit(':').next()?.parse().ok()
}

fn top_level_value<'a>(yaml: &'a str, key: &str) -> Option<&'a str> {
    yaml.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.trim().trim_matches('"'))
    })
}

/// What the double was told to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Behaviour {
    pub config: Option<PathBuf>,
    pub record_dir: Option<PathBuf>,
    pub healthz_port: Option<u16>,
    pub exit_code: Option<u8>,
    pub crash_after: Option<Duration>,
    pub ignore_sigterm: bool,
}

impl Behaviour {
    /// From argv (without argv[0]) and an environment lookup.
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Behaviour, String> {
        let mut b = Behaviour {
            record_dir: env("KELSON_DOUBLE_RECORD_DIR").map(PathBuf::from),
            healthz_port: parse_opt(env("KELSON_DOUBLE_HEALTHZ_PORT"), "KELSON_DOUBLE_HEALTHZ_PORT")?,
            exit_code: parse_opt(env("KELSON_DOUBLE_EXIT_CODE"), "KELSON_DOUBLE_EXIT_CODE")?,
            crash_after: parse_opt::<f64>(env("KELSON_DOUBLE_CRASH_AFTER"), "KELSON_DOUBLE_CRASH_AFTER")?
                .map(Duration::from_secs_f64),
            ignore_sigterm: env("KELSON_DOUBLE_IGNORE_SIGTERM").is_some_and(|v| v == "1" || v == "true"),
            config: None,
        };
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            // `--config PATH` as well as `--config=PATH`, as the real ones
            // accept; other flags are the real programs' and are ignored.
            let mut value = || -> Result<String, String> {
                if let Some(v) = &inline {
                    return Ok(v.clone());
                }
                i += 1;
                args.get(i).cloned().ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--config" => b.config = Some(PathBuf::from(value()?)),
                "--double-record-dir" => b.record_dir = Some(PathBuf::from(value()?)),
                "--double-healthz-port" => b.healthz_port = parse_opt(Some(value()?), flag)?,
                "--double-exit-code" => b.exit_code = parse_opt(Some(value()?), flag)?,
                "--double-crash-after" => {
                    b.crash_after = parse_opt::<f64>(Some(value()?), flag)?.map(Duration::from_secs_f64)
                }
                "--double-ignore-sigterm" => b.ignore_sigterm = true,
                _ => {}
            }
            i += 1;
        }
        Ok(b)
    }
}

fn parse_opt<T: std::str::FromStr>(value: Option<String>, what: &str) -> Result<Option<T>, String> {
    value.map(|v| v.trim().parse().map_err(|_| format!("{what}: cannot parse {v:?}"))).transpose()
}

/// The double's whole life; `main` returns what this returns.
pub fn run(role: Role) -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let behaviour = match Behaviour::parse(argv.get(1..).unwrap_or(&[]), |k| std::env::var(k).ok()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", role.name);
            return ExitCode::from(2);
        }
    };
    println!(
        "{}: TEST DOUBLE standing in for the real program; pid {}; argv {:?}",
        role.name,
        std::process::id(),
        argv
    );
    if behaviour.ignore_sigterm {
        // SAFETY: installs the SIG_IGN disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        println!("{}: ignoring SIGTERM", role.name);
    }
    let config_text = behaviour.config.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
    if let Err(e) = record(role, &argv, &behaviour, config_text.as_deref()) {
        eprintln!("{}: recording argv and config: {e}", role.name);
    }
    if behaviour.crash_after.is_none() {
        if let Some(code) = behaviour.exit_code {
            println!("{}: exiting with code {code} as told", role.name);
            return ExitCode::from(code);
        }
    }
    let port = behaviour
        .healthz_port
        .or_else(|| config_text.as_deref().and_then(role.port_from_config))
        .unwrap_or(role.default_port);
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}: cannot serve /healthz on 127.0.0.1:{port}: {e}", role.name);
            return ExitCode::from(2);
        }
    };
    println!("{}: serving /healthz on 127.0.0.1:{port}", role.name);
    std::thread::spawn(move || serve(listener));
    // Output is a pipe: flush so the supervisor's log has the lines now.
    let _ = std::io::stdout().flush();
    match behaviour.crash_after {
        Some(after) => {
            std::thread::sleep(after);
            let code = behaviour.exit_code.unwrap_or(1);
            println!("{}: crashing with code {code} after {after:?} as told", role.name);
            ExitCode::from(code)
        }
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

/// Writes `<name>.argv` and `<name>.config` (and `<name>.pid`), each via a
/// temporary file and a rename, so a reader never sees half a file.
fn record(role: Role, argv: &[String], b: &Behaviour, config: Option<&str>) -> std::io::Result<()> {
    let dir = match (&b.record_dir, &b.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => config.parent().map(Path::to_path_buf).unwrap_or_default(),
        (None, None) => return Ok(()),
    };
    std::fs::create_dir_all(&dir)?;
    let write = |suffix: &str, data: &[u8]| -> std::io::Result<()> {
        let path = dir.join(format!("{}.{suffix}", role.name));
        let tmp = dir.join(format!(".{}.{suffix}.tmp", role.name));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path)
    };
    let mut lines = argv.join("\n");
    lines.push('\n');
    write("argv", lines.as_bytes())?;
    write("pid", format!("{}\n", std::process::id()).as_bytes())?;
    if let Some(config) = config {
        write("config", config.as_bytes())?;
    }
    Ok(())
}

fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || answer(stream));
    }
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&head);
    let mut words = request.split_whitespace();
    let reply: &[u8] = match (words.next(), words.next()) {
        (Some("GET"), Some("/healthz")) => {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    };
    let _ = stream.write_all(reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_win_over_the_environment_and_real_flags_are_ignored() {
        let env = |k: &str| match k {
            "KELSON_DOUBLE_EXIT_CODE" => Some("4".to_owned()),
            "KELSON_DOUBLE_HEALTHZ_PORT" => Some("1111".to_owned()),
            _ => None,
        };
        let b = Behaviour::parse(
            &args(&[
                "--config",
                "/etc/k.yaml",
                "--v=2",
                "--double-exit-code=9",
                "--double-crash-after=0.5",
                "--double-ignore-sigterm",
            ]),
            env,
        )
        .unwrap();
        assert_eq!(b.config, Some(PathBuf::from("/etc/k.yaml")));
        assert_eq!(b.exit_code, Some(9));
        assert_eq!(b.healthz_port, Some(1111));
        assert_eq!(b.crash_after, Some(Duration::from_millis(500)));
        assert!(b.ignore_sigterm);
        assert!(Behaviour::parse(&args(&["--double-exit-code=x"]), |_| None).is_err());
    }

    #[test]
    fn health_ports_are_read_from_the_real_programs_configs() {
        assert_eq!(kubelet_port("kind: KubeletConfiguration\nhealthzPort: 10248\n"), Some(10248));
        assert_eq!(kube_proxy_port("healthzBindAddress: 0.0.0.0:10256\n"), Some(10256));
        assert_eq!(kube_proxy_port("mode: iptables\n"), None);
    }
}
