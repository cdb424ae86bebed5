//! The manifest directory (`/etc/kubernetes/manifests`) as a set of pods.
//!
//! [`ManifestSet::apply`] is pure: given a fresh scan it says what was
//! added, changed (a new UID: replace the pod), removed or rejected. A
//! rejected file never stops the pod it described before it broke: the
//! node keeps what runs until the file is fixed or removed.
//!
//! [`ManifestWatcher`] scans the whole directory at start and again after
//! each burst of inotify events has been quiet for the debounce period, so
//! a file written in several steps is read once, whole.

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

use crate::error::{FieldError, ManifestError};
use crate::manifest::{is_manifest_name, load, LoadOptions};
use crate::spec::PodSpec;

/// Where the node's static pod manifests are.
pub use kelson_base::paths::MANIFEST_DIR;
/// Quiet time after the last change before the directory is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// One scan of the directory: each manifest file and what it gave.
pub type Scan = BTreeMap<PathBuf, Result<PodSpec, ManifestError>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestEvent {
    /// A new pod to start.
    Added(PodSpec),
    /// The file now describes another pod: stop `old`, start `new`.
    Changed { old: Box<PodSpec>, new: Box<PodSpec> },
    /// The file is gone: stop the pod.
    Removed(PodSpec),
    /// The file cannot be used (reported once per distinct problem). The
    /// pod it described before, if any, keeps running.
    Rejected(ManifestError),
}

#[derive(Debug, Default, Clone)]
struct Slot {
    running: Option<PodSpec>,
    rejected: Option<ManifestError>,
}

/// The pods the directory gives, by file.
#[derive(Debug, Default, Clone)]
pub struct ManifestSet {
    files: BTreeMap<PathBuf, Slot>,
}

impl ManifestSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pods that should be running.
    pub fn pods(&self) -> impl Iterator<Item = &PodSpec> {
        self.files.values().filter_map(|s| s.running.as_ref())
    }

    /// The files currently refused, with why.
    pub fn rejected(&self) -> impl Iterator<Item = &ManifestError> {
        self.files.values().filter_map(|s| s.rejected.as_ref())
    }

    /// Moves the set to what `scan` found and says what changed.
    pub fn apply(&mut self, scan: Scan) -> Vec<ManifestEvent> {
        let mut events = Vec::new();
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !scan.contains_key(*p)).cloned().collect();
        for path in gone {
            if let Some(pod) = self.files.remove(&path).and_then(|s| s.running) {
                events.push(ManifestEvent::Removed(pod));
            }
        }
        let claims = self.claim_names(&scan);
        for (path, result) in scan {
            let slot = self.files.entry(path.clone()).or_default();
            let result = result.and_then(|pod| match claims.get(&key(&pod)) {
                Some(owner) if *owner != path => Err(duplicate(&path, &pod, owner)),
                _ => Ok(pod),
            });
            match result {
                Err(error) => {
                    if slot.rejected.as_ref() != Some(&error) {
                        events.push(ManifestEvent::Rejected(error.clone()));
                    }
                    slot.rejected = Some(error);
                }
                Ok(pod) => {
                    slot.rejected = None;
                    match slot.running.take() {
                        None => events.push(ManifestEvent::Added(pod.clone())),
                        Some(old) if old.uid != pod.uid => {
                            events.push(ManifestEvent::Changed { old: Box::new(old), new: Box::new(pod.clone()) })
                        }
                        Some(_) => {}
                    }
                    slot.running = Some(pod);
                }
            }
        }
        events
    }

    /// Which file owns each pod name: pods that keep running (unchanged
    /// name, or a broken file whose old pod stays) first, then new names
    /// in file order. Two files may not run pods of the same name.
    fn claim_names(&self, scan: &Scan) -> BTreeMap<(String, String), PathBuf> {
        let mut claims = BTreeMap::new();
        for (path, result) in scan {
            let running = self.files.get(path).and_then(|s| s.running.as_ref());
            let kept = match (result, running) {
                (Ok(pod), Some(old)) if key(pod) == key(old) => Some(old),
                (Err(_), Some(old)) => Some(old),
                _ => None,
            };
            if let Some(pod) = kept {
                claims.insert(key(pod), path.clone());
            }
        }
        for (path, result) in scan {
            if let Ok(pod) = result {
                claims.entry(key(pod)).or_insert_with(|| path.clone());
            }
        }
        claims
    }
}

fn key(pod: &PodSpec) -> (String, String) {
    (pod.namespace.clone(), pod.name.clone())
}

fn duplicate(path: &Path, pod: &PodSpec, owner: &Path) -> ManifestError {
    ManifestError::Invalid {
        file: path.to_owned(),
        errors: vec![FieldError::new(
            "metadata.name",
            format!("pod {}/{} is already defined by {}", pod.namespace, pod.name, owner.display()),
        )],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("creating manifest directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing manifest directory {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching manifest directory {dir} with inotify")]
    Watch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading inotify events for {dir}")]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest directory {dir} was removed or moved away; the pods already running keep running")]
    Gone { dir: PathBuf },
}

