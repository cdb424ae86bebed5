//! Booting a guest under QEMU (TCG) and talking to it: console log,
//! QMP monitor and the in-guest agent.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Guest paths (as [`Layer::paths`] gives them) of test hooks.
const TEST_HOOKS_PREFIX: &str = "kelson-test/hooks/";
/// What PID 1 needs on its command line to run test hooks.
pub const TEST_HOOKS_KEY: &str = "kelson.test.hooks=1";
/// Debian's OVMF (package ovmf): the firmware code and the variable store
/// each VM gets a copy of.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

use crate::agent::{Agent, AgentOutput};
use crate::cpio::Layer;
use crate::image::ImagePaths;
use crate::qmp::Qmp;

/// How often [`Vm::expect`] and [`Vm::wait_exit`] look at the guest.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Console lines shown in errors.
const TAIL_LINES: usize = 40;
/// How long QEMU gets to create its sockets after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Image format of an extra disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Clone, Debug)]
struct Disk {
    path: PathBuf,
    format: DiskFormat,
}

#[derive(Clone, Debug)]
enum NicMode {
    Listen(u16),
    Connect(u16),
    Mcast(u16),
}

#[derive(Clone, Debug)]
struct Nic {
    mode: NicMode,
    mac: String,
}

/// Describes a VM; [`VmBuilder::boot`] starts it.
///
/// Every VM gets its own temporary directory holding the console log, the
/// QMP and agent sockets and the assembled initrd, so any number of VMs can
/// run at once. The guest has no network unless a socket NIC is added, and
/// those only reach other QEMU processes over 127.0.0.1.
#[derive(Clone, Debug)]
pub struct VmBuilder {
    qemu: PathBuf,
    name: String,
    /// `None`: the firmware boots from the disks (see [`VmBuilder::firmware`]).
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    layers: Vec<Layer>,
    cmdline: Vec<String>,
    memory_mib: u32,
    smp: u32,
    disks: Vec<Disk>,
    uuid: Option<String>,
    reboot_allowed: bool,
    nics: Vec<Nic>,
    extra_args: Vec<OsString>,
    hooks_key: bool,
    /// Host CPUs QEMU may run on; `None`: wherever the scheduler puts it.
    host_cpus: Option<Vec<usize>>,
}

