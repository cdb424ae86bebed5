//! `cargo xtask bench api`: the management API, measured.
//!
//! Host half (127.0.0.1 only). This program starts itself a second time as
//! the server process (`bench-api serve DIR`), so the server's memory is
//! that process's alone and its CPU is not the client's. That process
//! serves, from one tokio runtime and one throwaway PKI (ECDSA P-256):
//! - the API: `kelson_api::serve` over a `FakeNode`;
//! - a baseline on the same stack (rustls TLS 1.3 with the API's client
//!   verifier and ALPN, hyper-util's auto HTTP/1.1 + HTTP/2 connection)
//!   answering every request with a constant JSON body as long as the
//!   API's `GET /v1/status` answer: no routing, roles, node call or
//!   encoding, so API minus baseline is what the API layer costs;
//! - the same baseline with server authentication only (no client
//!   certificate asked for).
//!
//! 1. Requests: `GET /v1/status` and the baseline's `GET /`, by
//!    `KELSON_BENCH_API_CLIENTS` concurrent clients (default 16) over one
//!    HTTP/2 connection (multiplexed) and over HTTP/1.1 (a keep-alive pool,
//!    one connection per client); `KELSON_BENCH_API_REQUESTS` requests per
//!    round (default 50000), `KELSON_BENCH_API_ROUNDS` rounds (default 5),
//!    the four configurations alternating within each round. A request's
//!    latency runs from sending it to the last byte of its answer.
//! 2. Handshakes: a new TCP connection, the TLS 1.3 handshake (ALPN h2, as
//!    kelsonctl offers it) and one request, one after another from one
//!    client, `KELSON_BENCH_API_HANDSHAKES` per round (default 2000): full
//!    handshakes (no session resumption, as a new kelsonctl process makes)
//!    with mutual TLS against the API and the baseline, with server auth
//!    only against the baseline; and resumed ones (a session ticket, no
//!    certificates) against the API for comparison. Both ends' crypto runs
//!    on this machine, so a figure is the client's and the server's cost
//!    together.
//! 3. Memory: a fresh server process's VmRSS (from /proc/PID/status, PID
//!    from the child handle) idle, with `KELSON_BENCH_API_STREAMS` (default
//!    100) open `GET /v1/logs/init?follow=true` streams, each having
//!    received every one of 10 lines pushed one at a time, and after they
//!    are closed (the server dropped every follower); the streams once on
//!    a connection each (how kelsonctl opens them) and once multiplexed on
//!    one HTTP/2 connection, each way `KELSON_BENCH_API_MEMORY_CYCLES` times
//!    (default 3), to show whether memory comes back.
//!
//! QEMU half (skipped with `KELSON_BENCH_API_QEMU=0`, or when there is no
//! disk image): the disk image under OVMF with a `kelsonctl gen cluster`
//! seed minus the control plane and a hostfwd to the node's port 50000;
//! PID 1's RSS from `GET /v1/status` (`memory.pid1RssBytes`) before, with
//! `KELSON_BENCH_API_STREAMS` follow streams of `/v1/logs/init` open
//! through kelsonctl's client (a connection each, each having received a
//! line of its backlog), and 5 s after they closed; twice. Then the same
//! VM rebooted `KELSON_BENCH_API_BOOT_ROUNDS` times each four ways
//! (default 3 each), in turn: quietly, under API load, under the same load
//! aimed at a guest port nothing listens on (a second hostfwd: the guest
//! kernel refuses each connection, so this measures what the connections
//! cost without the API), and quietly again (the control: how far two sets
//! of quiet boots differ in this run is the noise a ratio has to clear).
//! The load starts
//! when the console shows the config stage done (the earliest the API can
//! answer) and runs until containerd and the kubelet are healthy; the
//! stages after config and the time to each service turning healthy are
//! compared. With two or more host CPUs, QEMU runs on the first and this
//! process on the last, so the load generator cannot take the emulator's
//! CPU. `KELSON_BENCH_API_HOST=0` skips parts 1 to 3. An image whose PID 1 does not serve the API (no "management
//! API listening" on the console) is reported as not measured.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kelson_api::fake::{ClientCert, ClientTls, Connection, FakeNode, TestPki};
use kelson_api::types::{LogSource, NodeStatus};
use kelson_api::{serve, ServerSettings};
use qemu_tests::bench::{console_stamp, env_number, median};
use qemu_tests::{free_loopback_port, ImagePaths, VmBuilder};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const STATUS: &str = "/v1/status";
/// Live lines only: a stream opened in a later cycle must not get the
/// earlier cycles' lines as its backlog.
const FOLLOW: &str = "/v1/logs/init?follow=true&tail=0";
/// On a node: some of PID 1's log, so every stream receives lines.
const GUEST_FOLLOW: &str = "/v1/logs/init?follow=true&tail=10";
/// Lines pushed to every open stream in the memory part, one at a time.
const LINES_PER_STREAM: usize = 10;
const ALPN_BOTH: &[&str] = &["h2", "http/1.1"];
const SERVER_PROCESS: &str = "serve";

/// Everything a part of the benchmark waits for, at most.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The QEMU half: power-on to `kelson: ready` under OVMF and TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const NODE_ADDRESS: &str = "192.168.100.10";
const GUEST_MEMORY_MIB: u32 = 1024;
/// How long after closing the guest's streams PID 1's RSS is read again.
const GUEST_SETTLE: Duration = Duration::from_secs(5);