/// Reads every manifest in `dir`. A file that vanishes between listing and
/// reading is left out, as if listed a moment later.
pub fn scan_dir(dir: &Path, options: &LoadOptions) -> Result<Scan, WatchError> {
    let list_error = |source| WatchError::List { dir: dir.to_owned(), source };
    let mut scan = Scan::new();
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_manifest_name) {
            continue;
        }
        let path = entry.path();
        // metadata follows symlinks: a link to a manifest is a manifest.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let error = ManifestError::Read { file: path.clone(), reason: e.to_string() };
                scan.insert(path, Err(error));
                continue;
            }
        }
        let result = load(&path, options);
        if matches!(&result, Err(ManifestError::Read { .. })) && !path.exists() {
            continue;
        }
        scan.insert(path, result);
    }
    Ok(scan)
}

/// tokio's `AsyncFd` wants `AsRawFd`, which nix's `Inotify` lacks.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches a manifest directory and turns its changes into events.
pub struct ManifestWatcher {
    dir: PathBuf,
    options: LoadOptions,
    debounce: Duration,
    set: ManifestSet,
    inotify: AsyncFd<InotifyFd>,
    scanned: bool,
    /// Changes were seen and not yet scanned: kept across calls so that a
    /// call cancelled while debouncing loses nothing.
    dirty: bool,
}

