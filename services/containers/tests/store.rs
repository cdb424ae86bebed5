//! The image store on real OCI layouts built here: resolution by name, tag
//! and digest; layers in all three encodings unpacked with whiteouts; bad
//! blobs and hostile layers refused.
#![allow(clippy::unwrap_used)]

use kelson_test_support as common;

use common::{gzip, tar, write_layout, zstd, Entry, TAR, TAR_GZIP, TAR_ZSTD};
use kelson_containers::store::{ImageStore, LayerError, ResolveError, UnpackError};
use serde_json::json;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn three_layer_image(layouts: &Path) -> String {
    let base = tar(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/a", b"a", 0o644),
        Entry::File("etc/b", b"b", 0o644),
        Entry::Dir("opq/", 0o755),
        Entry::File("opq/old", b"old", 0o644),
        Entry::Dir("keep/", 0o700),
        Entry::File("keep/x", b"x1", 0o644),
        Entry::Symlink("etc/link", "/etc/b"),
        Entry::Hardlink("etc/hard", "etc/b"),
    ]);
    let middle = tar(&[
        Entry::File("etc/.wh.a", b"", 0o644),
        Entry::File("opq/new", b"new", 0o644),
        Entry::File("opq/.wh..wh..opq", b"", 0o644),
        Entry::File("etc/c", b"c", 0o600),
    ]);
    let top = tar(&[Entry::File("keep/x", b"x3", 0o640), Entry::Owned("bin/suid", b"#!", 0o4755, 1234, 5678)]);
    write_layout(
        &layouts.join("tools"),
        json!({ "io.containerd.image.name": "registry.k8s.io/tools:1.0" }),
        &[(TAR, base), (TAR_GZIP, gzip(&middle)), (TAR_ZSTD, zstd(&top))],
        json!({ "Entrypoint": ["/bin/tool"], "Cmd": ["--serve"], "Env": ["PATH=/bin"], "WorkingDir": "/work", "User": "1000:1000" }),
    )
}

#[test]
fn images_resolve_by_normalised_name_tag_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    let busybox = write_layout(
        &layouts.join("busybox"),
        json!({ "io.containerd.image.name": "docker.io/library/busybox:1.36", "org.opencontainers.image.ref.name": "1.36" }),
        &[(TAR, tar(&[Entry::File("hello", b"hi", 0o644)]))],
        json!({ "Cmd": ["sh"] }),
    );
    let etcd = write_layout(
        &layouts.join("etcd"),
        json!({ "org.opencontainers.image.ref.name": "registry.k8s.io/etcd:3.5.16-0" }),
        &[(TAR, tar(&[Entry::File("etcd", b"", 0o755)]))],
        json!({}),
    );
    // A bare tag in ref.name names the repository by the layout's directory.
    let pause = write_layout(
        &layouts.join("pause"),
        json!({ "org.opencontainers.image.ref.name": "3.9" }),
        &[(TAR, tar(&[Entry::File("pause", b"", 0o755)]))],
        json!({}),
    );
    let store = ImageStore::new(&layouts, dir.path().join("unpacked"));
    for (reference, digest) in [
        ("busybox:1.36", &busybox),
        ("docker.io/library/busybox:1.36", &busybox),
        ("registry.k8s.io/etcd:3.5.16-0", &etcd),
        ("pause:3.9", &pause),
    ] {
        assert_eq!(&store.resolve(reference).unwrap().manifest_digest, digest, "{reference}");
    }
    let pinned = store.resolve(&format!("busybox@{busybox}")).unwrap();
    assert_eq!(pinned.manifest_digest, busybox);
    assert_eq!(store.resolve("busybox:1.36").unwrap().defaults().cmd, ["sh"]);

    for unknown in ["busybox", "registry.k8s.io/etcd:3.5.15-0", "quay.io/busybox:1.36"] {
        match store.resolve(unknown) {
            Err(ResolveError::NotFound { reference, store, .. }) => {
                assert_eq!(store, layouts);
                assert!(
                    reference.contains(unknown.rsplit('/').next().unwrap().split(':').next().unwrap()),
                    "{reference}"
                );
            }
            other => panic!("{unknown}: expected NotFound, got {other:?}"),
        }
    }
    // A broken layout is skipped (the others still resolve) and named when an image is not found.
    fs::create_dir_all(layouts.join("aaa-broken")).unwrap();
    fs::write(layouts.join("aaa-broken/index.json"), "{not json").unwrap();
    assert_eq!(store.resolve("pause:3.9").unwrap().manifest_digest, pause);
    let err = store.resolve("coredns:1.11").unwrap_err();
    assert!(
        err.is_not_found()
            && err.to_string().contains("unreadable layouts: ")
            && err.to_string().contains("aaa-broken/index.json"),
        "{err}"
    );

    let missing = ImageStore::new(dir.path().join("nowhere"), dir.path().join("u"));
    assert!(missing.resolve("busybox").unwrap_err().is_not_found());
    let bad = store.resolve("Bad:Name").unwrap_err();
    assert!(!bad.is_not_found() && bad.to_string().contains("\"Bad:Name\""), "{bad}");
}

