//! The JSON status files (`<dir>/<namespace>_<name>.json`), one subscriber
//! of the manager's status channel: each sync writes the pods whose status
//! changed and removes the files of pods that left.

use super::{PodHost, PodsStatus};
use crate::status::PodStatus;
use kelson_base::error_chain;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::warn;

pub(super) struct StatusFiles {
    dir: PathBuf,
    host: Arc<dyn PodHost>,
    status: watch::Receiver<PodsStatus>,
    /// What the files hold, by (namespace, name).
    written: BTreeMap<(String, String), PodStatus>,
}

impl StatusFiles {
    pub fn new(dir: PathBuf, host: Arc<dyn PodHost>, status: watch::Receiver<PodsStatus>) -> Self {
        StatusFiles { dir, host, status, written: BTreeMap::new() }
    }

    /// Brings the files up to the latest status. The manager calls this
    /// right after it publishes, so no file is ever behind a decision the
    /// manager has acted on (tests and the node's tools read them).
    pub fn sync(&mut self) {
        if !self.status.has_changed().unwrap_or(false) {
            return;
        }
        // Later pods of the same name win: a replacement started while the
        // pod it replaces is still stopping owns the file.
        let latest: BTreeMap<(String, String), PodStatus> = self
            .status
            .borrow_and_update()
            .pods
            .iter()
            .map(|pod| ((pod.namespace.clone(), pod.name.clone()), pod.clone()))
            .collect();
        let before = std::mem::take(&mut self.written);
        let mut written = BTreeMap::new();
        for (key, status) in &before {
            if latest.contains_key(key) {
                continue;
            }
            if let Err(error) = self.host.remove_status(&self.dir, &key.0, &key.1) {
                warn!("pod {}/{}: {}", key.0, key.1, error_chain(&error));
                // Tried again at the next sync.
                written.insert(key.clone(), status.clone());
            }
        }
        for (key, status) in latest {
            let unchanged = before.get(&key) == Some(&status);
            if !unchanged {
                if let Err(error) = self.host.write_status(&self.dir, &status) {
                    warn!("pod {}/{}: {}", key.0, key.1, error_chain(&error));
                    continue;
                }
            }
            written.insert(key, status);
        }
        self.written = written;
    }
}