impl VmBuilder {
    /// A VM booting `kernel` directly (`-kernel`), with no initrd yet,
    /// 1024 MiB, one CPU, no disks, no network and `-no-reboot`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            name: "vm".to_owned(),
            kernel: Some(kernel.into()),
            initrd: None,
            layers: Vec::new(),
            cmdline: Vec::new(),
            memory_mib: 1024,
            smp: 1,
            disks: Vec::new(),
            uuid: None,
            reboot_allowed: false,
            nics: Vec::new(),
            extra_args: Vec::new(),
            hooks_key: true,
            host_cpus: None,
        }
    }

    /// A VM whose firmware boots from its disks (a disk image's own boot
    /// loader and UKI): no kernel, initrd, layers or command line of the
    /// harness's. Give it the firmware with [`VmBuilder::qemu_args`].
    pub fn firmware() -> Self {
        Self { kernel: None, ..Self::new("") }
    }

    /// Debian's OVMF as the firmware: its code read-only, and a fresh copy
    /// of its variable store in `dir` (the VM's own, so boot entries and
    /// counters do not leak between VMs).
    pub fn ovmf(self, dir: &Path) -> Result<Self> {
        let vars = dir.join("vars.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copying the OVMF variable store {OVMF_VARS} (package ovmf)"))?;
        Ok(self
            .qemu_args(["-drive".to_owned(), format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")])
            .qemu_arg("-drive")
            .qemu_arg(keyval("if=pflash,format=raw,file=", &vars)))
    }

    /// A VM booting the image's kernel and initrd.
    pub fn from_image(image: &ImagePaths) -> Self {
        Self::new(&image.kernel).initrd(&image.initrd)
    }

    /// The QEMU binary (default `qemu-system-x86_64` from `PATH`).
    pub fn qemu_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu = path.into();
        self
    }

    /// A short name used in the temp dir's name and in error messages.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// The base initrd; layers are appended after it.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Appends an initramfs layer (after the base initrd and any earlier
    /// layers, so its entries win).
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Appends a word to the kernel command line. The command line always
    /// starts with `console=ttyS0 panic=-1` (a panic reboots, which with
    /// `-no-reboot` ends QEMU so tests fail fast instead of timing out).
    /// A firmware boot's UKI gets the words through the SMBIOS string
    /// systemd-stub appends to its command line.
    pub fn append(mut self, arg: &str) -> Self {
        self.cmdline.push(arg.to_owned());
        self
    }

    /// Leaves `kelson.test.hooks=1` off the command line even when a layer
    /// carries test hooks, to check that PID 1 then ignores them.
    pub fn without_test_hooks_key(mut self) -> Self {
        self.hooks_key = false;
        self
    }

    /// Whether some layer puts a file under `/kelson-test/hooks/`.
    fn layers_carry_hooks(&self) -> bool {
        self.layers.iter().any(|l| l.paths().any(|p| p.starts_with(TEST_HOOKS_PREFIX)))
    }

    /// Guest memory in MiB (default 1024).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of virtual CPUs (default 1).
    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus;
        self
    }

    /// A raw disk image as a virtio-blk disk.
    pub fn disk(self, path: impl Into<PathBuf>) -> Self {
        self.disk_with_format(path, DiskFormat::Raw)
    }

    /// A qcow2 disk image as a virtio-blk disk.
    pub fn disk_qcow2(self, path: impl Into<PathBuf>) -> Self {
        self.disk_with_format(path, DiskFormat::Qcow2)
    }

    /// A virtio-blk disk; disks appear in the guest in the order added.
    pub fn disk_with_format(mut self, path: impl Into<PathBuf>, format: DiskFormat) -> Self {
        self.disks.push(Disk { path: path.into(), format });
        self
    }

    /// The SMBIOS system UUID (`-uuid`), e.g. to give a node a stable id.
    pub fn uuid(mut self, uuid: &str) -> Self {
        self.uuid = Some(uuid.to_owned());
        self
    }

    /// Whether a guest reboot restarts the guest (true) or ends QEMU
    /// (false, the default: `-no-reboot`).
    pub fn reboot_allowed(mut self, allowed: bool) -> Self {
        self.reboot_allowed = allowed;
        self
    }

    /// Keeps QEMU (every thread of it) on these host CPUs, so a benchmark can
    /// give the emulator CPUs its own load generator does not use.
    pub fn host_cpus(mut self, cpus: &[usize]) -> Self {
        self.host_cpus = Some(cpus.to_vec());
        self
    }

    /// A virtio-net NIC on a socket network whose QEMU side listens on
    /// 127.0.0.1:`port` (TCP). Another VM joins with
    /// [`VmBuilder::socket_nic_connect`] on the same port.
    pub fn socket_nic_listen(mut self, port: u16, mac: &str) -> Self {
        self.nics.push(Nic { mode: NicMode::Listen(port), mac: mac.to_owned() });
        self
    }

    /// A virtio-net NIC connecting to a VM that listens on 127.0.0.1:`port`.
    /// The listening VM must have been booted first.
    pub fn socket_nic_connect(mut self, port: u16, mac: &str) -> Self {
        self.nics.push(Nic { mode: NicMode::Connect(port), mac: mac.to_owned() });
        self
    }

    /// A virtio-net NIC on a UDP multicast socket network
    /// (`mcast=230.0.0.1:port,localaddr=127.0.0.1`): every VM on the same
    /// port shares one segment, with no listen/connect order.
    pub fn socket_nic_mcast(mut self, port: u16, mac: &str) -> Self {
        self.nics.push(Nic { mode: NicMode::Mcast(port), mac: mac.to_owned() });
        self
    }

    /// A raw QEMU argument, added after the harness's own.
    pub fn qemu_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Several raw QEMU arguments.
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The kernel command line the guest will get. When a layer carries
    /// test hooks, `kelson.test.hooks=1` comes right after the fixed words
    /// (PID 1 runs hooks only with it), unless
    /// [`without_test_hooks_key`](Self::without_test_hooks_key) was asked.
    pub fn kernel_cmdline(&self) -> String {
        let mut words = vec!["console=ttyS0".to_owned(), "panic=-1".to_owned()];
        if self.hooks_key && self.layers_carry_hooks() {
            words.push(TEST_HOOKS_KEY.to_owned());
        }
        words.extend(self.cmdline.iter().cloned());
        words.join(" ")
    }

    /// The QEMU arguments for a VM whose files live in `dir`, and whose
    /// assembled initrd (if any) is `initrd`.
    pub fn qemu_command_args(&self, dir: &Path, initrd: Option<&Path>) -> Result<Vec<OsString>> {
        let files = VmFiles::new(dir);
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&OsStr]| a.extend(parts.iter().map(|p| p.to_os_string()));
        push(&[
            "-machine".as_ref(),
            "q35".as_ref(),
            "-accel".as_ref(),
            "tcg".as_ref(),
            "-cpu".as_ref(),
            "max".as_ref(),
            "-nodefaults".as_ref(),
            "-no-user-config".as_ref(),
            "-display".as_ref(),
            "none".as_ref(),
            "-nic".as_ref(),
            "none".as_ref(),
        ]);
        let mem = format!("{}M", self.memory_mib);
        let smp = self.smp.to_string();
        push(&["-m".as_ref(), mem.as_ref(), "-smp".as_ref(), smp.as_ref()]);
        if !self.reboot_allowed {
            push(&["-no-reboot".as_ref()]);
        }
        if let Some(uuid) = &self.uuid {
            check_uuid(uuid)?;
            push(&["-uuid".as_ref(), uuid.as_ref()]);
        }
        // Serial 0: the console, into a file. Serial 1: the agent.
        let con = keyval("file,id=con0,path=", &files.console);
        let agent = keyval_suffix("socket,id=agent,path=", &files.agent, ",server=on,wait=off");
        let qmp = keyval_suffix("socket,id=qmp,path=", &files.qmp, ",server=on,wait=off");
        push(&[
            "-chardev".as_ref(),
            &con,
            "-serial".as_ref(),
            "chardev:con0".as_ref(),
            "-chardev".as_ref(),
            &agent,
            "-serial".as_ref(),
            "chardev:agent".as_ref(),
            "-chardev".as_ref(),
            &qmp,
            "-mon".as_ref(),
            "chardev=qmp,mode=control".as_ref(),
        ]);
        if let Some(kernel) = &self.kernel {
            push(&["-kernel".as_ref(), kernel.as_os_str()]);
            if let Some(initrd) = initrd {
                push(&["-initrd".as_ref(), initrd.as_os_str()]);
            }
            let cmdline = self.kernel_cmdline();
            push(&["-append".as_ref(), cmdline.as_ref()]);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let drive =
                keyval_suffix("file=", &disk.path, &format!(",if=virtio,format={},index={i}", disk.format.as_str()));
            push(&["-drive".as_ref(), &drive]);
        }
        // A disk image's UKI carries its own initrd and command line: test
        // layers reach it as a disk PID 1 unpacks (kelson_init::hooks), and
        // the hooks key through the SMBIOS string systemd-stub appends to
        // the command line.
        if self.kernel.is_none() {
            // systemd-stub takes the first such string only: one for all.
            let mut extra = Vec::new();
            if !self.layers.is_empty() {
                let drive = keyval_suffix("file=", &files.layer_disk, ",if=none,format=raw,readonly=on,id=layer");
                let device = "virtio-blk-pci,drive=layer,serial=kelson-test-layer";
                push(&["-drive".as_ref(), &drive, "-device".as_ref(), device.as_ref()]);
                if self.hooks_key && self.layers_carry_hooks() {
                    extra.push(TEST_HOOKS_KEY.to_owned());
                }
            }
            // What `append` adds reaches a UKI's command line the same way.
            extra.extend(self.cmdline.iter().cloned());
            if !extra.is_empty() {
                let smbios = format!("type=11,value=io.systemd.stub.kernel-cmdline-extra={}", extra.join(" "));
                push(&["-smbios".as_ref(), smbios.as_ref()]);
            }
        }
        for (i, nic) in self.nics.iter().enumerate() {
            check_mac(&nic.mac)?;
            let netdev = match nic.mode {
                NicMode::Listen(port) => format!("socket,id=n{i},listen=127.0.0.1:{port}"),
                NicMode::Connect(port) => format!("socket,id=n{i},connect=127.0.0.1:{port}"),
                NicMode::Mcast(port) => {
                    format!("socket,id=n{i},mcast=230.0.0.1:{port},localaddr=127.0.0.1")
                }
            };
            let device = format!("virtio-net-pci,netdev=n{i},mac={}", nic.mac);
            push(&["-netdev".as_ref(), netdev.as_ref(), "-device".as_ref(), device.as_ref()]);
        }
        a.extend(self.extra_args.iter().cloned());
        Ok(a)
    }

    /// Assembles the initrd, starts QEMU and waits until it answers on QMP
    /// (so bad arguments fail here, with QEMU's message, and a listening
    /// socket NIC is ready when this returns).
    ///
    /// QEMU gets `PR_SET_PDEATHSIG(SIGKILL)`: it is killed when the thread
    /// that called `boot` exits. Boot a VM in the thread that uses it (a
    /// test's own thread), not in a short-lived helper thread.
    pub fn boot(&self) -> Result<Vm> {
        let what = match &self.kernel {
            Some(kernel) => format!("VM {:?} (kernel {})", self.name, kernel.display()),
            None => format!("VM {:?} (booted by its firmware)", self.name),
        };
        self.boot_inner().with_context(|| format!("booting {what}"))
    }

    fn boot_inner(&self) -> Result<Vm> {
        match &self.kernel {
            Some(kernel) if !kernel.is_file() => bail!("kernel {} does not exist", kernel.display()),
            Some(_) => {}
            // Its UKI carries its own initrd; `append`'s words reach it
            // through the SMBIOS string systemd-stub adds to its command line.
            None if self.initrd.is_some() => bail!("a VM booted by its firmware takes no initrd from the harness"),
            None => {}
        }
        let prefix = format!("kelson-vm-{}-", sanitize(&self.name));
        let dir =
            tempfile::Builder::new().prefix(&prefix).tempdir().context("creating the VM's temporary directory")?;
        let files = VmFiles::new(dir.path());
        for sock in [&files.agent, &files.qmp] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "socket path {} is too long for a unix socket; set TMPDIR to a shorter directory",
                    sock.display()
                );
            }
        }

        let initrd = if self.kernel.is_some() && (self.initrd.is_some() || !self.layers.is_empty()) {
            self.write_initrd(&files.initrd)?;
            Some(files.initrd.as_path())
        } else {
            None
        };
        if self.kernel.is_none() && !self.layers.is_empty() {
            self.write_layer_disk(&files.layer_disk)?;
        }

        let args = self.qemu_command_args(dir.path(), initrd)?;
        let mut cmdline_file =
            File::create(&files.cmdline).with_context(|| format!("creating {}", files.cmdline.display()))?;
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        writeln!(cmdline_file, "{} {}", self.qemu.display(), shown.join(" "))
            .with_context(|| format!("writing {}", files.cmdline.display()))?;

        let stdout = File::create(&files.stdout).with_context(|| format!("creating {}", files.stdout.display()))?;
        let stderr = File::create(&files.stderr).with_context(|| format!("creating {}", files.stderr.display()))?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let parent = std::process::id();
        // Built here: the child may not allocate.
        let affinity = match &self.host_cpus {
            Some(cpus) => {
                let mut set = nix::sched::CpuSet::new();
                for &cpu in cpus {
                    set.set(cpu).with_context(|| format!("host CPU {cpu} for QEMU's affinity"))?;
                }
                Some(set)
            }
            None => None,
        };
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed. It makes plain syscalls
        // (sched_setaffinity, prctl(PR_SET_PDEATHSIG) and getppid) and
        // builds an io::Error from a raw errno, which does not allocate.
        // Nothing is locked or allocated.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(set) = &affinity {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set)
                        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                }
                // Kill QEMU if the thread that started it dies, so a killed
                // or crashed test runner leaves no VM behind.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                // The parent may have died before the prctl took effect.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", self.qemu.display()))?;

        let mut vm = Vm {
            name: self.name.clone(),
            child,
            files,
            console: Vec::new(),
            console_read: 0,
            cursor: 0,
            qmp: None,
            agent: None,
            started: Instant::now(),
            dir,
        };
        vm.wait_for_sockets()?;
        // QEMU answers QMP only from its main loop, i.e. once every device
        // and netdev exists: after this a socket NIC that listens is ready
        // for a VM that connects to it.
        vm.qmp("query-status", None).context("waiting for QEMU to finish starting")?;
        Ok(vm)
    }

    /// The layers of a firmware-booted VM, merged into one tar archive for
    /// its layer disk.
    fn write_layer_disk(&self, path: &Path) -> Result<()> {
        let merged = self.layers.iter().cloned().fold(Layer::new(), Layer::merge);
        let bytes = merged.to_tar().context("encoding the test layer disk")?;
        std::fs::write(path, bytes).with_context(|| format!("writing the test layer disk {}", path.display()))
    }

    fn write_initrd(&self, path: &Path) -> Result<()> {
        let mut out = File::create(path).with_context(|| format!("creating initrd {}", path.display()))?;
        let mut len: u64 = 0;
        if let Some(base) = &self.initrd {
            let mut f = File::open(base).with_context(|| format!("opening base initrd {}", base.display()))?;
            len = std::io::copy(&mut f, &mut out)
                .with_context(|| format!("copying base initrd {} into {}", base.display(), path.display()))?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            // The kernel only looks for a cpio header at 4-byte aligned
            // offsets after a compressed archive; zeros in between are
            // skipped.
            let pad = (4 - (len % 4)) % 4;
            out.write_all(&[0u8; 3][..pad as usize]).with_context(|| format!("padding initrd {}", path.display()))?;
            let bytes = layer.to_bytes().with_context(|| format!("encoding initramfs layer #{i}"))?;
            out.write_all(&bytes).with_context(|| format!("appending layer #{i} to initrd {}", path.display()))?;
            len += pad + bytes.len() as u64;
        }
        out.flush().with_context(|| format!("writing initrd {}", path.display()))
    }
}

