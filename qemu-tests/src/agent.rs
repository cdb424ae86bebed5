//! The in-guest agent: a busybox shell on the guest's second serial port
//! (`/dev/ttyS1`), reached from the host through QEMU's unix socket.
//!
//! Protocol: the host writes one shell line per command,
//!
//! ```text
//! ( eval '<command>' ) </dev/null 2>&1; echo "__KELSON_AGENT_""END_<n> $?"
//! ```
//!
//! and reads until `__KELSON_AGENT_END_<n> <status>`. The command runs in a
//! subshell so that `exit`, `cd` or a syntax error cannot end or change the
//! agent's own shell; its stdin is `/dev/null` so it cannot eat the lines
//! that follow. The marker is split by `""` in what is sent, so an echo of
//! the command line (before the guest has turned echo off) never matches.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cpio::Layer;

/// Where [`guest_layer_with_agent`] puts busybox in the guest.
pub const GUEST_BUSYBOX: &str = "/kelson-test/busybox";
/// Directory of busybox applet symlinks made by the agent hook.
pub const GUEST_APPLET_DIR: &str = "/kelson-test/bin";
/// The agent's hook script, run by Kelson's PID 1 after boot.
pub const AGENT_HOOK: &str = "/kelson-test/hooks/50-agent";

const MARKER_PREFIX: &str = "__KELSON_AGENT_";

/// What one [`crate::Vm::agent_exec`] call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOutput {
    /// The command's exit status (`$?` in the guest shell).
    pub status: i32,
    /// Its stdout and stderr, interleaved as written.
    pub output: String,
}

impl AgentOutput {
    /// Fails, showing the output, unless the status is 0.
    pub fn ok(self) -> Result<Self> {
        if self.status != 0 {
            bail!("guest command exited with status {}; output:\n{}", self.status, self.output);
        }
        Ok(self)
    }
}

pub(crate) struct Agent {
    stream: UnixStream,
    /// Bytes read but not yet consumed.
    pending: Vec<u8>,
    next_marker: u64,
}