impl ManifestWatcher {
    /// Starts watching `dir` (made if missing: a node without static pods
    /// has none yet). Must be called inside a tokio runtime.
    pub fn new(dir: PathBuf, options: LoadOptions, debounce: Duration) -> Result<Self, WatchError> {
        std::fs::create_dir_all(&dir).map_err(|source| WatchError::CreateDir { dir: dir.clone(), source })?;
        let watch_error = |source: Errno| WatchError::Watch { dir: dir.clone(), source: source.into() };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(watch_error)?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        inotify.add_watch(&dir, mask).map_err(watch_error)?;
        // SAFETY: the descriptor is the one `InotifyFd` owns; it stays open
        // and the same for as long as the `AsyncFd` holds it.
        let inotify = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE) }
            .map_err(|e| WatchError::Watch { dir: dir.clone(), source: e.into() })?;
        Ok(ManifestWatcher { dir, options, debounce, set: ManifestSet::new(), inotify, scanned: false, dirty: false })
    }

    pub fn set(&self) -> &ManifestSet {
        &self.set
    }

    /// The next changes: the first call reports the whole directory (and
    /// may be empty); later calls wait until something changes. Cancel
    /// safe: changes seen by a cancelled call are scanned by the next one.
    pub async fn next(&mut self) -> Result<Vec<ManifestEvent>, WatchError> {
        if !self.scanned {
            self.scanned = true;
            return self.rescan();
        }
        loop {
            if !self.dirty {
                while !self.relevant(self.read().await?)? {}
                self.dirty = true;
            }
            // Wait for a quiet period, so half-written files are not read.
            let mut deadline = tokio::time::Instant::now() + self.debounce;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    events = self.read() => {
                        if self.relevant(events?)? {
                            deadline = tokio::time::Instant::now() + self.debounce;
                        }
                    }
                }
            }
            let events = self.rescan()?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn rescan(&mut self) -> Result<Vec<ManifestEvent>, WatchError> {
        let scan = scan_dir(&self.dir, &self.options)?;
        self.dirty = false;
        Ok(self.set.apply(scan))
    }

    /// Whether any event can change the set: one about a manifest name,
    /// or a lost event queue (which calls for a rescan). The directory
    /// itself going away ends the watch.
    fn relevant(&self, events: Vec<nix::sys::inotify::InotifyEvent>) -> Result<bool, WatchError> {
        let mut relevant = false;
        for event in events {
            let gone = AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED;
            if event.mask.intersects(gone) {
                return Err(WatchError::Gone { dir: self.dir.clone() });
            }
            relevant |= event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                || event.name.as_ref().and_then(|n| n.to_str()).is_some_and(is_manifest_name);
        }
        Ok(relevant)
    }

    async fn read(&self) -> Result<Vec<nix::sys::inotify::InotifyEvent>, WatchError> {
        loop {
            let mut guard =
                self.inotify.readable().await.map_err(|source| WatchError::Read { dir: self.dir.clone(), source })?;
            match guard.get_inner().0.read_events() {
                Ok(events) => return Ok(events),
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(WatchError::Read { dir: self.dir.clone(), source: e.into() }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn pod(file: &str, name: &str, image: &str) -> Result<PodSpec, ManifestError> {
        let text = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"c","image":"{image}"}}]}}}}"#
        );
        parse(Path::new(file), text.as_bytes(), &LoadOptions::default())
    }

    fn broken(file: &str) -> Result<PodSpec, ManifestError> {
        parse(Path::new(file), b"kind: Deployment", &LoadOptions::default())
    }

    fn scan(entries: Vec<(&str, Result<PodSpec, ManifestError>)>) -> Scan {
        entries.into_iter().map(|(p, r)| (PathBuf::from(p), r)).collect()
    }

    fn summary(events: &[ManifestEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ManifestEvent::Added(p) => format!("added {}", p.name),
                ManifestEvent::Changed { old, new } => {
                    format!("changed {} -> {}", old.name, new.name)
                }
                ManifestEvent::Removed(p) => format!("removed {}", p.name),
                ManifestEvent::Rejected(e) => format!("rejected {}", e.file().display()),
            })
            .collect()
    }

    #[test]
    fn added_changed_and_removed_files_become_events() {
        let mut set = ManifestSet::new();
        let first = set.apply(scan(vec![("a.json", pod("a.json", "a", "x:1")), ("b.json", pod("b.json", "b", "x:1"))]));
        assert_eq!(summary(&first), ["added a", "added b"]);
        assert!(
            set.apply(scan(vec![("a.json", pod("a.json", "a", "x:1")), ("b.json", pod("b.json", "b", "x:1"))]))
                .is_empty(),
            "nothing changed, nothing to do"
        );
        let events = set.apply(scan(vec![("a.json", pod("a.json", "a", "x:2"))]));
        assert_eq!(summary(&events), ["removed b", "changed a -> a"]);
        let ManifestEvent::Changed { old, new } = &events[1] else { panic!() };
        assert_ne!(old.uid, new.uid);
        assert_eq!(new.containers[0].image, "x:2");
        assert_eq!(set.pods().map(|p| p.containers[0].image.as_str()).collect::<Vec<_>>(), ["x:2"]);
    }

    #[test]
    fn a_file_that_breaks_keeps_its_pod_and_is_reported_once() {
        let mut set = ManifestSet::new();
        set.apply(scan(vec![("a.json", pod("a.json", "a", "x:1"))]));
        let events = set.apply(scan(vec![("a.json", broken("a.json"))]));
        assert_eq!(summary(&events), ["rejected a.json"]);
        assert!(
            set.apply(scan(vec![("a.json", broken("a.json"))])).is_empty(),
            "the same problem is not reported again"
        );
        assert_eq!(set.pods().count(), 1, "the pod keeps running");
        assert_eq!(set.rejected().count(), 1);
        assert!(
            set.apply(scan(vec![("a.json", pod("a.json", "a", "x:1"))])).is_empty(),
            "fixed back to what runs: nothing to restart"
        );
        assert_eq!(set.rejected().count(), 0);
        assert_eq!(summary(&set.apply(scan(vec![]))), ["removed a"]);
        assert_eq!(summary(&set.apply(scan(vec![("new.json", broken("new.json"))]))), ["rejected new.json"]);
        assert_eq!(set.pods().count(), 0);
    }

    #[test]
    fn two_files_may_not_run_pods_of_the_same_name() {
        let mut set = ManifestSet::new();
        set.apply(scan(vec![("b.json", pod("b.json", "etcd", "x:1"))]));
        let events =
            set.apply(scan(vec![("a.json", pod("a.json", "etcd", "x:2")), ("b.json", pod("b.json", "etcd", "x:1"))]));
        assert_eq!(summary(&events), ["rejected a.json"], "the pod already running keeps its name");
        let ManifestEvent::Rejected(e) = &events[0] else { panic!() };
        assert_eq!(e.to_string(), "a.json: metadata.name: pod default/etcd is already defined by b.json");
        // The first file gives the name up: the other one now gets it.
        let events =
            set.apply(scan(vec![("a.json", pod("a.json", "etcd", "x:2")), ("b.json", pod("b.json", "other", "x:1"))]));
        assert_eq!(summary(&events), ["added etcd", "changed etcd -> other"]);
        // Two new files at once: the first by name wins.
        let mut fresh = ManifestSet::new();
        let events =
            fresh.apply(scan(vec![("y.json", pod("y.json", "dup", "x:1")), ("z.json", pod("z.json", "dup", "x:1"))]));
        assert_eq!(summary(&events), ["added dup", "rejected z.json"]);
    }

    #[test]
    fn scanning_reads_only_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"x:1"}]}}"#;
        for name in ["a.json", ".a.json.swp", "a.json~", "notes.txt"] {
            std::fs::write(dir.path().join(name), good).unwrap();
        }
        std::fs::create_dir(dir.path().join("dir.yaml")).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\n").unwrap();
        let scan = scan_dir(dir.path(), &LoadOptions::default()).unwrap();
        let names: Vec<_> = scan.keys().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.json", "bad.yaml"]);
        assert!(scan[&dir.path().join("a.json")].is_ok());
        assert_eq!(
            scan[&dir.path().join("bad.yaml")].as_ref().unwrap_err().to_string(),
            format!("{}/bad.yaml: apiVersion: is required (apiVersion: v1)", dir.path().display())
        );
        let err = scan_dir(&dir.path().join("missing"), &LoadOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), format!("listing manifest directory {}/missing", dir.path().display()));
    }
}
