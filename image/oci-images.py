#!/usr/bin/python3
"""Builds the OCI image layouts the node's image store serves, from the
Debian packages installed in the image root.

    oci-images.py ROOT OUT

ROOT is the image's build root (mkosi's $BUILDROOT) with etcd-server,
busybox-static and catatonit installed (and etcd-client, if etcdctl is
wanted), and the Kubernetes multi-call binary at /usr/bin/kubernetes; OUT
receives one OCI image layout per image (OUT/etcd, OUT/busybox, OUT/pause,
OUT/kubernetes),
each in the form kelson-containers' ImageStore reads: `oci-layout`,
`index.json` whose manifest descriptors carry the references as
annotations, and `blobs/sha256/`. mkosi.finalize runs it before it deletes
those packages from the root (the node only runs them inside containers);
the host test
services/containers/tests/node_images.rs runs it on a small fake root and
resolves and unpacks the result with the real store.

The output is byte-for-byte reproducible: tar entries are sorted, owned by
0:0 and dated 0, and JSON is written with sorted keys, so an unchanged
package set gives unchanged digests (and the unpack cache on a node keyed by
manifest digest stays valid across image rebuilds).

Python's standard library only: python3 is in the tools tree mkosi runs
this in, and JSON and digests are easier to get right here than in shell.
"""

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
# Uncompressed layers: the layouts live in /usr, which is a zstd squashfs,
# so squashfs compresses them (better than gzip would) and the store unpacks
# them without decompressing anything itself.
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where the dynamic loader of a Debian amd64 root looks for libraries.
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib", "lib")

# The accounts the image store resolves `User` names against, and the ones a
# pod's runAsUser most often names.
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


class BuildError(Exception):
    pass


# --- the Debian root --------------------------------------------------------


def package_version(root, package):
    """The installed version of `package` from the root's dpkg status."""
    status = os.path.join(root, "var/lib/dpkg/status")
    try:
        with open(status, encoding="utf-8") as f:
            paragraphs = f.read().split("\n\n")
    except OSError as e:
        raise BuildError(f"reading {status}: {e.strerror}") from e
    for paragraph in paragraphs:
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", paragraph, re.M))
        if fields.get("Package") == package and fields.get("Status", "").endswith(" installed"):
            return fields["Version"]
    raise BuildError(f"{package} is not installed in {root} (add it to image/mkosi.conf's Packages=)")


def package_file(root, package, suffix):
    """The path (absolute, in the root) the package installed ending in `suffix`."""
    for name in (f"{package}.list", f"{package}:amd64.list"):
        listing = os.path.join(root, "var/lib/dpkg/info", name)
        if os.path.exists(listing):
            with open(listing, encoding="utf-8") as f:
                for line in f:
                    path = line.strip()
                    if path.endswith(suffix) and os.path.isfile(os.path.join(root, path.lstrip("/"))):
                        return path
            raise BuildError(f"{package} installed no file ending in {suffix} ({listing})")
    raise BuildError(f"{package} has no file list in {root}/var/lib/dpkg/info: is it installed?")