/// Paths of a VM's files inside its temporary directory.
#[derive(Clone, Debug)]
struct VmFiles {
    console: PathBuf,
    agent: PathBuf,
    qmp: PathBuf,
    initrd: PathBuf,
    /// A firmware-booted VM's test layer, as a disk.
    layer_disk: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    cmdline: PathBuf,
}

impl VmFiles {
    fn new(dir: &Path) -> Self {
        Self {
            console: dir.join("console.log"),
            agent: dir.join("agent.sock"),
            qmp: dir.join("qmp.sock"),
            initrd: dir.join("initrd.img"),
            layer_disk: dir.join("layer.tar"),
            stdout: dir.join("qemu.stdout"),
            stderr: dir.join("qemu.stderr"),
            cmdline: dir.join("qemu.cmdline"),
        }
    }
}

/// A running (or exited) QEMU guest. Dropping it kills QEMU.
pub struct Vm {
    name: String,
    child: Child,
    files: VmFiles,
    /// Console bytes read so far.
    console: Vec<u8>,
    /// File offset up to which `console` holds the log.
    console_read: u64,
    /// Offset in `console` after the last line [`Vm::expect`] matched.
    cursor: usize,
    qmp: Option<Qmp>,
    agent: Option<Agent>,
    started: Instant,
    // Last: dropped after QEMU has been killed in `Drop::drop`.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// The name given to [`VmBuilder::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The VM's temporary directory (removed when the `Vm` is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The console log file (serial port 0).
    pub fn console_path(&self) -> &Path {
        &self.files.console
    }

