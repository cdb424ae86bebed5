//! A minimal, blocking QMP (QEMU Machine Protocol) client over a unix socket.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// How long one QMP command may take to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Qmp {
    /// Connects to an already existing QMP socket, reads the greeting and
    /// leaves capability negotiation mode.
    pub(crate) fn connect(path: &Path) -> Result<Self> {
        // QEMU binds the socket file before it listens on it: a connection
        // in between is refused, which a loaded host makes likely.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other,
            }
        }
        .with_context(|| format!("connecting to QMP socket {}", path.display()))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).context("setting the QMP socket's read timeout")?;
        let writer = stream.try_clone().context("cloning the QMP socket")?;
        let mut qmp = Self { reader: BufReader::new(stream), writer, next_id: 1 };
        let greeting = qmp.read_message().context("reading the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None).context("negotiating QMP capabilities")?;
        Ok(qmp)
    }

    /// Runs `command` with optional `arguments` and returns its `return`
    /// value. Asynchronous events that arrive in between are skipped.
    pub(crate) fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).with_context(|| format!("sending QMP command {command}"))?;
        loop {
            let msg = self.read_message().with_context(|| format!("waiting for the reply to QMP command {command}"))?;
            if msg.get("event").is_some() {
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let class = err.get("class").and_then(Value::as_str).unwrap_or("?");
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("?");
                bail!("QMP command {command} failed: {class}: {desc}");
            }
            bail!("malformed QMP reply to {command}: {msg}");
        }
    }

    /// Sends `quit`. QEMU may close the socket before it answers, which
    /// counts as success.
    pub(crate) fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(e) => {
                let closed = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                        matches!(
                            io.kind(),
                            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                        )
                    })
                });
                if closed {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).context("reading from the QMP socket")?;
        if n == 0 {
            return Err(anyhow!(std::io::Error::new(ErrorKind::UnexpectedEof, "QMP socket closed by QEMU")));
        }
        serde_json::from_str(line.trim_end()).with_context(|| format!("parsing QMP message {:?}", line.trim_end()))
    }
}
