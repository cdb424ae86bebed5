//! One health check: HTTP GET, TCP connect, unix socket connect, or a
//! program's exit. Each returns a sentence saying what it saw.

use crate::launcher::Launcher;
use crate::spec::{Probe, DEFAULT_PATH};
use kelson_base::Clock;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `probe` within `timeout`. `Ok` holds what passed, `Err` why not.
pub async fn check(
    probe: &Probe,
    timeout: Duration,
    clock: &dyn Clock,
    launcher: &dyn Launcher,
) -> Result<String, String> {
    if let Probe::Exec { argv } = probe {
        // Exec needs the timeout itself, to kill the program.
        return exec(argv, timeout, clock, launcher).await;
    }
    tokio::select! {
        result = connect_probe(probe) => result,
        () = clock.sleep(timeout) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn connect_probe(probe: &Probe) -> Result<String, String> {
    match probe {
        Probe::HttpGet { url } => http_get(url).await,
        Probe::TcpConnect { addr } => tokio::net::TcpStream::connect(addr)
            .await
            .map(|_| format!("{addr} accepted a connection"))
            .map_err(|e| format!("connecting to {addr}: {e}")),
        Probe::UnixConnect { path } => tokio::net::UnixStream::connect(path)
            .await
            .map(|_| format!("{} accepted a connection", path.display()))
            .map_err(|e| format!("connecting to {}: {e}", path.display())),
        Probe::Exec { .. } => Err("exec probes are not connections".to_owned()),
    }
}

/// Splits `http://host[:port][/path]` into the address to dial, the Host
/// header and the request path.
pub fn parse_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let dial = if has_port { authority.to_owned() } else { format!("{authority}:80") };
    Ok((dial, authority.to_owned(), path.to_owned()))
}

/// A minimal HTTP/1.1 GET: healthy on a 2xx status line.
async fn http_get(url: &str) -> Result<String, String> {
    let (dial, host, path) = parse_http_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(&dial).await.map_err(|e| format!("connecting to {dial}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kelson-supervise\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending GET {url}: {e}"))?;
    // Only the status line matters; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("reading the answer to GET {url}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status_line = line.lines().next().unwrap_or("").trim_end();
    let code: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {url}: not an HTTP answer: {status_line:?}"))?;
    if (200..300).contains(&code) {
        Ok(format!("GET {url} answered {code}"))
    } else {
        Err(format!("GET {url} answered {code}"))
    }
}

async fn exec(
    argv: &[String],
    timeout: Duration,
    clock: &dyn Clock,
    launcher: &dyn Launcher,
) -> Result<String, String> {
    let program = argv.first().ok_or("exec probe with an empty argv")?;
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..]).env_clear().env("PATH", DEFAULT_PATH);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let launched = launcher.spawn(cmd).map_err(|e| format!("starting {program}: {e}"))?;
    let mut exit = launched.exit;
    tokio::select! {
        result = &mut exit => match result {
            Some(e) if e.success() => Ok(format!("{program} exited 0")),
            Some(e) => Err(format!("{program} {e}")),
            None => Err(format!("{program}: exit status lost")),
        },
        () = clock.sleep(timeout) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(launched.pid), nix::sys::signal::Signal::SIGKILL);
            // Wait for the reaper so the killed probe is not left behind.
            let _ = exit.await;
            Err(format!("{program} did not finish within {timeout:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::ThreadLauncher;
    use kelson_base::SystemClock;
    use tokio::net::TcpListener;

    #[test]
    fn urls_split_into_address_host_and_path() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:10248/healthz").unwrap(),
            ("127.0.0.1:10248".into(), "127.0.0.1:10248".into(), "/healthz".into())
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost:80".into(), "localhost".into(), "/".into())
        );
        assert_eq!(parse_http_url("http://[::1]/x").unwrap().0, "[::1]:80");
        assert!(parse_http_url("https://x/").is_err());
    }

    async fn serve_once(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
        });
        format!("http://{addr}/healthz")
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_only() {
        let url = serve_once("200 OK").await;
        let ok = check(&Probe::HttpGet { url }, Duration::from_secs(5), &SystemClock, &ThreadLauncher).await;
        assert!(ok.unwrap().ends_with("answered 200"));
        let url = serve_once("503 Service Unavailable").await;
        let bad = check(&Probe::HttpGet { url }, Duration::from_secs(5), &SystemClock, &ThreadLauncher).await;
        assert!(bad.unwrap_err().ends_with("answered 503"));
    }

    #[tokio::test]
    async fn connection_checks_fail_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let probe = Probe::TcpConnect { addr: listener.local_addr().unwrap() };
        assert!(check(&probe, Duration::from_secs(5), &SystemClock, &ThreadLauncher).await.is_ok());
        // A socket bound but not listening holds its port, so nothing else
        // (another test, a forked child still holding a listener copy)
        // answers there: connections are refused.
        use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        let silent = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&silent), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        let bound: SockaddrIn = nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&silent)).unwrap();
        let probe = Probe::TcpConnect { addr: std::net::SocketAddr::V4(bound.into()) };
        let refused = check(&probe, Duration::from_secs(5), &SystemClock, &ThreadLauncher).await;
        assert!(refused.unwrap_err().contains("refused"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let probe = Probe::UnixConnect { path: path.clone() };
        assert!(check(&probe, Duration::from_secs(5), &SystemClock, &ThreadLauncher).await.is_err());
        let _server = tokio::net::UnixListener::bind(&path).unwrap();
        assert!(check(&probe, Duration::from_secs(5), &SystemClock, &ThreadLauncher).await.is_ok());
    }

    #[tokio::test]
    async fn exec_checks_use_the_exit_code_and_the_timeout() {
        let t = Duration::from_millis(300);
        let probe = |s: &str| Probe::Exec { argv: vec!["sh".into(), "-c".into(), s.into()] };
        assert!(check(&probe("exit 0"), t, &SystemClock, &ThreadLauncher).await.is_ok());
        assert!(check(&probe("exit 1"), t, &SystemClock, &ThreadLauncher).await.unwrap_err().contains("code 1"));
        let slow = check(&probe("exec sleep 30"), t, &SystemClock, &ThreadLauncher).await;
        assert!(slow.unwrap_err().contains("did not finish"));
    }
}