impl Agent {
    /// Connects to the agent socket and waits (up to `deadline`) until a
    /// shell answers on the other side. Everything the guest wrote before
    /// that is discarded.
    pub(crate) fn connect(path: &Path, deadline: Instant) -> Result<Self> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(e).with_context(|| format!("connecting to the agent socket {}", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut agent = Self { stream, pending: Vec::new(), next_marker: 1 };
        agent.handshake(deadline)?;
        Ok(agent)
    }

    /// Sends probes once a second until one is answered, then a final probe
    /// whose answer marks the point after which the stream is clean: the
    /// shell handles lines in order, so answers to earlier probes (and any
    /// error about probe lines the serial port cut short before the guest
    /// opened it) all come before it.
    ///
    /// Probes are `echo __KELSON_AGENT_SYNC_<n>_$KELSON_AGENT`, which the
    /// guest answers with `__KELSON_AGENT_SYNC_<n>_ready`. They hold no
    /// quotes, brackets or glob characters, so whatever tail of one the
    /// guest receives cannot leave the shell inside an open quote or end it
    /// with a syntax error; and neither a tty echo of a probe nor a "not
    /// found" message about a cut one looks like an answer.
    fn handshake(&mut self, deadline: Instant) -> Result<()> {
        let mut last_probe: Option<Instant> = None;
        let mut sent: Vec<String> = Vec::new();
        loop {
            if last_probe.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                sent.push(self.send_probe()?);
                last_probe = Some(Instant::now());
            }
            self.fill(Duration::from_millis(100))?;
            if sent.iter().any(|answer| find(&self.pending, answer.as_bytes()).is_some()) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no agent shell answered on the guest's /dev/ttyS1 (is the agent layer in the \
                     initrd and its hook run?); received so far: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
        let answer = self.send_probe()?;
        self.read_until(&answer, deadline).context("waiting for the agent's answer to the final handshake probe")?;
        Ok(())
    }

    /// Sends a probe and returns the answer to wait for.
    fn send_probe(&mut self) -> Result<String> {
        let n = self.take_marker();
        self.send(&format!("echo {MARKER_PREFIX}SYNC_{n}_$KELSON_AGENT\n"))?;
        Ok(format!("{MARKER_PREFIX}SYNC_{n}_ready\n"))
    }

    pub(crate) fn exec(&mut self, command: &str, timeout: Duration) -> Result<AgentOutput> {
        let deadline = Instant::now() + timeout;
        let n = self.take_marker();
        let quoted = command.replace('\'', r"'\''");
        let line = format!("( eval '{quoted}' ) </dev/null 2>&1; echo \"{MARKER_PREFIX}\"\"END_{n} $?\"\n");
        self.send(&line)?;
        let needle = format!("{MARKER_PREFIX}END_{n} ");
        let before = self
            .read_until(&needle, deadline)
            .with_context(|| format!("waiting {timeout:?} for guest command {command:?} to finish"))?;
        // The status follows the marker, up to the end of its line.
        let status_line = self
            .read_until("\n", deadline)
            .with_context(|| format!("reading the exit status of guest command {command:?}"))?;
        let status: i32 = status_line
            .trim()
            .parse()
            .with_context(|| format!("parsing exit status {status_line:?} of guest command {command:?}"))?;
        Ok(AgentOutput { status, output: before })
    }

    fn take_marker(&mut self) -> u64 {
        let n = self.next_marker;
        self.next_marker += 1;
        n
    }

    fn send(&mut self, text: &str) -> Result<()> {
        self.stream.write_all(text.as_bytes()).context("writing to the agent socket")
    }

    /// Reads until `needle` has arrived; returns what came before it and
    /// drops the needle itself.
    fn read_until(&mut self, needle: &str, deadline: Instant) -> Result<String> {
        loop {
            if let Some(pos) = find(&self.pending, needle.as_bytes()) {
                let before = String::from_utf8_lossy(&self.pending[..pos]).into_owned();
                self.pending.drain(..pos + needle.len());
                return Ok(before);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out waiting for {needle:?} from the agent; received so far: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
            self.fill((deadline - now).min(Duration::from_millis(200)))?;
        }
    }

    /// Reads whatever arrives within `wait` into `pending`.
    fn fill(&mut self, wait: Duration) -> Result<()> {
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .context("setting the agent socket's read timeout")?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => bail!("the agent socket was closed (QEMU exited?)"),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e).context("reading from the agent socket"),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The guest side of the agent, as a layer: busybox at [`GUEST_BUSYBOX`]
/// and an executable hook at [`AGENT_HOOK`] that installs applet symlinks
/// in [`GUEST_APPLET_DIR`], puts `/dev/ttyS1` in raw, no-echo mode and
/// runs a non-interactive busybox shell reading commands from it, with
/// stdin, stdout and stderr on it too (restarted should it ever exit).
///
/// `busybox_host_path` must be a statically linked busybox (Debian's
/// busybox-static installs one at `/bin/busybox`).
pub fn guest_layer_with_agent(busybox_host_path: impl AsRef<Path>) -> Layer {
    Layer::new().file_from_host(GUEST_BUSYBOX, busybox_host_path, 0o755).file(AGENT_HOOK, agent_hook(), 0o755)
}

/// The agent's hook script (run from [`GUEST_BUSYBOX`]): what
/// [`guest_layer_with_agent`] installs at [`AGENT_HOOK`]. A guest whose
/// init is not Kelson's (the systemd node of `bench-vs-systemd`) runs the
/// same script as a service.
pub fn agent_hook() -> String {
    // The shell reads its commands from the tty given as a script file, so
    // it is not interactive although stdin and stdout are a tty: an
    // interactive ash prints prompts and, with the tty in raw mode, runs
    // its line editor, which echoes what it reads. (busybox 1.35's ash
    // ignores `+i`.)
    format!(
        r#"#!{GUEST_BUSYBOX} sh
# Kelson test agent: a shell on the second serial port for the host harness.
bb={GUEST_BUSYBOX}
tty=/dev/ttyS1
$bb mkdir -p {GUEST_APPLET_DIR}
$bb --install -s {GUEST_APPLET_DIR}
export PATH={GUEST_APPLET_DIR}:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export KELSON_AGENT=ready
$bb stty -F $tty raw -echo
# Normally the shell never exits; if something kills it, start another.
while :; do
    $bb sh $tty <$tty >$tty 2>&1
    $bb sleep 1
done
"#
    )
}