#[test]
fn layers_unpack_in_order_with_whiteouts_modes_owners_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    three_layer_image(&layouts);
    let store = ImageStore::new(&layouts, dir.path().join("unpacked"));
    let image = store.resolve("registry.k8s.io/tools:1.0").unwrap();
    // What a crashed unpack (pid 999999999, gone) left behind is removed.
    let stale =
        dir.path().join("unpacked").join(format!(".partial-{}-999999999", image.manifest_digest.replace(':', "-")));
    fs::create_dir_all(stale.join("half")).unwrap();
    let defaults = image.defaults();
    assert_eq!((defaults.entrypoint, defaults.cmd), (vec!["/bin/tool".to_owned()], vec!["--serve".to_owned()]));
    assert_eq!((defaults.working_dir.as_deref(), defaults.user.as_deref()), (Some("/work"), Some("1000:1000")));

    let root = store.unpack(&image).unwrap();
    assert_eq!(root, dir.path().join("unpacked").join(image.manifest_digest.replace(':', "-")));
    assert!(!root.join("etc/a").exists(), "a whiteout removes the lower layer's file");
    assert_eq!(fs::read(root.join("etc/b")).unwrap(), b"b");
    assert_eq!(fs::read(root.join("etc/c")).unwrap(), b"c");
    assert!(!root.join("opq/old").exists(), "an opaque directory hides what lower layers put in it");
    assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"new", "but keeps what its own layer put in it");
    assert_eq!(fs::read(root.join("keep/x")).unwrap(), b"x3");
    assert_eq!(fs::read_link(root.join("etc/link")).unwrap(), Path::new("/etc/b"));
    assert_eq!(fs::metadata(root.join("etc/hard")).unwrap().ino(), fs::metadata(root.join("etc/b")).unwrap().ino());
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!((mode("etc/c"), mode("keep"), mode("keep/x"), mode("bin/suid")), (0o600, 0o700, 0o640, 0o4755));
    let suid = fs::metadata(root.join("bin/suid")).unwrap();
    assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
    assert_eq!(suid.mtime(), 1_700_000_000);

    // Unpacked once: a second call finds the tree and leaves it alone.
    fs::write(root.join("marker"), b"").unwrap();
    assert_eq!(store.unpack(&image).unwrap(), root);
    assert!(root.join("marker").exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("unpacked"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != root.file_name().unwrap())
        .collect();
    assert!(leftovers.is_empty(), "no temporary directory left: {leftovers:?}");
}

#[test]
fn a_corrupted_blob_is_refused_and_nothing_is_left_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    three_layer_image(&layouts);
    let store = ImageStore::new(&layouts, dir.path().join("unpacked"));
    let image = store.resolve("registry.k8s.io/tools:1.0").unwrap();
    let top = image.manifest.layers()[2].digest().to_string();
    let blob = layouts.join("tools/blobs/sha256").join(top.trim_start_matches("sha256:"));
    fs::write(&blob, b"tampered").unwrap();
    match store.unpack(&image) {
        Err(UnpackError::DigestMismatch { path, expected, .. }) => assert_eq!((path, expected), (blob, top)),
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(fs::read_dir(dir.path().join("unpacked")).unwrap().count(), 0);

    // A tampered manifest is caught when resolving.
    let manifest = layouts.join("tools/blobs/sha256").join(image.manifest_digest.trim_start_matches("sha256:"));
    fs::write(&manifest, b"{}").unwrap();
    assert!(
        matches!(store.resolve("registry.k8s.io/tools:1.0"), Err(ResolveError::DigestMismatch { path, .. }) if path == manifest)
    );
}

#[test]
fn layers_that_reach_outside_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", tar(&[Entry::File("../escaped", b"x", 0o644)]), "contains '..'"),
        ("nested-dotdot", tar(&[Entry::File("a/../../escaped", b"x", 0o644)]), "contains '..'"),
        ("absolute", tar(&[Entry::File("/escaped", b"x", 0o644)]), "is an absolute path"),
        (
            "through-symlink",
            tar(&[Entry::Symlink("link", outside.to_str().unwrap()), Entry::File("link/escaped", b"x", 0o644)]),
            "a parent directory is a symlink",
        ),
        ("hardlink-out", tar(&[Entry::Hardlink("stolen", "../../etc/passwd")]), "contains '..'"),
    ];
    for (name, layer, reason) in cases {
        let root = dir.path().join(name).join("root");
        fs::create_dir_all(&root).unwrap();
        match kelson_containers::store::apply_layer(layer.as_slice(), &root) {
            Err(LayerError::Traversal { reason: got, .. }) => assert_eq!(got, reason, "{name}"),
            other => panic!("{name}: expected Traversal, got {other:?}"),
        }
        assert!(!dir.path().join(name).join("escaped").exists(), "{name}");
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the symlink");

    // Whole image: the unpack fails naming the layer, and leaves nothing behind.
    let layouts = dir.path().join("layouts");
    write_layout(
        &layouts.join("evil"),
        json!({ "io.containerd.image.name": "evil:1" }),
        &[(TAR_GZIP, gzip(&tar(&[Entry::File("../../x", b"x", 0o644)])))],
        json!({}),
    );
    let store = ImageStore::new(&layouts, dir.path().join("unpacked"));
    let image = store.resolve("evil:1").unwrap();
    let err = store.unpack(&image).unwrap_err();
    assert!(err.to_string().contains("docker.io/library/evil:1") && err.to_string().contains("contains '..'"), "{err}");
    assert_eq!(fs::read_dir(dir.path().join("unpacked")).unwrap().count(), 0);
}

#[test]
fn an_unknown_layer_media_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = dir.path().join("layouts");
    write_layout(
        &layouts.join("odd"),
        json!({ "io.containerd.image.name": "odd:1" }),
        &[("application/x-rar", vec![1, 2, 3])],
        json!({}),
    );
    let store = ImageStore::new(&layouts, dir.path().join("unpacked"));
    let err = store.unpack(&store.resolve("odd:1").unwrap()).unwrap_err();
    assert!(matches!(&err, UnpackError::MediaType { media_type, .. } if media_type == "application/x-rar"), "{err}");
}
