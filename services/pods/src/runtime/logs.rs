//! A container's output: two FIFOs whose read ends this process holds
//! (opened before the shim opens them for writing: it refuses a FIFO
//! without a reader), pumped into the container's CRI log here, so lines
//! get PID 1's timestamps.

use super::{HostError, PodHost};
use crate::crilog::{pump, ContainerLog, Stream};
use crate::Clock;
use kelson_base::error_chain;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::warn;

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

/// The FIFOs of one run of one container, read ends open.
pub(super) struct OutputPipes {
    /// stdout, stderr: `<io_dir>/<container>-<restarts>.{out,err}`.
    pub paths: [PathBuf; 2],
    readers: [OwnedFd; 2],
}

impl OutputPipes {
    /// Makes the FIFOs in `io_dir` (the pod's) and opens their read ends.
    pub fn open(host: &dyn PodHost, io_dir: &Path, container: &str, restarts: u32) -> Result<Self, HostError> {
        host.create_dir(io_dir)?;
        let paths = STREAMS.map(|s| {
            io_dir.join(format!("{container}-{restarts}.{}", if s == Stream::Stdout { "out" } else { "err" }))
        });
        let readers = [host.open_fifo(&paths[0])?, host.open_fifo(&paths[1])?];
        Ok(OutputPipes { paths, readers })
    }

    /// Removes the FIFOs' names: once the runtime has opened the write
    /// ends (or failed to), nothing opens them by name again.
    pub fn unlink(&self, host: &dyn PodHost) {
        for path in &self.paths {
            let _ = host.remove_file(path);
        }
    }

    /// Pumps both streams into `log` until the container closes them.
    pub fn pump_into(self, log: ContainerLog, clock: &Arc<dyn Clock>) {
        let log = Arc::new(Mutex::new(log));
        for (stream, reader) in STREAMS.into_iter().zip(self.readers) {
            let log = log.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                if let Err(error) = pump(log, stream, reader, clock).await {
                    warn!("container log {}: {}", stream.as_str(), error_chain(&error));
                }
            });
        }
    }
}