    /// The whole console log so far.
    pub fn console_text(&self) -> Result<String> {
        match std::fs::read(&self.files.console) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("reading console log {}", self.files.console.display())),
        }
    }

    /// Waits until a console line containing `needle` appears after the
    /// read cursor, returns it (without the line ending) and moves the
    /// cursor past it, so the same text can be awaited again (e.g. after a
    /// reboot). Only whole lines are matched, except for a last unfinished
    /// line once QEMU has exited. Fails at once if QEMU exits first.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            self.read_console()?;
            if let Some(line) = self.match_line(needle, false) {
                return Ok(line);
            }
            if let Some(status) = self.exit_status()? {
                self.read_console()?;
                if let Some(line) = self.match_line(needle, true) {
                    return Ok(line);
                }
                bail!(
                    "QEMU of VM {:?} exited ({status}) after {:.1?} while waiting for a console \
                     line containing {needle:?}{}{}",
                    self.name,
                    start.elapsed(),
                    self.stderr_report(),
                    self.console_report()
                );
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                bail!(
                    "VM {:?}: no console line containing {needle:?} after {elapsed:.1?} \
                     (timeout {timeout:?}){}",
                    self.name,
                    self.console_report()
                );
            }
            std::thread::sleep(POLL_INTERVAL.min(timeout - elapsed));
        }
    }

    /// Runs `shell_cmd` in the guest through the agent (see
    /// [`crate::guest_layer_with_agent`]) and returns its status and
    /// combined output. The first call connects to the agent and waits for
    /// the guest shell to answer; `timeout` covers that wait too.
    ///
    /// Each command runs in its own subshell with stdin from `/dev/null`:
    /// `cd`, variables and `exit` do not carry over to the next command.
    pub fn agent_exec(&mut self, shell_cmd: &str, timeout: Duration) -> Result<AgentOutput> {
        let deadline = Instant::now() + timeout;
        let result = (|| {
            if self.agent.is_none() {
                self.agent = Some(Agent::connect(&self.files.agent, deadline)?);
            }
            match self.agent.as_mut() {
                Some(agent) => agent.exec(shell_cmd, deadline.saturating_duration_since(Instant::now())),
                None => bail!("agent connection missing"),
            }
        })();
        match result {
            Ok(out) => Ok(out),
            Err(e) => {
                // The stream may be out of step now; the next call
                // reconnects and resynchronises.
                self.agent = None;
                let exited = match self.exit_status() {
                    Ok(Some(status)) => format!(" (QEMU has exited: {status})"),
                    _ => String::new(),
                };
                Err(e).with_context(|| {
                    format!(
                        "running {shell_cmd:?} in VM {:?} through the agent{exited}{}",
                        self.name,
                        self.console_report()
                    )
                })
            }
        }
    }

    /// Forgets the agent connection, so the next [`Vm::agent_exec`]
    /// reconnects and waits for a guest shell again. Call it after the
    /// guest rebooted: the host side of the socket survives a reboot, but
    /// the shell it talked to does not.
    pub fn reset_agent(&mut self) {
        self.agent = None;
    }

    /// Sends a QMP command and returns its `return` value.
    pub fn qmp(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        if self.qmp.is_none() {
            let qmp = Qmp::connect(&self.files.qmp)
                .with_context(|| format!("connecting to the QMP monitor of VM {:?}", self.name))?;
            self.qmp = Some(qmp);
        }
        match self.qmp.as_mut() {
            Some(qmp) => {
                qmp.execute(command, arguments).with_context(|| format!("QMP command {command} on VM {:?}", self.name))
            }
            None => bail!("QMP connection missing"),
        }
    }

    /// Presses the ACPI power button (`system_powerdown`).
    pub fn system_powerdown(&mut self) -> Result<()> {
        self.qmp("system_powerdown", None).map(drop)
    }

    /// Presses ctrl-alt-delete on the PS/2 keyboard (QMP `send-key`).
    pub fn send_ctrl_alt_delete(&mut self) -> Result<()> {
        let keys = json!({
            "keys": [
                { "type": "qcode", "data": "ctrl" },
                { "type": "qcode", "data": "alt" },
                { "type": "qcode", "data": "delete" },
            ]
        });
        self.qmp("send-key", Some(keys)).map(drop)
    }

    /// Runs a human monitor (HMP) command, e.g. `info block`, and returns
    /// its text output.
    pub fn hmp(&mut self, command: &str) -> Result<String> {
        let ret = self.qmp("human-monitor-command", Some(json!({ "command-line": command })))?;
        match ret.as_str() {
            Some(s) => Ok(s.to_owned()),
            None => bail!("HMP command {command:?} returned a non-string: {ret}"),
        }
    }

    /// Asks QEMU to quit (QMP `quit`) and waits for it to exit; kills it if
    /// it has not exited within 10 seconds.
    pub fn quit(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        let sent = match self.qmp.as_mut() {
            Some(qmp) => qmp.quit(),
            None => Qmp::connect(&self.files.qmp).and_then(|mut q| q.quit()),
        };
        self.qmp = None;
        sent.with_context(|| format!("sending QMP quit to VM {:?}", self.name))?;
        match self.wait_exit(Duration::from_secs(10)) {
            Ok(status) => Ok(status),
            Err(e) => {
                self.kill()?;
                Err(e).context("QEMU did not exit after QMP quit; killed it")
            }
        }
    }

    /// Waits for QEMU to exit (e.g. after the guest powered off) and
    /// returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                bail!(
                    "VM {:?}: QEMU still running after {elapsed:.1?} (timeout {timeout:?}){}",
                    self.name,
                    self.console_report()
                );
            }
            std::thread::sleep(POLL_INTERVAL.min(timeout - elapsed));
        }
    }

    /// QEMU's exit status if it has exited, without waiting.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("checking whether QEMU of VM {:?} exited", self.name))
    }

    /// Kills QEMU with SIGKILL and reaps it. Harmless if it already exited.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        // Fails only if the process is already gone; `wait` tells.
        let _ = self.child.kill();
        self.child.wait().with_context(|| format!("reaping QEMU of VM {:?} (pid {})", self.name, self.pid()))
    }

    /// Waits for the QMP and agent sockets QEMU creates at startup.
    fn wait_for_sockets(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.files.qmp.exists() && self.files.agent.exists() {
                return Ok(());
            }
            if let Some(status) = self.exit_status()? {
                bail!(
                    "QEMU exited at startup ({status}){}\ncommand: {}",
                    self.stderr_report(),
                    std::fs::read_to_string(&self.files.cmdline).unwrap_or_default()
                );
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "QEMU did not create {} within {STARTUP_TIMEOUT:?}{}",
                    self.files.qmp.display(),
                    self.stderr_report()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Appends newly written console bytes to `self.console`.
    fn read_console(&mut self) -> Result<()> {
        let mut f = match File::open(&self.files.console) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening console log {}", self.files.console.display())),
        };
        f.seek(SeekFrom::Start(self.console_read))
            .and_then(|_| f.read_to_end(&mut self.console))
            .with_context(|| format!("reading console log {}", self.files.console.display()))?;
        self.console_read = self.console.len() as u64;
        Ok(())
    }

    /// Finds the first line after the cursor that contains `needle`.
    fn match_line(&mut self, needle: &str, include_unfinished: bool) -> Option<String> {
        let needle = needle.as_bytes();
        let mut start = self.cursor;
        while start < self.console.len() {
            let rest = &self.console[start..];
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => (&rest[..nl], start + nl + 1),
                None if include_unfinished => (rest, self.console.len()),
                None => return None,
            };
            if needle.is_empty() || line.windows(needle.len()).any(|w| w == needle) {
                self.cursor = next;
                let text = String::from_utf8_lossy(line);
                return Some(text.trim_matches('\r').to_owned());
            }
            start = next;
        }
        None
    }

    /// The last console lines, for error messages.
    fn console_report(&self) -> String {
        let text = self.console_text().unwrap_or_else(|e| format!("<{e:#}>"));
        format!(
            "\n--- last {TAIL_LINES} console lines ({}) ---\n{}\n--- end of console ---",
            self.files.console.display(),
            tail(&text, TAIL_LINES)
        )
    }

    fn stderr_report(&self) -> String {
        match std::fs::read_to_string(&self.files.stderr) {
            Ok(s) if !s.trim().is_empty() => format!("\nQEMU stderr:\n{}", tail(&s, 20)),
            _ => String::new(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("VM {:?} dropped during a panic{}", self.name, self.console_report());
        }
        // Nothing useful can be done about a failure here.
        let _ = self.kill();
        if std::env::var_os("KELSON_KEEP_VM_DIRS").is_some() {
            let kept = self.dir.path().with_extension("kept");
            if std::fs::rename(self.dir.path(), &kept).is_ok() {
                eprintln!("VM {:?}: files kept in {}", self.name, kept.display());
            }
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| l.trim_end_matches('\r')).collect::<Vec<_>>().join("\n")
}

/// `prefix` + path with commas doubled (QEMU's escape in option values).
fn keyval(prefix: &str, path: &Path) -> OsString {
    keyval_suffix(prefix, path, "")
}

fn keyval_suffix(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    OsStr::from_bytes(&bytes).to_os_string()
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(24).collect()
}

fn check_mac(mac: &str) -> Result<()> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        bail!("MAC address {mac:?} is not of the form 52:54:00:12:34:56");
    }
    Ok(())
}