/// The `p`-quantile (0 < p <= 1) of sorted values: the smallest value at
/// least a fraction `p` of them are not above.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    if let Some(first) = args.next() {
        let Some(dir) = args.next().filter(|_| first == SERVER_PROCESS) else {
            bail!("usage: bench-api (or, as its own server process: bench-api serve DIR)");
        };
        return server_process(Path::new(&dir));
    }
    let settings = Settings {
        rounds: env_number("KELSON_BENCH_API_ROUNDS", 5)?.max(1),
        requests: env_number("KELSON_BENCH_API_REQUESTS", 50000)?.max(1),
        clients: env_number("KELSON_BENCH_API_CLIENTS", 16)?.max(1),
        handshakes: env_number("KELSON_BENCH_API_HANDSHAKES", 2000)?.max(1),
        streams: env_number("KELSON_BENCH_API_STREAMS", 100)?.max(1),
        memory_cycles: env_number("KELSON_BENCH_API_MEMORY_CYCLES", 3)?.max(1),
        boot_rounds: env_number("KELSON_BENCH_API_BOOT_ROUNDS", 3)?.max(1),
    };
    if std::env::var("KELSON_BENCH_API_HOST").is_ok_and(|v| v == "0") {
        println!("Requests, handshakes and memory on the host: not measured in this run (KELSON_BENCH_API_HOST=0)");
    } else {
        let runtime = tokio::runtime::Runtime::new().context("starting the client's tokio runtime")?;
        runtime.block_on(host_half(&settings))?;
    }
    if std::env::var("KELSON_BENCH_API_QEMU").is_ok_and(|v| v == "0") {
        println!("PID 1 with open streams (QEMU): not measured in this run (KELSON_BENCH_API_QEMU=0)");
        return Ok(());
    }
    match ImagePaths::disk_from_env() {
        Ok(image) => {
            // Pinned before the runtime exists, so its threads inherit it.
            let cpus = split_host_cpus()?;
            let runtime = tokio::runtime::Runtime::new().context("starting the client's tokio runtime")?;
            qemu_half(&runtime, &image, cpus, settings.streams, settings.boot_rounds)
        }
        Err(error) => {
            println!("PID 1 with open streams (QEMU): not measured in this run: no disk image ({error:#})");
            Ok(())
        }
    }
}

struct Settings {
    /// Pairs of boots (one quiet, one under API load) in the QEMU half.
    boot_rounds: usize,
    rounds: usize,
    requests: usize,
    clients: usize,
    handshakes: usize,
    streams: usize,
    memory_cycles: usize,
}

// ---------------------------------------------------------------------------
// The server process.

/// Serves the API and both baselines until stdin closes, answering the
/// parent's commands on stdout: `push N` (N lines to the init log's
/// followers; answers `pushed`), `followers N` (answers once N are
/// subscribed), `gone` (answers once every follower has been dropped).
fn server_process(dir: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the server's tokio runtime")?;
    runtime.block_on(async {
        let pki = TestPki::generate("bench-api CA").context("generating the throwaway PKI")?;
        pki.write_to(dir).with_context(|| format!("writing the throwaway PKI to {}", dir.display()))?;
        let node = Arc::new(FakeNode::new());
        // The body the baselines answer: what the API answers for status.
        let body = Bytes::from(serde_json::to_vec(&kelson_api::backend::Node::status(&*node))?);
        let material = pki.tls_material();
        let mutual = Arc::new(baseline_config(&material.ca_pem, &material.cert_pem, &material.key_pem, true)?);
        let server_only = Arc::new(baseline_config(&material.ca_pem, &material.cert_pem, &material.key_pem, false)?);

        let bind = || TcpListener::bind("127.0.0.1:0");
        let (api, baseline, baseline_server_auth) = (bind().await?, bind().await?, bind().await?);
        let ports = [&api, &baseline, &baseline_server_auth]
            .map(|listener| listener.local_addr().map(|addr| addr.port().to_string()));
        let ports = ports.into_iter().collect::<std::io::Result<Vec<_>>>().context("reading the listeners' ports")?;

        let (_keep_tls, tls_changes) = tokio::sync::watch::channel(Some(material));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(api, node.clone(), tls_changes, ServerSettings { audit_log: None }));
        tasks.spawn(serve_baseline(baseline, mutual, body.clone()));
        tasks.spawn(serve_baseline(baseline_server_auth, server_only, body));

        say(&format!("ports {}", ports.join(" ")))?;
        let mut commands = lines_of(std::io::stdin());
        let mut pushed = 0u64;
        while let Some(command) = commands.recv().await {
            let command = command.context("reading a command on stdin")?;
            let words: Vec<&str> = command.split_whitespace().collect();
            let count = || words.get(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(1);
            match words.first().copied() {
                Some("push") => {
                    for _ in 0..count() {
                        pushed += 1;
                        node.push_log(&LogSource::Init, &format!("bench-api line {pushed}"));
                    }
                    say("pushed")?;
                }
                Some("followers") => {
                    node.wait_for_followers(&LogSource::Init, count()).await;
                    say("followers")?;
                }
                Some("gone") => {
                    node.wait_for_no_followers(&LogSource::Init).await;
                    say("gone")?;
                }
                _ => bail!("unknown command {command:?}"),
            }
        }
        Ok(())
    })
}

fn say(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").and_then(|()| stdout.flush()).context("answering the benchmark on stdout")
}

