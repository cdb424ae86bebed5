//! Test knob for the power-cut campaign (qemu-tests `power_cut.rs`):
//! `kelson.test.cut=<file name>:<phase>[:after-ready]` holds the first
//! atomic write of a file of that name at that [`WritePhase`] for ever,
//! after saying so on the console, so the test can cut the VM (QMP `quit`)
//! with the write exactly there. With `after-ready`, writes before the node
//! is ready pass, so a file written at boot and again later (a service's
//! state file) is cut at a later write.
//!
//! The hook is installed only when the knob is on the command line; without
//! it every atomic write pays one load of an unset cell.

use crate::cmdline::Cmdline;
use crate::status::{NodeStatus, Phase};
use kelson_base::atomic::{set_test_hook, WritePhase};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::watch;
use tracing::{error, warn};

pub const KNOB: &str = "kelson.test.cut";
/// The console line the test waits for before it cuts.
pub const MARKER: &str = "power-cut point reached";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPoint {
    pub file: String,
    pub phase: WritePhase,
    pub after_ready: bool,
}

impl CutPoint {
    /// Parses the knob's value, `<file name>:<phase>[:after-ready]`.
    pub fn parse(value: &str) -> Result<CutPoint, String> {
        let mut parts = value.split(':');
        let file = parts.next().filter(|f| !f.is_empty() && !f.contains('/'));
        let Some(file) = file else { return Err(format!("{KNOB}={value}: expected <file name>:<phase>")) };
        let phase = parts.next().unwrap_or_default();
        let Some(phase) = WritePhase::from_name(phase) else {
            let names: Vec<&str> = WritePhase::ALL.iter().map(|p| p.name()).collect();
            return Err(format!("{KNOB}={value}: phase {phase:?} is not one of {}", names.join(", ")));
        };
        let after_ready = match parts.next() {
            None => false,
            Some("after-ready") => true,
            Some(other) => return Err(format!("{KNOB}={value}: {other:?} is not `after-ready`")),
        };
        if parts.next().is_some() {
            return Err(format!("{KNOB}={value}: too many fields"));
        }
        Ok(CutPoint { file: file.to_owned(), phase, after_ready })
    }

    fn matches(&self, path: &Path, phase: WritePhase, ready: bool) -> bool {
        phase == self.phase && (ready || !self.after_ready) && path.file_name().is_some_and(|n| *n == *self.file)
    }
}

/// Reads the knob and installs the hook if it is set; `status` says when
/// the node is ready, for `after-ready` cut points.
pub fn install(cmdline: &Cmdline, status: watch::Receiver<NodeStatus>) {
    let Some(value) = cmdline.get(KNOB) else { return };
    match CutPoint::parse(value) {
        Ok(point) => {
            warn!(
                file = point.file.as_str(),
                phase = point.phase.name(),
                after_ready = point.after_ready,
                "test knob: the first matching atomic write will be held for ever for a power cut"
            );
            // The hook runs on whatever thread writes; the receiver is not
            // shared between threads by itself.
            let status = Mutex::new(status);
            set_test_hook(Box::new(move |path, phase| {
                let ready = matches!(status.lock().unwrap_or_else(|e| e.into_inner()).borrow().phase, Phase::Ready);
                if point.matches(path, phase, ready) {
                    hold(path, phase);
                }
            }));
        }
        Err(e) => error!("test knob ignored: {e}"),
    }
}

fn hold(path: &Path, phase: WritePhase) -> ! {
    warn!(path = %path.display(), phase = phase.name(), "{MARKER}; holding this write for ever");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knob_names_a_file_a_phase_and_optionally_after_ready() {
        assert_eq!(
            CutPoint::parse("pods.json:renamed:after-ready").unwrap(),
            CutPoint { file: "pods.json".into(), phase: WritePhase::Renamed, after_ready: true }
        );
        let point = CutPoint::parse("cloud-init.yaml:written").unwrap();
        assert!(point.matches(Path::new("/var/lib/kelson/config/cloud-init.yaml"), WritePhase::Written, false));
        assert!(!point.matches(Path::new("/var/lib/kelson/config/cloud-init.yaml"), WritePhase::Synced, false));
        assert!(!point.matches(Path::new("/var/lib/kelson/config/api.yaml"), WritePhase::Written, false));
        let later = CutPoint::parse("containerd.json:done:after-ready").unwrap();
        assert!(!later.matches(Path::new("/run/kelson/services/containerd.json"), WritePhase::Done, false));
        assert!(later.matches(Path::new("/run/kelson/services/containerd.json"), WritePhase::Done, true));
    }

    #[test]
    fn a_bad_knob_says_what_is_wrong() {
        assert_eq!(
            CutPoint::parse("pods.json:torn").unwrap_err(),
            "kelson.test.cut=pods.json:torn: phase \"torn\" is not one of written, synced, renamed, done"
        );
        assert!(CutPoint::parse(":written").is_err());
        assert!(CutPoint::parse("a/b:written").is_err());
        assert!(CutPoint::parse("a:written:later").is_err());
    }
}