fn check_uuid(uuid: &str) -> Result<()> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let ok = lens == [8, 4, 4, 4, 12] && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        bail!("UUID {uuid:?} is not of the form 01234567-89ab-cdef-0123-456789abcdef");
    }
    Ok(())
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for
/// [`VmBuilder::socket_nic_listen`]. (There is a small window in which
/// another process could take it.)
pub fn free_loopback_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a TCP socket on 127.0.0.1 to find a free port")?;
    Ok(listener.local_addr().context("reading the bound socket's address")?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(b: &VmBuilder) -> Vec<String> {
        b.qemu_command_args(Path::new("/tmp/d"), Some(Path::new("/tmp/d/initrd.img")))
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn default_args() {
        let args = args_of(&VmBuilder::new("/k"));
        for (f, v) in [
            ("-machine", "q35"),
            ("-accel", "tcg"),
            ("-cpu", "max"),
            ("-display", "none"),
            ("-nic", "none"),
            ("-m", "1024M"),
            ("-smp", "1"),
            ("-kernel", "/k"),
            ("-initrd", "/tmp/d/initrd.img"),
            ("-append", "console=ttyS0 panic=-1"),
            ("-chardev", "file,id=con0,path=/tmp/d/console.log"),
            ("-serial", "chardev:con0"),
            ("-chardev", "socket,id=agent,path=/tmp/d/agent.sock,server=on,wait=off"),
            ("-serial", "chardev:agent"),
            ("-chardev", "socket,id=qmp,path=/tmp/d/qmp.sock,server=on,wait=off"),
            ("-mon", "chardev=qmp,mode=control"),
        ] {
            assert!(has_pair(&args, f, v), "{f} {v} missing in {args:?}");
        }
        assert!(args.contains(&"-nodefaults".to_owned()));
        assert!(args.contains(&"-no-user-config".to_owned()));
        assert!(args.contains(&"-no-reboot".to_owned()));
        assert!(!args.iter().any(|a| a.contains("user") && a != "-no-user-config"));
    }

    #[test]
    fn a_layer_with_hooks_enables_them_on_the_command_line() {
        let plain = VmBuilder::new("/k").layer(Layer::new().file("/etc/x", "x", 0o644));
        assert_eq!(plain.kernel_cmdline(), "console=ttyS0 panic=-1");
        let hooks = Layer::new().file("/kelson-test/hooks/50-agent", "#!/bin/sh\n", 0o755);
        let with = VmBuilder::new("/k").layer(hooks.clone()).append("quiet");
        assert_eq!(with.kernel_cmdline(), "console=ttyS0 panic=-1 kelson.test.hooks=1 quiet");
        let without = VmBuilder::new("/k").layer(hooks).without_test_hooks_key();
        assert_eq!(without.kernel_cmdline(), "console=ttyS0 panic=-1");
    }

    #[test]
    fn optional_args() {
        let b = VmBuilder::new("/k")
            .memory_mib(512)
            .smp(2)
            .append("quiet")
            .reboot_allowed(true)
            .uuid("01234567-89ab-cdef-0123-456789abcdef")
            .disk("/img/a,b.raw")
            .disk_qcow2("/img/c.qcow2")
            .socket_nic_listen(4000, "52:54:00:00:00:01")
            .socket_nic_connect(4001, "52:54:00:00:00:02")
            .socket_nic_mcast(4002, "52:54:00:00:00:03")
            .qemu_args(["-device", "virtio-rng-pci"]);
        let args = args_of(&b);
        assert!(!args.contains(&"-no-reboot".to_owned()));
        for (f, v) in [
            ("-m", "512M"),
            ("-smp", "2"),
            ("-append", "console=ttyS0 panic=-1 quiet"),
            ("-uuid", "01234567-89ab-cdef-0123-456789abcdef"),
            ("-drive", "file=/img/a,,b.raw,if=virtio,format=raw,index=0"),
            ("-drive", "file=/img/c.qcow2,if=virtio,format=qcow2,index=1"),
            ("-netdev", "socket,id=n0,listen=127.0.0.1:4000"),
            ("-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"),
            ("-netdev", "socket,id=n1,connect=127.0.0.1:4001"),
            ("-netdev", "socket,id=n2,mcast=230.0.0.1:4002,localaddr=127.0.0.1"),
            ("-device", "virtio-rng-pci"),
        ] {
            assert!(has_pair(&args, f, v), "{f} {v} missing in {args:?}");
        }
        assert_eq!(args.last().map(String::as_str), Some("virtio-rng-pci"));
    }

    #[test]
    fn bad_mac_and_uuid_are_refused() {
        let b = VmBuilder::new("/k").socket_nic_listen(1, "52:54:00:00:00");
        assert!(b.qemu_command_args(Path::new("/d"), None).is_err());
        let b = VmBuilder::new("/k").uuid("not-a-uuid");
        assert!(b.qemu_command_args(Path::new("/d"), None).is_err());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\r\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