/// The lines of a blocking reader (a pipe), read on a thread of their own.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<std::io::Result<String>> {
    use std::io::BufRead;
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The API's server config, built the way `kelson_api` builds it, with or
/// without requiring a client certificate.
fn baseline_config(ca_pem: &str, cert_pem: &str, key_pem: &str, mutual: bool) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("reading the CA certificate")?)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the server key")?;
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Answers every request on every connection with `body`.
async fn serve_baseline(listener: TcpListener, config: Arc<rustls::ServerConfig>, body: Bytes) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                // As the API's server does.
                let _ = tcp.set_nodelay(true);
                let (acceptor, body) = (acceptor.clone(), body.clone());
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |_request| {
                        let mut response = Response::new(Full::new(body.clone()));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The benchmark's side of the server process.

/// The server process, its addresses, its PKI, and its command channel.
struct ServerProcess {
    child: Child,
    commands: ChildStdin,
    answers: mpsc::UnboundedReceiver<std::io::Result<String>>,
    api: SocketAddr,
    baseline: SocketAddr,
    baseline_server_auth: SocketAddr,
    ca_pem: String,
    admin: ClientCert,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start() -> Result<ServerProcess> {
        let dir = tempfile::tempdir().context("creating a directory for the server's PKI")?;
        let program = std::env::current_exe().context("finding this program to start it as the server")?;
        let mut child = Command::new(&program)
            .arg(SERVER_PROCESS)
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} as the server process", program.display()))?;
        let (Some(commands), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server process has no stdin or stdout pipe");
        };
        let mut answers = lines_of(stdout);
        // From here the process is ended by ServerProcess's Drop.
        let line = match tokio::time::timeout(STEP_TIMEOUT, answers.recv()).await {
            Ok(Some(Ok(line))) => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server process did not print its ports within {STEP_TIMEOUT:?}");
            }
        };
        let ports: Vec<u16> = line.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect();
        let at = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports.get(i).copied().unwrap_or(0)));
        let mut server = ServerProcess {
            ca_pem: String::new(),
            admin: ClientCert { cert_pem: String::new(), key_pem: String::new() },
            child,
            commands,
            answers,
            api: at(0),
            baseline: at(1),
            baseline_server_auth: at(2),
            dir,
        };
        if ports.len() != 3 {
            bail!("the server process printed {line:?}, not three ports");
        }
        let pki_dir = server.dir.path().to_owned();
        let read = |name: &str| {
            let path = pki_dir.join(name);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        server.admin = ClientCert { cert_pem: read("admin.pem")?, key_pem: read("admin-key.pem")? };
        server.ca_pem = read("ca.pem")?;
        Ok(server)
    }

    /// Sends a command and waits for its one-line answer.
    async fn command(&mut self, command: &str) -> Result<String> {
        use std::io::Write;
        // A few bytes into a pipe the server reads at once: no need to
        // leave the runtime for this write.
        writeln!(self.commands, "{command}")
            .and_then(|()| self.commands.flush())
            .with_context(|| format!("sending {command:?} to the server process"))?;
        match tokio::time::timeout(STEP_TIMEOUT, self.answers.recv()).await {
            Ok(Some(answer)) => answer.with_context(|| format!("reading the server process's answer to {command:?}")),
            Ok(None) => bail!("the server process ended on {command:?}"),
            Err(_) => bail!("the server process did not answer {command:?} within {STEP_TIMEOUT:?}"),
        }
    }

    /// The server process's resident set, in KiB.
    fn rss_kib(&self) -> Result<u64> {
        // Not yet waited for, so the number is still this child's.
        let pid = self.child.id();
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    fn client(&self, mutual: bool, alpn: &[&str]) -> Result<ClientTls> {
        let admin = mutual.then_some(&self.admin);
        Ok(ClientTls::new(&self.ca_pem, admin, "127.0.0.1", alpn)?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET path` and reads the whole answer, which must be 200.
async fn get(connection: &mut Connection, path: &str) -> Result<Bytes> {
    let response = connection.send(Method::GET, path, Bytes::new()).await?;
    let status = response.status();
    let body = response.into_body().collect().await.with_context(|| format!("reading the answer to {path}"))?;
    if status != StatusCode::OK {
        bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&body.to_bytes()));
    }
    Ok(body.to_bytes())
}

// ---------------------------------------------------------------------------
// 1. Requests.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Every client's requests multiplexed on one HTTP/2 connection.
    Http2,
    /// One HTTP/1.1 keep-alive connection per client.
    Http1,
}

struct LoadTarget {
    label: &'static str,
    addr: SocketAddr,
    path: &'static str,
    protocol: Protocol,
}

/// One round's figures.
struct LoadRound {
    per_second: f64,
    /// p50, p90, p99 in ms.
    quantiles_ms: [f64; 3],
}

async fn load_round(
    server: &ServerProcess,
    target: &LoadTarget,
    settings: &Settings,
    size: usize,
) -> Result<LoadRound> {
    let alpn: &[&str] = match target.protocol {
        Protocol::Http2 => &["h2"],
        Protocol::Http1 => &["http/1.1"],
    };
    let tls = server.client(true, alpn)?;
    let mut connections = Vec::new();
    let first = tls.connect(target.addr).await?;
    for _ in 1..settings.clients {
        connections.push(match first.share() {
            Some(shared) => shared,
            None => tls.connect(target.addr).await?,
        });
    }
    connections.push(first);
    // Each connection's first request (and the server's first of its kind)
    // is not measured.
    for connection in &mut connections {
        get(connection, target.path).await?;
    }
    let remaining = Arc::new(AtomicUsize::new(settings.requests));
    let path = target.path;
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for mut connection in connections {
        let remaining = remaining.clone();
        clients.spawn(async move {
            let mut latencies = Vec::new();
            while remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                let sent = Instant::now();
                let body = get(&mut connection, path).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                if body.len() != size {
                    bail!("GET {path} answered {} bytes, not {size}", body.len());
                }
            }
            Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(settings.requests);
    while let Some(joined) = clients.join_next().await {
        latencies.extend(joined.context("a client task failed")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(LoadRound {
        per_second: latencies.len() as f64 / elapsed,
        quantiles_ms: [quantile(&latencies, 0.50), quantile(&latencies, 0.90), quantile(&latencies, 0.99)],
    })
}

// ---------------------------------------------------------------------------
// 2. Handshakes.

struct HandshakeTarget {
    label: &'static str,
    addr: SocketAddr,
    path: &'static str,
    mutual: bool,
    /// Resume the session of the round's first connection (not measured)
    /// rather than make full handshakes.
    resume: bool,
}

/// (handshakes per second, median ms per handshake) of one round.
async fn handshake_round(server: &ServerProcess, target: &HandshakeTarget, count: usize) -> Result<(f64, f64)> {
    let mut tls = server.client(target.mutual, &["h2"])?;
    if target.resume {
        // A ticket to resume with.
        get(&mut tls.connect(target.addr).await?, target.path).await?;
    } else {
        tls = tls.without_resumption();
    }
    let mut each_ms = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let began = Instant::now();
        let mut connection = tls.connect(target.addr).await?;
        get(&mut connection, target.path).await?;
        each_ms.push(began.elapsed().as_secs_f64() * 1000.0);
        if connection.resumed != target.resume {
            bail!("a handshake was {}", if connection.resumed { "resumed" } else { "not resumed" });
        }
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), median(&each_ms)))
}

// ---------------------------------------------------------------------------
// 3. Memory with open follow streams.

/// Open follow streams: a task per stream reads its lines and reports each
/// on `lines`; dropping this closes them all.
struct Streams {
    readers: JoinSet<Result<()>>,
    /// (stream, lines completed) as they come.
    lines: mpsc::UnboundedReceiver<(usize, usize)>,
    /// Lines received so far, per stream.
    counts: Vec<usize>,
    _connections: Vec<Connection>,
}

/// Reads NDJSON from stream `index`'s `body`, reporting each frame's
/// complete lines.
async fn read_lines(index: usize, mut body: Incoming, lines: mpsc::UnboundedSender<(usize, usize)>) -> Result<()> {
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading a follow stream")?;
        if let Ok(data) = frame.into_data() {
            let _ = lines.send((index, data.iter().filter(|&&b| b == b'\n').count()));
        }
    }
    Ok(())
}

async fn open_streams(
    tls: &ClientTls,
    addr: SocketAddr,
    path: &str,
    count: usize,
    multiplexed: bool,
) -> Result<Streams> {
    let (report, lines) = mpsc::unbounded_channel();
    let mut readers = JoinSet::new();
    let mut connections: Vec<Connection> = Vec::new();
    for _ in 0..count {
        let mut connection = match connections.first().and_then(|first| first.share().filter(|_| multiplexed)) {
            Some(shared) => shared,
            None => tls.connect(addr).await?,
        };
        let response = connection.send(Method::GET, path, Bytes::new()).await?;
        if response.status() != StatusCode::OK {
            bail!("GET {path} answered {}", response.status());
        }
        readers.spawn(read_lines(connections.len(), response.into_body(), report.clone()));
        connections.push(connection);
    }
    Ok(Streams { readers, lines, counts: vec![0; count], _connections: connections })
}

impl Streams {
    /// Waits until every stream has received at least `lines` lines.
    async fn received_each(&mut self, lines: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while self.counts.iter().any(|&count| count < lines) {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((index, count))) => self.counts[index] += count,
                Ok(None) => bail!("every follow stream ended"),
                Err(_) => {
                    let behind = self.counts.iter().filter(|&&count| count < lines).count();
                    bail!("{behind} follow streams had not received {lines} lines within {STEP_TIMEOUT:?}");
                }
            }
        }
        Ok(())
    }

    fn close(mut self) {
        self.readers.abort_all();
    }
}

/// One cycle: KiB before, with the streams open, after they closed.
async fn memory_cycle(server: &mut ServerProcess, streams: usize, multiplexed: bool) -> Result<[u64; 3]> {
    let before = server.rss_kib()?;
    let tls = server.client(true, &["h2"])?;
    let mut open = open_streams(&tls, server.api, FOLLOW, streams, multiplexed).await?;
    server.command(&format!("followers {streams}")).await?;
    for line in 1..=LINES_PER_STREAM {
        server.command("push 1").await?;
        open.received_each(line).await?;
    }
    let during = server.rss_kib()?;
    open.close();
    server.command("gone").await?;
    Ok([before, during, server.rss_kib()?])
}

// ---------------------------------------------------------------------------

async fn host_half(settings: &Settings) -> Result<()> {
    let server = ServerProcess::start().await?;
    let tls = server.client(true, ALPN_BOTH)?;
    let api_body = get(&mut tls.connect(server.api).await?, STATUS).await?;
    let baseline_body = get(&mut tls.connect(server.baseline).await?, "/").await?;
    if api_body != baseline_body {
        bail!(
            "the baseline's body is not the API's status answer ({} and {} bytes)",
            baseline_body.len(),
            api_body.len()
        );
    }
    let size = api_body.len();

    let targets = [
        LoadTarget { label: "API GET /v1/status, HTTP/2", addr: server.api, path: STATUS, protocol: Protocol::Http2 },
        LoadTarget { label: "baseline GET /, HTTP/2", addr: server.baseline, path: "/", protocol: Protocol::Http2 },
        LoadTarget { label: "API GET /v1/status, HTTP/1.1", addr: server.api, path: STATUS, protocol: Protocol::Http1 },
        LoadTarget { label: "baseline GET /, HTTP/1.1", addr: server.baseline, path: "/", protocol: Protocol::Http1 },
    ];
    let mut load: Vec<Vec<LoadRound>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        // Each round starts with the next configuration, so none is always
        // first (or always after the same one).
        for i in (0..targets.len()).map(|i| (i + round) % targets.len()) {
            let result = load_round(&server, &targets[i], settings, size)
                .await
                .with_context(|| format!("{}, round {}", targets[i].label, round + 1))?;
            eprintln!(
                "bench-api: round {}/{}: {}: {:.0} requests/s, p50 {:.2} ms",
                round + 1,
                settings.rounds,
                targets[i].label,
                result.per_second,
                result.quantiles_ms[0]
            );
            load[i].push(result);
        }
    }

    let handshake_targets = [
        HandshakeTarget {
            label: "full, mutual TLS, API (GET /v1/status)",
            addr: server.api,
            path: STATUS,
            mutual: true,
            resume: false,
        },
        HandshakeTarget {
            label: "full, mutual TLS, baseline (GET /)",
            addr: server.baseline,
            path: "/",
            mutual: true,
            resume: false,
        },
        HandshakeTarget {
            label: "full, server auth only, baseline (GET /)",
            addr: server.baseline_server_auth,
            path: "/",
            mutual: false,
            resume: false,
        },
        HandshakeTarget {
            label: "resumed, mutual TLS, API (GET /v1/status)",
            addr: server.api,
            path: STATUS,
            mutual: true,
            resume: true,
        },
    ];
    let mut handshakes: Vec<Vec<(f64, f64)>> = handshake_targets.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for i in (0..handshake_targets.len()).map(|i| (i + round) % handshake_targets.len()) {
            let target = &handshake_targets[i];
            let result = handshake_round(&server, target, settings.handshakes)
                .await
                .with_context(|| format!("handshakes, {}, round {}", target.label, round + 1))?;
            eprintln!(
                "bench-api: round {}/{}: {}: {:.0} handshakes/s, {:.2} ms each",
                round + 1,
                settings.rounds,
                target.label,
                result.0,
                result.1
            );
            handshakes[i].push(result);
        }
    }
    drop(server);

    // Each way of opening the streams gets a fresh server process: neither
    // the load above nor the other way's freed memory may be in it.
    let mut memory = Vec::new();
    for (label, multiplexed) in [("a connection each", false), ("one HTTP/2 connection", true)] {
        let mut server = ServerProcess::start().await?;
        let started_kib = server.rss_kib()?;
        let tls = server.client(true, ALPN_BOTH)?;
        get(&mut tls.connect(server.api).await?, STATUS).await?;
        let mut cycles = Vec::new();
        for cycle in 0..settings.memory_cycles {
            let figures = memory_cycle(&mut server, settings.streams, multiplexed)
                .await
                .with_context(|| format!("memory with {} streams on {label}, cycle {}", settings.streams, cycle + 1))?;
            eprintln!("bench-api: memory, {label}, cycle {}: {figures:?} KiB", cycle + 1);
            cycles.push(figures);
        }
        memory.push((label, started_kib, cycles));
    }

    println!(
        "management API benchmark, host side, 127.0.0.1 ({} CPUs, shared by client and server processes); \
         TLS 1.3, ECDSA P-256 certificates, ring; release build",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "API: kelson_api::serve over a FakeNode; baseline: the same rustls config and hyper-util auto connection \
         answering a constant {size}-byte JSON body (the API's status answer) with no routing, roles, node call or \
         encoding"
    );
    println!(
        "1. requests: {} concurrent clients (HTTP/2: one connection; HTTP/1.1: one keep-alive connection each), \
         {} requests per round, {} rounds alternating; medians over rounds; latency = send to last byte",
        settings.clients, settings.requests, settings.rounds
    );
    println!("{:<34} {:>11} {:>9} {:>9} {:>9}", "", "requests/s", "p50 ms", "p90 ms", "p99 ms");
    for (target, rounds) in targets.iter().zip(&load) {
        let per_second: Vec<f64> = rounds.iter().map(|r| r.per_second).collect();
        let q = |i: usize| median(&rounds.iter().map(|r| r.quantiles_ms[i]).collect::<Vec<_>>());
        println!("{:<34} {:>11.0} {:>9.2} {:>9.2} {:>9.2}", target.label, median(&per_second), q(0), q(1), q(2));
    }
    for pair in load.chunks(2) {
        let [api, baseline] = pair else { continue };
        let rate = |rounds: &Vec<LoadRound>| median(&rounds.iter().map(|r| r.per_second).collect::<Vec<_>>());
        println!("  API / baseline requests/s: {:.2}", rate(api) / rate(baseline));
    }
    println!(
        "2. handshakes: new TCP connection + TLS 1.3 handshake (ALPN h2) + one request, one at a time from one \
         client, {} per round, {} rounds alternating; medians over rounds (client and server crypto both counted)",
        settings.handshakes, settings.rounds
    );
    println!("{:<42} {:>13} {:>14}", "", "handshakes/s", "ms/handshake");
    for (target, rounds) in handshake_targets.iter().zip(&handshakes) {
        let per_second = median(&rounds.iter().map(|r| r.0).collect::<Vec<_>>());
        let each = median(&rounds.iter().map(|r| r.1).collect::<Vec<_>>());
        println!("{:<42} {:>13.0} {:>14.2}", target.label, per_second, each);
    }
    let each = |i: usize| median(&handshakes[i].iter().map(|r| r.1).collect::<Vec<_>>());
    println!(
        "  the client certificate's cost (baseline mutual - server auth): {:.2} ms per handshake",
        each(1) - each(2)
    );
    println!(
        "3. memory: VmRSS (KiB) of a fresh server process per row group: at start, after one status request \
         (idle), then per cycle before, with {} GET {FOLLOW} streams open (each having received {LINES_PER_STREAM} \
         lines pushed one at a time) and after the server dropped them; per stream = (open - before) / {}",
        settings.streams, settings.streams
    );
    println!(
        "{:<24} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "streams on", "cycle", "start", "idle", "before", "open", "closed", "per stream"
    );
    for (label, started_kib, cycles) in &memory {
        for (i, [before, during, after]) in cycles.iter().enumerate() {
            let per_stream = (*during as f64 - *before as f64) / settings.streams as f64;
            let (start, idle) = match i {
                0 => (started_kib.to_string(), before.to_string()),
                _ => (String::new(), String::new()),
            };
            println!(
                "{label:<24} {:>6} {start:>9} {idle:>9} {before:>9} {during:>9} {after:>9} {per_stream:>11.1}",
                i + 1
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// QEMU half.

/// Which host CPU QEMU runs on and which this process does.
#[derive(Clone, Copy)]
struct HostCpus {
    qemu: usize,
    load: usize,
}

/// With two or more host CPUs allowed: QEMU gets the first and this
/// process (the load generator, kelsonctl's client, the console polling)
/// is pinned to the last, so the load cannot take the emulator's CPU
/// (a TCG guest's one vCPU is one host thread). `None` on one CPU.
/// Pins the calling thread; threads it starts afterwards inherit that.
fn split_host_cpus() -> Result<Option<HostCpus>> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("reading this process's CPU affinity")?;
    let cpus: Vec<usize> = (0..CpuSet::count()).filter(|&cpu| allowed.is_set(cpu).unwrap_or(false)).collect();
    let (Some(&qemu), Some(&load)) = (cpus.first(), cpus.last()) else { return Ok(None) };
    if qemu == load {
        return Ok(None);
    }
    let mut own = CpuSet::new();
    own.set(load).with_context(|| format!("host CPU {load}"))?;
    sched_setaffinity(Pid::from_raw(0), &own).with_context(|| format!("pinning the benchmark to host CPU {load}"))?;
    Ok(Some(HostCpus { qemu, load }))
}

fn qemu_half(
    runtime: &tokio::runtime::Runtime,
    image: &ImagePaths,
    cpus: Option<HostCpus>,
    streams: usize,
    boot_rounds: usize,
) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let cluster = dir.path().join("cluster");
    let mut spec = kelsonctl::gen::ClusterSpec::with_defaults("bench", 1, 0);
    // QEMU's user network is the node network; its host side is the gateway.
    spec.gateway = Some("192.168.100.1".parse()?);
    kelsonctl::gen::generate_cluster(&spec, &cluster, false).context("generating the cluster's seed")?;
    let node = "bench-cp-1";
    // PID 1's own memory is measured, not a control plane's.
    let seed = qemu_tests::seed::without_control_plane(&cluster.join("nodes").join(node))?;
    let disk = image.disk_overlay(dir.path(), "8G")?;
    let port = free_loopback_port()?;
    let closed_port = free_loopback_port()?;
    let netdev = format!(
        "user,id=up,restrict=on,net=192.168.100.0/24,host=192.168.100.1,\
         hostfwd=tcp:127.0.0.1:{port}-{NODE_ADDRESS}:{},hostfwd=tcp:127.0.0.1:{closed_port}-{NODE_ADDRESS}:{CLOSED_GUEST_PORT}",
        kelson_api::PORT
    );
    eprintln!("bench-api: booting {} under OVMF for PID 1's memory", image.disk.display());
    let mut builder = VmBuilder::firmware();
    if let Some(cpus) = cpus {
        builder = builder.host_cpus(&[cpus.qemu]);
    }
    let mut vm = builder
        .name("bench-api")
        .ovmf(dir.path())?
        .disk_qcow2(&disk)
        .disk(&seed)
        .memory_mib(GUEST_MEMORY_MIB)
        .qemu_args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=up"])
        .reboot_allowed(true)
        .boot()?;
    vm.expect("kelson: ready", BOOT_TIMEOUT)?;
    if !vm.console_text()?.contains("management API listening") {
        println!(
            "PID 1 with open streams (QEMU): not measured in this run: the image's PID 1 does not serve the API \
             (no \"management API listening\" on its console by ready)"
        );
        vm.kill()?;
        return Ok(());
    }
    // kelsonctl's own client, with the kelsonconfig gen wrote, the node
    // reached through the hostfwd.
    let config_path = cluster.join("kelsonconfig");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config = kelsonctl::api::KelsonConfig::from_yaml(&config_path, &text)?;
    let client = kelsonctl::api::Client::new(&config).context("setting up kelsonctl's client")?;
    let closed_port =
        client.node(&kelsonctl::api::NodeEntry { name: node.to_owned(), endpoint: format!("127.0.0.1:{closed_port}") });
    let node = client.node(&kelsonctl::api::NodeEntry { name: node.to_owned(), endpoint: format!("127.0.0.1:{port}") });
    let pid1_rss = async || -> Result<u64> {
        let status: NodeStatus = node.get(STATUS).await.context("reading the node's status")?;
        Ok(status.memory.pid1_rss_bytes)
    };

    let figures = runtime.block_on(async {
        let before = pid1_rss().await?;
        let mut cycles = Vec::new();
        for cycle in 1..=2 {
            eprintln!("bench-api: opening {streams} follow streams to the node, cycle {cycle}");
            let mut open = Vec::with_capacity(streams);
            for _ in 0..streams {
                let mut lines = node.log_lines(GUEST_FOLLOW).await.context("opening a follow stream")?;
                // Each stream has had some of its backlog.
                if lines.next().await.context("reading a follow stream")?.is_none() {
                    bail!("a follow stream of {GUEST_FOLLOW} ended at once");
                }
                open.push(lines);
            }
            let during = pid1_rss().await?;
            drop(open);
            tokio::time::sleep(GUEST_SETTLE).await;
            cycles.push((during, pid1_rss().await?));
        }
        anyhow::Ok((before, cycles))
    });
    let boots = match &figures {
        Ok(_) => boots_under_load(runtime, &mut vm, &node, &closed_port, boot_rounds),
        Err(_) => Ok(Vec::new()),
    };
    vm.kill()?;
    let (before, cycles) = figures?;
    let kib = |bytes: u64| bytes / 1024;
    println!(
        "4. PID 1 on a node (disk image under OVMF, TCG, {GUEST_MEMORY_MIB} MiB, no control plane): \
         memory.pid1RssBytes of GET {STATUS} in KiB, {streams} GET {GUEST_FOLLOW} streams each on its own mutual-TLS \
         connection (kelsonctl's client), each having received a line of its backlog; closed read {} s after \
         closing",
        GUEST_SETTLE.as_secs()
    );
    println!("{:<6} {:>9} {:>9} {:>9} {:>16}", "cycle", "before", "open", "closed", "KiB per stream");
    let mut previous = before;
    for (i, (during, after)) in cycles.iter().enumerate() {
        let per_stream = (kib(*during) as f64 - kib(previous) as f64) / streams as f64;
        println!("{:<6} {:>9} {:>9} {:>9} {per_stream:>16.1}", i + 1, kib(previous), kib(*during), kib(*after));
        previous = *after;
    }
    print_boots(&boots?, cpus);
    Ok(())
}

/// One boot's figures: from the node's own status (CLOCK_BOOTTIME) each
/// stage's duration and the stretch from the end of the config stage (the
/// earliest the API can answer) to the last stage's end; from the
/// console's kernel timestamps, the end of the config stage to each
/// service turning healthy (what boot-critical work comes to); and, for a
/// loaded boot, what the load got done.
struct BootFigures {
    kind: BootKind,
    config_to_ready_ms: u64,
    stages_after_config: Vec<(String, u64)>,
    config_to_healthy_ms: Vec<(&'static str, u64)>,
    load: Option<LoadDone>,
}

fn boot_figures(
    kind: BootKind,
    status: &NodeStatus,
    config_to_healthy_ms: Vec<(&'static str, u64)>,
    load: Option<LoadDone>,
) -> Option<BootFigures> {
    let config = status.stages.iter().find(|s| s.name == "config")?;
    let config_end = config.started_boot_ms + config.elapsed_ms?;
    let end = status.stages.iter().filter_map(|s| Some(s.started_boot_ms + s.elapsed_ms?)).max()?;
    let stages_after_config = status
        .stages
        .iter()
        .filter(|s| s.started_boot_ms >= config_end)
        .map(|s| (s.name.clone(), s.elapsed_ms.unwrap_or(0)))
        .collect();
    Some(BootFigures {
        kind,
        config_to_ready_ms: end.saturating_sub(config_end),
        stages_after_config,
        config_to_healthy_ms,
        load,
    })
}

/// The four ways a boot of part 5 runs, in turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BootKind {
    Quiet,
    Loaded,
    /// The same load aimed at a guest port nothing listens on: the guest
    /// kernel refuses every connection and PID 1 does nothing, so what
    /// this costs the boot is the connections' own (the guest kernel's and
    /// QEMU's user network's), not the API's.
    Refused,
    /// Quiet too: the control.
    QuietAgain,
}

impl BootKind {
    const ALL: [BootKind; 4] = [BootKind::Quiet, BootKind::Loaded, BootKind::Refused, BootKind::QuietAgain];

    fn label(self) -> &'static str {
        match self {
            BootKind::Quiet => "quiet",
            BootKind::Loaded => "loaded",
            BootKind::Refused => "refused",
            BootKind::QuietAgain => "quiet again",
        }
    }
}

/// What the load got done while a boot ran on, and what it cost the host.
#[derive(Clone, Copy)]
struct LoadDone {
    statuses: usize,
    stream_lines: usize,
    /// This process's CPU time over the loaded stretch (its load clients,
    /// TLS included): host CPU the emulator could not have.
    host_cpu: Option<Duration>,
}

#[derive(Default)]
struct LoadCounters {
    statuses: AtomicUsize,
    stream_lines: AtomicUsize,
}

/// API clients at a node that already answers: status pollers and follow
/// streams, each backing off half a second when refused or cut, until
/// `stop`. Backing off matters: each refused attempt is a connection
/// QEMU's user network handles under its global lock, which stalls the
/// emulated CPU as surely as load inside the guest.
fn start_load(
    node: &kelsonctl::api::client::NodeClient,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    counters: &Arc<LoadCounters>,
) -> JoinSet<()> {
    let mut load = JoinSet::new();
    for _ in 0..LOAD_POLLERS {
        let (node, stop, counters) = (node.clone(), stop.clone(), counters.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match node.get::<NodeStatus>(STATUS).await {
                    Ok(_) => {
                        counters.statuses.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tokio::time::sleep(LOAD_BACK_OFF).await,
                }
            }
        });
    }
    for _ in 0..LOAD_STREAMS {
        let (node, stop, counters) = (node.clone(), stop.clone(), counters.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut lines) = node.log_lines(GUEST_FOLLOW).await {
                    while let Ok(Some(_)) = lines.next().await {
                        counters.stream_lines.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(LOAD_BACK_OFF).await;
            }
        });
    }
    load
}

/// A guest port nothing listens on, for the refused load.
const CLOSED_GUEST_PORT: u16 = 50999;
const LOAD_POLLERS: usize = 8;
const LOAD_STREAMS: usize = 20;
const LOAD_BACK_OFF: Duration = Duration::from_millis(500);

/// This process's user and system CPU time so far.
fn own_cpu_time() -> Option<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let of = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, (t.tv_usec() as u32) * 1000);
    Some(of(usage.user_time()) + of(usage.system_time()))
}

/// The services whose turning healthy a boot is timed to. Not kube-proxy:
/// it turns healthy only once it has synced with an API server, and this
/// node has none.
const SERVICES: [&str; 2] = ["containerd", "kubelet"];
/// How long a service may take to turn healthy after ready.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);
const CONFIG_DONE: &str = "stage done stage=config";

/// Boots the node again `rounds` times each way, in turn: quiet, under API
/// load, under the same load refused by the guest (at `closed_port`), quiet
/// again. A loaded boot starts the load when the console shows
/// the config stage done (before that the API has no certificate to serve
/// with) and keeps it up until every service is healthy; each boot's
/// figures come from the console and, once the load is gone, the status.
fn boots_under_load(
    runtime: &tokio::runtime::Runtime,
    vm: &mut qemu_tests::Vm,
    node: &kelsonctl::api::client::NodeClient,
    closed_port: &kelsonctl::api::client::NodeClient,
    rounds: usize,
) -> Result<Vec<BootFigures>> {
    let mut boots = Vec::new();
    let turns = BootKind::ALL.len() * rounds;
    for turn in 0..turns {
        let kind = BootKind::ALL[turn % BootKind::ALL.len()];
        let target = match kind {
            BootKind::Loaded => Some(node),
            BootKind::Refused => Some(closed_port),
            BootKind::Quiet | BootKind::QuietAgain => None,
        };
        eprintln!("bench-api: boot {} of {turns}, {}", turn + 1, kind.label());
        let from = vm.console_text()?.len();
        vm.send_ctrl_alt_delete()?;
        vm.expect("kelson-init starting as PID 1", BOOT_TIMEOUT)?;
        vm.expect(CONFIG_DONE, BOOT_TIMEOUT)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counters = Arc::new(LoadCounters::default());
        let load = target.map(|target| {
            let _entered = runtime.enter();
            (start_load(target, &stop, &counters), own_cpu_time())
        });
        vm.expect("kelson: ready", BOOT_TIMEOUT)?;
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        let console = loop {
            let console = vm.console_text()?;
            let all_healthy = SERVICES.iter().all(|service| {
                console_stamp(&console, from, &format!("service={service} from=running to=healthy")).is_some()
            });
            if all_healthy || Instant::now() > deadline {
                break console;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        stop.store(true, Ordering::Relaxed);
        let done = load.map(|(mut load, cpu_at_start)| {
            let host_cpu = own_cpu_time().zip(cpu_at_start).map(|(now, then)| now.saturating_sub(then));
            runtime.block_on(async {
                load.abort_all();
                while load.join_next().await.is_some() {}
            });
            LoadDone {
                statuses: counters.statuses.load(Ordering::Relaxed),
                stream_lines: counters.stream_lines.load(Ordering::Relaxed),
                host_cpu,
            }
        });
        let config_done = console_stamp(&console, from, CONFIG_DONE)
            .map(|(_, stamp)| stamp)
            .context("no config stage line with a timestamp")?;
        let config_to_healthy_ms = SERVICES
            .iter()
            .filter_map(|service| {
                let (_, healthy) =
                    console_stamp(&console, from, &format!("service={service} from=running to=healthy"))?;
                Some((*service, ((healthy - config_done).max(0.0) * 1000.0) as u64))
            })
            .collect();
        let status = runtime.block_on(async {
            let deadline = Instant::now() + STEP_TIMEOUT;
            loop {
                match node.get::<NodeStatus>(STATUS).await {
                    Ok(status) if status.phase == kelson_api::types::Phase::Ready => return Ok(status),
                    _ if Instant::now() > deadline => {
                        bail!("the node's status did not say ready within {STEP_TIMEOUT:?}")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })?;
        boots.push(
            boot_figures(kind, &status, config_to_healthy_ms, done)
                .context("the status lists no finished config stage")?,
        );
    }
    Ok(boots)
}

fn print_boots(boots: &[BootFigures], cpus: Option<HostCpus>) {
    if boots.is_empty() {
        return;
    }
    let pinning = match cpus {
        Some(cpus) => format!("QEMU on host CPU {}, this process (the load) on host CPU {}", cpus.qemu, cpus.load),
        None => "one host CPU: QEMU and the load share it".to_owned(),
    };
    println!(
        "5. Boot under API load (the same VM rebooted with ctrl-alt-del, {} times each way, in turn: quiet, \
         loaded, refused, quiet again; the second quiet set is the control, its ratio the run's noise; a refused \
         boot has the same load aimed at guest port {CLOSED_GUEST_PORT}, where nothing listens, so its ratio is \
         the connections' own cost, not the API's): a loaded boot has, from the console's \"{CONFIG_DONE}\" on (the API has no certificate before), {LOAD_POLLERS} \
         clients polling GET {STATUS} back to back and {LOAD_STREAMS} following {GUEST_FOLLOW}, backing off {} ms \
         when refused or cut, until containerd and the kubelet are healthy; {pinning}; milliseconds, medians: \
         stages from the node's status (CLOCK_BOOTTIME), \"healthy\" rows from the console's kernel timestamps, \
         counted from the end of the config stage",
        boots.iter().filter(|b| b.kind == BootKind::Quiet).count(),
        LOAD_BACK_OFF.as_millis(),
    );
    let median_of = |kind: BootKind, pick: &dyn Fn(&BootFigures) -> Option<u64>| -> Option<f64> {
        let values: Vec<f64> = boots.iter().filter(|b| b.kind == kind).filter_map(pick).map(|v| v as f64).collect();
        (!values.is_empty()).then(|| median(&values))
    };
    println!(
        "{:<30} {:>10} {:>10} {:>8} {:>10} {:>8} {:>12} {:>8}",
        "", "quiet", "loaded", "ratio", "refused", "ratio", "quiet again", "ratio"
    );
    let row = |name: &str, pick: &dyn Fn(&BootFigures) -> Option<u64>| {
        let [quiet, loaded, refused, again] = BootKind::ALL.map(|kind| median_of(kind, pick));
        let ratio = |x: Option<f64>| match (x, quiet) {
            (Some(x), Some(q)) if q > 0.0 => format!("{:.2}", x / q),
            _ => "-".to_owned(),
        };
        let ms = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}"));
        println!(
            "{name:<30} {:>10} {:>10} {:>8} {:>10} {:>8} {:>12} {:>8}",
            ms(quiet),
            ms(loaded),
            ratio(loaded),
            ms(refused),
            ratio(refused),
            ms(again),
            ratio(again)
        );
    };
    row("config -> ready", &|b| Some(b.config_to_ready_ms));
    let names: Vec<String> = boots[0].stages_after_config.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        row(&format!("  {name}"), &|b| b.stages_after_config.iter().find(|(n, _)| *n == name).map(|(_, ms)| *ms));
    }
    for service in SERVICES {
        row(&format!("config -> {service} healthy"), &|b| {
            b.config_to_healthy_ms.iter().find(|(name, _)| *name == service).map(|(_, ms)| *ms)
        });
    }
    println!(
        "each boot, in ms from the end of the config stage: ready, then each service healthy (what the load got done):"
    );
    for (i, boot) in boots.iter().enumerate() {
        let healthy: Vec<String> = boot.config_to_healthy_ms.iter().map(|(name, ms)| format!("{name} {ms}")).collect();
        let load = boot.load.map_or(String::new(), |done| {
            format!(
                "  ({} status answers, {} streamed lines, {} of this host process's CPU)",
                done.statuses,
                done.stream_lines,
                done.host_cpu.map_or("unknown ms".to_owned(), |cpu| format!("{} ms", cpu.as_millis()))
            )
        });
        println!(
            "  {:>2} {:<12} ready {:>6}, {}{load}",
            i + 1,
            boot.kind.label(),
            boot.config_to_ready_ms,
            healthy.join(", ")
        );
    }
}
