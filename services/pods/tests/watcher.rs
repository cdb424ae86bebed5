#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The manifest watcher on a real directory with real inotify: what
//! editors, `kubeadm` and `mv` do to files becomes the right events, and
//! editors' temporary files become none.

use kelson_pods::manifest::LoadOptions;
use kelson_pods::watch::{ManifestEvent, ManifestWatcher, DEBOUNCE};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn manifest(name: &str, image: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: main\n    image: {image}\n")
}

fn summary(events: &[ManifestEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            ManifestEvent::Added(p) => format!("added {} {}", p.name, p.containers[0].image),
            ManifestEvent::Changed { old, new } => {
                format!("changed {} {} -> {}", old.name, old.containers[0].image, new.containers[0].image)
            }
            ManifestEvent::Removed(p) => format!("removed {}", p.name),
            ManifestEvent::Rejected(e) => format!("rejected {}", e.file().file_name().unwrap().to_string_lossy()),
        })
        .collect()
}

async fn next(watcher: &mut ManifestWatcher) -> Vec<String> {
    let events =
        tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.expect("an event within 5 s").unwrap();
    summary(&events)
}

/// Nothing comes within well over the debounce period.
async fn quiet(watcher: &mut ManifestWatcher) {
    if let Ok(events) = tokio::time::timeout(DEBOUNCE * 4, watcher.next()).await {
        panic!("expected no events, got {:?}", summary(&events.unwrap()));
    }
}

fn write_via_rename(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn files_written_renamed_in_edited_broken_and_deleted_become_events() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("manifests");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("etcd.yaml"), manifest("etcd", "etcd:1")).unwrap();
    fs::write(dir.join("broken.yaml"), "kind: Pod\n").unwrap();
    let mut watcher = ManifestWatcher::new(dir.clone(), LoadOptions::default(), DEBOUNCE).unwrap();
    assert_eq!(next(&mut watcher).await, ["rejected broken.yaml", "added etcd etcd:1"], "the full scan at start");

    // Editors' swap and backup files are not manifests.
    fs::write(dir.join(".etcd.yaml.swp"), manifest("swap", "x:1")).unwrap();
    fs::write(dir.join("etcd.yaml~"), manifest("backup", "x:1")).unwrap();
    fs::write(dir.join("README"), "notes").unwrap();
    quiet(&mut watcher).await;

    write_via_rename(&dir, "kube-scheduler.yaml", &manifest("kube-scheduler", "sched:1"));
    assert_eq!(next(&mut watcher).await, ["added kube-scheduler sched:1"]);

    fs::write(dir.join("etcd.yaml"), manifest("etcd", "etcd:2")).unwrap();
    assert_eq!(next(&mut watcher).await, ["changed etcd etcd:1 -> etcd:2"]);

    fs::write(dir.join("etcd.yaml"), "apiVersion: v1\nkind: Pod\nspec: [\n").unwrap();
    assert_eq!(next(&mut watcher).await, ["rejected etcd.yaml"]);
    assert_eq!(watcher.set().pods().count(), 2, "the broken file's pod keeps running");

    fs::write(dir.join("broken.yaml"), manifest("fixed", "fixed:1")).unwrap();
    assert_eq!(next(&mut watcher).await, ["added fixed fixed:1"]);

    fs::remove_file(dir.join("kube-scheduler.yaml")).unwrap();
    assert_eq!(next(&mut watcher).await, ["removed kube-scheduler"]);

    fs::rename(dir.join("broken.yaml"), root.path().join("moved-out.yaml")).unwrap();
    assert_eq!(next(&mut watcher).await, ["removed fixed"]);

    // Touching a file without changing the pod restarts nothing.
    fs::write(dir.join("etcd.yaml"), manifest("etcd", "etcd:2")).unwrap();
    quiet(&mut watcher).await;
}

#[tokio::test]
async fn a_file_written_in_pieces_is_read_once_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut watcher = ManifestWatcher::new(dir.path().to_owned(), LoadOptions::default(), DEBOUNCE).unwrap();
    assert!(next(&mut watcher).await.is_empty(), "an empty directory gives an empty first scan");
    let text = manifest("slow", "slow:1");
    let (first, rest) = text.split_at(text.len() / 2);
    let mut file = fs::File::create(dir.path().join("slow.yaml")).unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(DEBOUNCE / 4).await;
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);
    assert_eq!(next(&mut watcher).await, ["added slow slow:1"], "no rejection of the half-written file");
}

#[tokio::test]
async fn a_missing_directory_is_made_and_a_removed_one_ends_the_watch() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/kubernetes/manifests");
    let mut watcher = ManifestWatcher::new(dir.clone(), LoadOptions::default(), DEBOUNCE).unwrap();
    assert!(dir.is_dir());
    assert!(next(&mut watcher).await.is_empty());
    fs::remove_dir(&dir).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "manifest directory {} was removed or moved away; the pods already running keep running",
            dir.display()
        )
    );
}

#[tokio::test]
async fn a_change_seen_by_a_cancelled_call_is_reported_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut watcher = ManifestWatcher::new(dir.path().to_owned(), LoadOptions::default(), DEBOUNCE).unwrap();
    assert!(next(&mut watcher).await.is_empty());
    fs::write(dir.path().join("a.yaml"), manifest("a", "a:1")).unwrap();
    // Cancelled while debouncing: the event has been read by then.
    let cancelled = tokio::time::timeout(DEBOUNCE / 2, watcher.next()).await;
    assert!(cancelled.is_err(), "the debounce outlasts the timeout");
    assert_eq!(next(&mut watcher).await, ["added a a:1"]);
}