def tag_of(version):
    """A Debian version as an image tag: no epoch, and the characters a tag
    cannot hold ([A-Za-z0-9_.-] only) as '_' (`1:1.37.0-6+b9` → `1.37.0-6_b9`)."""
    version = version.split(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", version)[:128]


# --- ELF: which libraries a binary loads -------------------------------------


def elf_dependencies(path):
    """(interpreter, [DT_NEEDED names]) of a 64-bit little-endian ELF file;
    (None, []) for a static one. Read from the program headers, which even a
    binary without section headers has, and never by running the binary."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise BuildError(f"{path} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path} is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    interpreter, dynamic, loads = None, None, []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:  # PT_INTERP
            interpreter = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return interpreter, []
    needed, strtab = [], None
    offset, size = dynamic
    for entry in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, entry)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED: an offset into the string table
            needed.append(value)
        elif tag == 5:  # DT_STRTAB: a virtual address
            strtab = value
    if not needed:
        return interpreter, []
    if strtab is None:
        raise BuildError(f"{path}: dynamic section without a string table")
    # The string table is named by address: find the file offset that maps it.
    base = next((off + strtab - vaddr for vaddr, off, filesz in loads if vaddr <= strtab < vaddr + filesz), None)
    if base is None:
        raise BuildError(f"{path}: string table address {strtab:#x} is in no loaded segment")
    names = [data[base + n:data.index(b"\0", base + n)].decode() for n in needed]
    return interpreter, names


# --- staging a root ------------------------------------------------------------


def copy_from_root(root, path, stage):
    """Copies the file at `path` (absolute, inside `root`) to the same place
    in `stage`, recreating every symlink met on the way (`/lib64` →
    `usr/lib64`, the loader's own link) so that the paths a binary names
    work in the image as they do in the root. Symlinks are resolved inside
    `root`, never on the build machine. Returns the file's real path in the
    root, relative."""
    parts = [p for p in path.split("/") if p]
    resolved, hops = [], 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        relative = "/".join(resolved + [part])
        source = os.path.join(root, relative)
        if os.path.islink(source):
            hops += 1
            if hops > 40:
                raise BuildError(f"{path}: too many symlinks in {root}")
            target = os.readlink(source)
            link = os.path.join(stage, relative)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(target, link)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
        else:
            resolved.append(part)
    relative = "/".join(resolved)
    source = os.path.join(root, relative)
    if not os.path.isfile(source):
        raise BuildError(f"{path} is not a file in {root} (resolved to /{relative})")
    destination = os.path.join(stage, relative)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    shutil.copyfile(source, destination)
    os.chmod(destination, 0o755 if os.stat(source).st_mode & 0o111 else 0o644)
    return relative


def copy_with_libraries(root, binary, stage):
    """Copies `binary` and, if it is dynamically linked, its loader and every
    library it loads (transitively), found in the root's library dirs."""
    queue, done = [binary], set()
    while queue:
        path = queue.pop(0)
        real = copy_from_root(root, path, stage)
        if real in done:
            continue
        done.add(real)
        interpreter, needed = elf_dependencies(os.path.join(root, real))
        if interpreter:
            queue.append(interpreter)
        for name in needed:
            found = next((d for d in LIBRARY_DIRS if os.path.exists(os.path.join(root, d, name))), None)
            if found is None:
                raise BuildError(f"{path} needs {name}, which is in none of {', '.join(LIBRARY_DIRS)} under {root}")
            queue.append(f"/{found}/{name}")


def make_dir(stage, path, mode):
    full = os.path.join(stage, path)
    os.makedirs(full, exist_ok=True)
    os.chmod(full, mode)  # exact, whatever the umask (1777 for /tmp)


def write_file(stage, path, text, mode=0o644):
    full = os.path.join(stage, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(full, mode)


def base_root(stage):
    """What every image has: /etc/passwd and /etc/group (the store resolves
    a `User` name through them), a 1777 /tmp (an emptyDir-less pod writes
    there), and the usual top-level directories."""
    for d in ("etc", "usr", "usr/bin", "var"):
        make_dir(stage, d, 0o755)
    make_dir(stage, "tmp", 0o1777)
    make_dir(stage, "root", 0o700)
    write_file(stage, "etc/passwd", PASSWD)
    write_file(stage, "etc/group", GROUP)


# --- the OCI layout ---------------------------------------------------------


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """One OCI image layout being written: blobs named by their digest."""

    def __init__(self, directory):
        self.directory = directory
        self.blobs = os.path.join(directory, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)

    def add_blob(self, data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, digest[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def finish(self, descriptors):
        with open(os.path.join(self.directory, "oci-layout"), "wb") as f:
            f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
        with open(os.path.join(self.directory, "index.json"), "wb") as f:
            f.write(canonical_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": descriptors}))


def layer_tar(stage):
    """The staged tree as a tar: entries sorted by name, owned by 0:0 and
    dated 0 so the same tree always gives the same bytes (and digest)."""

    def normalise(info):
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(stage)):
            # `add` recurses in sorted order and stores symlinks as symlinks.
            tar.add(os.path.join(stage, name), arcname=name, recursive=True, filter=normalise)
    return buffer.getvalue()


def image_descriptors(layout, layer, config, refs, description):
    """Writes the config and manifest blobs of one image over `layer` (a
    descriptor already in the layout) and returns one index descriptor per
    reference. Both annotations carry the full reference: a bare tag in
    `org.opencontainers.image.ref.name` would make the store also answer to
    `docker.io/library/<directory>:<tag>`, a name nobody gave the image."""
    config_blob = layout.add_blob(
        canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ),
        CONFIG_TYPE,
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_blob,
        "layers": [layer],
        "annotations": {"org.opencontainers.image.description": description},
    }
    manifest_blob = layout.add_blob(canonical_json(manifest), MANIFEST_TYPE)
    return [
        dict(
            manifest_blob,
            platform={"architecture": "amd64", "os": "linux"},
            annotations={"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref},
        )
        for ref in refs
    ]


# --- the images -------------------------------------------------------------

# The references each image answers to. The `kelson.dev/...:<Debian version>`
# names say exactly what is inside; the others are the names manifests use.
ETCD_REFS = [
    # kubeadm's static pod manifest (Kubernetes 1.31/1.32) names this tag;
    # Debian trixie ships etcd 3.5.16 itself.
    "registry.k8s.io/etcd:3.5.16-0",
]
BUSYBOX_REFS = [
    "docker.io/library/busybox:latest",  # also `busybox`, `busybox:latest`
    "docker.io/library/busybox:test",  # `busybox:test`
    "docker.io/kelson/busybox:test",  # the name the QEMU tests import into containerd
]
# containerd's sandbox_image (the CRI config Kelson writes).
PAUSE_REFS = ["registry.k8s.io/pause:3.9"]
# Where `cargo xtask image` puts the pinned Kubernetes build's multi-call
# binary in the root, and the programs the control-plane image answers for.
KUBERNETES_BINARY = "/usr/bin/kubernetes"
CONTROL_PLANE_PROGRAMS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
IMAGES = ("etcd", "busybox", "pause", "kubernetes")


def build_etcd(root, out, work):
    version = package_version(root, "etcd-server")
    stage = os.path.join(work, "etcd")
    base_root(stage)
    copy_with_libraries(root, package_file(root, "etcd-server", "/bin/etcd"), stage)
    # etcdctl for maintenance inside the pod (`kubectl exec etcd-… --
    # etcdctl …`), only if the image installs etcd-client: it is as big as
    # etcd (~6 MiB more initrd, 20 MB more per unpack) and kubeadm's etcd
    # probes are HTTP (/health on the metrics port), not etcdctl.
    tools = ["etcd"]
    try:
        client_version = package_version(root, "etcd-client")
    except BuildError:
        client_version = None
    if client_version is not None:
        copy_with_libraries(root, package_file(root, "etcd-client", "/bin/etcdctl"), stage)
        tools.append("etcdctl")
    # registry.k8s.io's image has its binaries in /usr/local/bin; manifests
    # written for it may name that path.
    make_dir(stage, "usr/local/bin", 0o755)
    for tool in tools:
        if not os.path.exists(os.path.join(stage, "usr/bin", tool)):
            raise BuildError(f"etcd image: {tool} did not land in /usr/bin")
        os.symlink(f"../../bin/{tool}", os.path.join(stage, "usr/local/bin", tool))
    make_dir(stage, "var/lib", 0o755)
    # etcd refuses to start on a data directory others can read.
    make_dir(stage, "var/lib/etcd", 0o700)
    layout = Layout(os.path.join(out, "etcd"))
    layer = layout.add_blob(layer_tar(stage), LAYER_TYPE)
    descriptors = image_descriptors(
        layout,
        layer,
        {"Entrypoint": ["/usr/bin/etcd"], "Env": [PATH_ENV]},
        ETCD_REFS + [f"kelson.dev/etcd:{tag_of(version)}"],
        f"etcd from Debian etcd-server {version}" + (f" and etcd-client {client_version}" if client_version else ""),
    )
    layout.finish(descriptors)


def busybox_layer(root, work):
    """The busybox root: the static binary in /bin and a symlink per
    applet, as `busybox --install -s` would make them."""
    binary = package_file(root, "busybox-static", "/bin/busybox")
    _interpreter, needed = elf_dependencies(os.path.join(root, binary.lstrip("/")))
    if needed:
        raise BuildError(f"{binary} from busybox-static is dynamically linked (needs {', '.join(needed)})")
    stage = os.path.join(work, "busybox")
    base_root(stage)
    make_dir(stage, "bin", 0o755)
    destination = os.path.join(stage, "bin/busybox")
    shutil.copyfile(os.path.join(root, binary.lstrip("/")), destination)
    os.chmod(destination, 0o755)
    # Static, so it runs here too; its own list is the exact applet set.
    listed = subprocess.run([os.path.join(root, binary.lstrip("/")), "--list"], capture_output=True, text=True)
    applets = sorted(set(listed.stdout.split()) - {"busybox"})
    if listed.returncode != 0 or not {"sh", "sleep"} <= set(applets):
        raise BuildError(f"{binary} --list gave no usable applet list (status {listed.returncode}): {listed.stderr.strip()}")
    for applet in applets:
        if "/" in applet or applet in (".", ".."):
            raise BuildError(f"{binary} --list named a strange applet {applet!r}")
        os.symlink("busybox", os.path.join(stage, "bin", applet))
    return layer_tar(stage)


def build_busybox(root, out, work):
    version = package_version(root, "busybox-static")
    tar = busybox_layer(root, work)
    busybox = Layout(os.path.join(out, "busybox"))
    layer = busybox.add_blob(tar, LAYER_TYPE)
    busybox.finish(
        image_descriptors(
            busybox,
            layer,
            {"Cmd": ["sh"], "Env": [PATH_ENV]},
            BUSYBOX_REFS + [f"kelson.dev/busybox:{tag_of(version)}"],
            f"busybox from Debian busybox-static {version}",
        )
    )


def single_layer_image(out, name, stage, config, refs, description):
    """Writes the layout OUT/NAME: one image of the staged tree as its one
    layer, answering to `refs`."""
    layout = Layout(os.path.join(out, name))
    layer = layout.add_blob(layer_tar(stage), LAYER_TYPE)
    layout.finish(image_descriptors(layout, layer, config, refs, description))


def build_pause(root, out, work):
    """The pause image: Debian's catatonit in pause mode (`-P`), which
    sleeps as the sandbox's PID 1 and exits on SIGTERM/SIGINT as upstream's
    pause does."""
    version = package_version(root, "catatonit")
    stage = os.path.join(work, "pause")
    base_root(stage)
    binary = package_file(root, "catatonit", "/catatonit")
    copy_with_libraries(root, binary, stage)
    single_layer_image(
        out,
        "pause",
        stage,
        {"Entrypoint": [binary, "-P"], "Env": [PATH_ENV]},
        PAUSE_REFS + [f"kelson.dev/pause:{tag_of(version)}"],
        f"catatonit -P from Debian catatonit {version}",
    )


def kubernetes_version(binary, work):
    """`Kubernetes v1.36.3` → `v1.36.3`, asked of the multi-call binary
    itself (run through a link named kube-apiserver: it picks the program by
    its name). The binary is static, so it runs on the build machine."""
    link = os.path.join(work, "kube-apiserver")
    os.symlink(binary, link)
    result = subprocess.run([link, "--version"], capture_output=True, text=True)
    words = result.stdout.split()
    if result.returncode != 0 or len(words) != 2 or words[0] != "Kubernetes" or not words[1].startswith("v1."):
        raise BuildError(f"{binary}: kube-apiserver --version said {result.stdout.strip()!r} {result.stderr.strip()!r}")
    return words[1]


def build_control_plane(root, out, work):
    """One image, answering to registry.k8s.io/kube-apiserver,
    …/kube-controller-manager and …/kube-scheduler at the pinned version:
    the multi-call binary in /usr/local/bin (where upstream's images keep
    their program) with a link per program. One manifest rather than three
    over a shared layer, because the node's store unpacks per manifest:
    three would put the ~139 MB binary on /var three times. With no
    entrypoint, a manifest names its program in `command`, as kubeadm's
    do."""
    binary = os.path.join(root, KUBERNETES_BINARY.lstrip("/"))
    if not os.path.isfile(binary):
        raise BuildError(f"{KUBERNETES_BINARY} is not in {root} (cargo xtask image puts the pinned build there)")
    version = kubernetes_version(binary, work)
    stage = os.path.join(work, "control-plane")
    base_root(stage)
    make_dir(stage, "usr/local", 0o755)
    make_dir(stage, "usr/local/bin", 0o755)
    shutil.copyfile(binary, os.path.join(stage, "usr/local/bin/kubernetes"))
    os.chmod(os.path.join(stage, "usr/local/bin/kubernetes"), 0o755)
    for program in CONTROL_PLANE_PROGRAMS:
        os.symlink("kubernetes", os.path.join(stage, "usr/local/bin", program))
    single_layer_image(
        out,
        "kubernetes",
        stage,
        {"Env": [PATH_ENV]},
        [f"registry.k8s.io/{program}:{version}" for program in CONTROL_PLANE_PROGRAMS],
        f"Kubernetes {version} control plane ({', '.join(CONTROL_PLANE_PROGRAMS)}), one multi-call binary",
    )


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} ROOT OUT", file=sys.stderr)
        return 2
    root, out = argv[1], argv[2]
    os.makedirs(out, exist_ok=True)
    for name in IMAGES:
        if os.path.exists(os.path.join(out, name)):
            shutil.rmtree(os.path.join(out, name))
    # The staging trees are thrown away; only the layouts stay. They sit
    # beside the output (the build root's disk) rather than in the build
    # sandbox's /tmp, which may be RAM: etcd alone stages ~60 MB.
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out) as work:
        try:
            build_etcd(root, out, work)
            build_busybox(root, out, work)
            build_pause(root, out, work)
            build_control_plane(root, out, work)
        except (BuildError, OSError) as e:
            print(f"oci-images.py: {e}", file=sys.stderr)
            return 1
    for name in IMAGES:
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(out, name)) for f in files)
        print(f"oci-images.py: {out}/{name}: {size / 1048576:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
