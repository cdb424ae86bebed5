//! The seam between PID 1's logic and the kernel. Stages take a
//! `&dyn Kernel`; [`LinuxKernel`] makes the syscalls, [`fake::FakeKernel`]
//! records them so stage logic is tested without root.

use std::io;
use std::path::Path;

/// Mount flags Kelson uses, kept independent of `nix` so fakes and specs
/// stay plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub relatime: bool,
}

/// What a watch on block devices saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    /// The device with this name (under /dev) was added, or its medium
    /// changed.
    Device(String),
    /// Events were lost: every device should be looked at again.
    Missed,
}

/// Block devices as they appear, from the moment the watch was opened.
pub trait BlockDeviceEvents {
    /// The next event, or None once `timeout` has passed without one.
    fn next(&mut self, timeout: std::time::Duration) -> io::Result<Option<BlockEvent>>;
}

/// What happened when a module was handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleLoad {
    Loaded,
    AlreadyLoaded,
}

pub trait Kernel: Send + Sync {
    fn mount(&self, source: &str, target: &Path, fstype: &str, flags: MountFlags, data: Option<&str>)
        -> io::Result<()>;
    fn unmount(&self, target: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes from the start of `path` (a block device, say).
    fn read_prefix(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        self.read_at(path, 0, len)
    }
    /// Up to `len` bytes of `path` from byte `offset` on.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The size in bytes of a file or block device.
    fn size(&self, path: &Path) -> io::Result<u64>;
    /// Writes `data` into the existing file or block device `path` at byte
    /// `offset`, and flushes it to the device before returning.
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Random bytes from the kernel, for ids.
    fn random_bytes(&self) -> io::Result<[u8; 16]>;
    /// Names of the entries in a directory, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Starts watching for block devices being added (or their media
    /// changing); open it before looking at the devices there are, so that
    /// none added in between is missed.
    fn watch_block_devices(&self) -> io::Result<Box<dyn BlockDeviceEvents + '_>>;
    /// Creates or replaces a regular file with `mode` atomically, making
    /// its parent directories.
    fn install_file(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Loads one module file (compressed or not); `EEXIST` is reported as
    /// [`ModuleLoad::AlreadyLoaded`].
    fn load_module(&self, path: &Path) -> io::Result<ModuleLoad>;
    /// Attaches `file` read-only to a free loop device and returns the
    /// device's path.
    fn attach_loop(&self, file: &Path) -> io::Result<std::path::PathBuf>;
    /// Creates the read-only device-mapper device `name` of `sectors` 512-byte
    /// sectors with one `verity` target of `params`, and returns its path.
    fn create_verity(&self, name: &str, sectors: u64, params: &str) -> io::Result<std::path::PathBuf>;
    /// Flushes every filesystem and restarts the machine at once (no
    /// ordered shutdown: for a node that has started nothing yet).
    fn reboot_now(&self) -> io::Result<()>;
    /// Removes the device-mapper device `name`.
    fn remove_device_mapper(&self, name: &str) -> io::Result<()>;
    /// Copies all of `from` into the existing file or block device `path`
    /// from byte `offset` on, flushes it to the device, and returns the
    /// number of bytes copied.
    fn copy_into(&self, path: &Path, offset: u64, from: &mut dyn io::Read) -> io::Result<u64>;
    /// Creates (or truncates) the file `path` with `data` and flushes it;
    /// no mode is set (for filesystems such as FAT that have none).
    fn create_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Sets the calling thread's nice value (on Linux a thread's own, and
    /// inherited by the threads it starts).
    fn set_this_threads_nice(&self, nice: i32) -> io::Result<()>;

    /// Puts the calling thread in (`true`) or out of (`false`) the
    /// SCHED_IDLE class: it runs only on CPU time nothing else at normal
    /// priority wants. Threads it starts later inherit the class.
    fn set_this_threads_idle(&self, idle: bool) -> io::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxKernel;

impl Kernel for LinuxKernel {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        use nix::mount::MsFlags;
        let mut ms = MsFlags::empty();
        if flags.readonly {
            ms |= MsFlags::MS_RDONLY;
        }
        if flags.nosuid {
            ms |= MsFlags::MS_NOSUID;
        }
        if flags.nodev {
            ms |= MsFlags::MS_NODEV;
        }
        if flags.noexec {
            ms |= MsFlags::MS_NOEXEC;
        }
        if flags.relatime {
            ms |= MsFlags::MS_RELATIME;
        }
        nix::mount::mount(Some(source), target, Some(fstype), ms, data).map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(io::Error::from)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        // Kernel interfaces (/proc/sys, cgroupfs) want one write(2) of the
        // whole value into an existing file: no create, no truncate dance.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn size(&self, path: &Path) -> io::Result<u64> {
        use std::io::{Seek, SeekFrom};
        // Seeking to the end works for block devices, whose metadata says 0.
        std::fs::File::open(path)?.seek(SeekFrom::End(0))
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(data)?;
        file.sync_data()
    }

    fn random_bytes(&self) -> io::Result<[u8; 16]> {
        use std::io::Read;
        let mut buf = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Vec<_>>();
        names.sort();
        Ok(names)
    }

    fn watch_block_devices(&self) -> io::Result<Box<dyn BlockDeviceEvents + '_>> {
        Ok(Box::new(crate::uevent::UeventSocket::open()?))
    }

    fn install_file(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        kelson_base::atomic::write_atomic(path, data, mode).map_err(io::Error::other)?;
        // The temporary file was created under the umask; say the mode again.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn load_module(&self, path: &Path) -> io::Result<ModuleLoad> {
        use std::os::fd::AsRawFd;
        // finit_module's flag for a compressed module file (linux/module.h):
        // the kernel decompresses .ko.xz itself when built with
        // CONFIG_MODULE_DECOMPRESS, which Debian's kernel is.
        const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;
        let file = std::fs::File::open(path)?;
        let compressed = path.extension().is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
        let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
        let params = c"";
        // SAFETY: finit_module reads the open fd and a NUL-terminated
        // parameter string that outlives the call; no memory is shared.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), flags) };
        if rc == 0 {
            return Ok(ModuleLoad::Loaded);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) {
            Ok(ModuleLoad::AlreadyLoaded)
        } else {
            Err(err)
        }
    }

    fn create_verity(&self, name: &str, sectors: u64, params: &str) -> io::Result<std::path::PathBuf> {
        Self::dm_create_verity(name, sectors, params).map_err(io::Error::other)
    }

    fn reboot_now(&self) -> io::Result<()> {
        nix::unistd::sync();
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
            Err(e) => Err(io::Error::from(e)),
            Ok(never) => match never {},
        }
    }

    fn remove_device_mapper(&self, name: &str) -> io::Result<()> {
        use devicemapper::{DevId, DmName, DmOptions, DM};
        let remove = || -> devicemapper::DmResult<()> {
            let dm = DM::new()?;
            dm.device_remove(&DevId::Name(DmName::new(name)?), DmOptions::default())?;
            Ok(())
        };
        remove().map_err(io::Error::other)
    }

    fn copy_into(&self, path: &Path, offset: u64, from: &mut dyn io::Read) -> io::Result<u64> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let copied = io::copy(from, &mut file)?;
        file.sync_all()?;
        Ok(copied)
    }

    fn create_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(path)?;
        file.write_all(data)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn set_this_threads_nice(&self, nice: i32) -> io::Result<()> {
        // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS
        // and a thread id changes only that thread's nice value.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn set_this_threads_idle(&self, idle: bool) -> io::Result<()> {
        let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; the parameter is a valid
        // sched_param that outlives the call. Both policies take priority 0.
        let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn attach_loop(&self, file: &Path) -> io::Result<std::path::PathBuf> {
        use std::os::fd::AsRawFd;
        // From linux/loop.h.
        const LOOP_SET_FD: libc::c_ulong = 0x4C00;
        const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
        let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let index = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if index < 0 {
            return Err(io::Error::last_os_error());
        }
        let device = std::path::PathBuf::from(format!("/dev/loop{index}"));
        let loop_dev = std::fs::OpenOptions::new().read(true).open(&device)?;
        // Opened read-only, so the loop device is read-only too.
        let backing = std::fs::File::open(file)?;
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value;
        // both descriptors stay open for the call.
        let rc = unsafe { libc::ioctl(loop_dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(device)
    }
}

impl LinuxKernel {
    fn dm_create_verity(name: &str, sectors: u64, params: &str) -> devicemapper::DmResult<std::path::PathBuf> {
        use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
        let dm = DM::new()?;
        let dm_name = DmName::new(name)?;
        let readonly = DmOptions::default().set_flags(DmFlags::DM_READONLY);
        dm.device_create(dm_name, None, readonly)?;
        let id = DevId::Name(dm_name);
        let targets = [(0, sectors, "verity".to_owned(), params.to_owned())];
        dm.table_load(&id, &targets, readonly)?;
        // Resuming a device with a loaded table makes the table live.
        let info = dm.device_suspend(&id, DmOptions::default())?;
        // No udev: devtmpfs names the device after its minor number.
        Ok(std::path::PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
    }
}

/// A disk (or a file standing in for one) read and written through the
/// kernel trait, as `Read + Write + Seek` for the GPT library.
pub struct KernelDisk<'a> {
    kernel: &'a dyn Kernel,
    path: std::path::PathBuf,
    position: u64,
}

impl<'a> KernelDisk<'a> {
    pub fn new(kernel: &'a dyn Kernel, path: &Path) -> Self {
        KernelDisk { kernel, path: path.to_owned(), position: 0 }
    }
}

impl std::fmt::Debug for KernelDisk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "disk {}", self.path.display())
    }
}

impl io::Read for KernelDisk<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data = self.kernel.read_at(&self.path, self.position, buf.len())?;
        buf[..data.len()].copy_from_slice(&data);
        self.position += data.len() as u64;
        Ok(data.len())
    }
}

impl io::Seek for KernelDisk<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            io::SeekFrom::Start(at) => {
                self.position = at;
                return Ok(at);
            }
            io::SeekFrom::End(delta) => (self.kernel.size(&self.path)?, delta),
            io::SeekFrom::Current(delta) => (self.position, delta),
        };
        self.position = base.checked_add_signed(delta).ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.position)
    }
}

impl io::Write for KernelDisk<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.kernel.write_at(&self.path, self.position, buf)?;
        self.position += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub mod fake {
    //! A recording kernel for tests: files live in a map, every call is
    //! logged, and chosen paths can be made to fail.
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub struct FakeKernel {
        pub files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
        pub calls: Mutex<Vec<String>>,
        /// Paths (mount targets, files, modules) whose operations fail with
        /// the given errno.
        pub failures: Mutex<BTreeMap<PathBuf, i32>>,
        pub loaded: Mutex<BTreeSet<PathBuf>>,
        /// Block devices that appear one by one once something watches for
        /// them (name, content), as if their drivers were still probing.
        pub block_devices_to_come: Mutex<std::collections::VecDeque<(String, Vec<u8>)>>,
    }

    impl FakeKernel {
        pub fn with_file(self, path: &str, data: &str) -> Self {
            self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(PathBuf::from(path), data.as_bytes().to_vec());
            self
        }
        pub fn with_bytes(self, path: &str, data: Vec<u8>) -> Self {
            self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(PathBuf::from(path), data);
            self
        }
        /// A block device that appears only after a watch has started.
        pub fn with_block_device_later(self, name: &str, data: Vec<u8>) -> Self {
            self.block_devices_to_come.lock().unwrap_or_else(|e| e.into_inner()).push_back((name.to_owned(), data));
            self
        }
        pub fn failing(self, path: &str, errno: i32) -> Self {
            self.failures.lock().unwrap_or_else(|e| e.into_inner()).insert(PathBuf::from(path), errno);
            self
        }
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
        pub fn file(&self, path: &str) -> Option<String> {
            self.files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(Path::new(path))
                .map(|d| String::from_utf8_lossy(d).into_owned())
        }
        fn record(&self, call: String) {
            self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
        }
        fn check(&self, path: &Path) -> io::Result<()> {
            match self.failures.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
                Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
                None => Ok(()),
            }
        }
    }

    /// Delivers [`FakeKernel::block_devices_to_come`] one per call, adding
    /// each to /sys/class/block and /dev; with none left, the wait is over
    /// at once (nothing sleeps in tests).
    struct FakeBlockEvents<'a>(&'a FakeKernel);

    impl BlockDeviceEvents for FakeBlockEvents<'_> {
        fn next(&mut self, _timeout: std::time::Duration) -> io::Result<Option<BlockEvent>> {
            let next = self.0.block_devices_to_come.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            let Some((name, data)) = next else { return Ok(None) };
            let mut files = self.0.files.lock().unwrap_or_else(|e| e.into_inner());
            files.insert(PathBuf::from(format!("/sys/class/block/{name}/dev")), b"0:0".to_vec());
            files.insert(PathBuf::from(format!("/dev/{name}")), data);
            Ok(Some(BlockEvent::Device(name)))
        }
    }

    impl Kernel for FakeKernel {
        fn mount(
            &self,
            source: &str,
            target: &Path,
            fstype: &str,
            flags: MountFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            let ro = if flags.readonly { " ro" } else { "" };
            self.record(format!("mount {source} {} {fstype} {}{ro}", target.display(), data.unwrap_or("-")));
            self.check(target)
        }
        fn unmount(&self, target: &Path) -> io::Result<()> {
            self.record(format!("umount {}", target.display()));
            self.check(target)
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.record(format!("mkdir {}", path.display()));
            Ok(())
        }
        fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.record(format!("write {} {}", path.display(), String::from_utf8_lossy(data)));
            self.check(path)?;
            self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned(), data.to_vec());
            Ok(())
        }
        fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.check(path)?;
            self.files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            self.check(path)?;
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let data = files.get(path).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            let start = (offset as usize).min(data.len());
            let end = start.saturating_add(len).min(data.len());
            Ok(data[start..end].to_vec())
        }
        fn size(&self, path: &Path) -> io::Result<u64> {
            self.check(path)?;
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            files.get(path).map(|d| d.len() as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check(path)?;
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let file = files.get_mut(path).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            let (start, end) = (offset as usize, offset as usize + data.len());
            if end > file.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            file[start..end].copy_from_slice(data);
            Ok(())
        }
        fn random_bytes(&self) -> io::Result<[u8; 16]> {
            Ok([0x5a; 16])
        }
        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            self.check(path)?;
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<String> = files
                .keys()
                .filter_map(|p| p.strip_prefix(path).ok())
                .filter_map(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.dedup();
            Ok(names)
        }
        fn watch_block_devices(&self) -> io::Result<Box<dyn BlockDeviceEvents + '_>> {
            self.record("watch block devices".to_owned());
            Ok(Box::new(FakeBlockEvents(self)))
        }
        fn install_file(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
            self.record(format!("install {} {mode:o}", path.display()));
            self.check(path)?;
            self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned(), data.to_vec());
            Ok(())
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.lock().unwrap_or_else(|e| e.into_inner()).contains_key(path)
        }
        fn set_hostname(&self, name: &str) -> io::Result<()> {
            self.record(format!("hostname {name}"));
            Ok(())
        }
        fn load_module(&self, path: &Path) -> io::Result<ModuleLoad> {
            self.record(format!("load {}", path.display()));
            self.check(path)?;
            if self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned()) {
                Ok(ModuleLoad::Loaded)
            } else {
                Ok(ModuleLoad::AlreadyLoaded)
            }
        }
        fn attach_loop(&self, file: &Path) -> io::Result<PathBuf> {
            // Each attach takes the next free device, as the kernel's would.
            let index = self.calls().iter().filter(|c| c.starts_with("loop ")).count();
            self.record(format!("loop {}", file.display()));
            self.check(file)?;
            Ok(PathBuf::from(format!("/dev/loop{index}")))
        }
        fn create_verity(&self, name: &str, sectors: u64, params: &str) -> io::Result<PathBuf> {
            self.record(format!("verity {name} {sectors} {params}"));
            Ok(PathBuf::from("/dev/dm-0"))
        }
        fn reboot_now(&self) -> io::Result<()> {
            self.record("reboot".to_owned());
            Ok(())
        }
        fn remove_device_mapper(&self, name: &str) -> io::Result<()> {
            self.record(format!("dm remove {name}"));
            Ok(())
        }
        fn copy_into(&self, path: &Path, offset: u64, from: &mut dyn io::Read) -> io::Result<u64> {
            let mut data = Vec::new();
            from.read_to_end(&mut data)?;
            self.record(format!("copy {} bytes into {} at {offset}", data.len(), path.display()));
            self.write_at(path, offset, &data)?;
            Ok(data.len() as u64)
        }
        fn create_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.record(format!("create {}", path.display()));
            self.check(path)?;
            self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned(), data.to_vec());
            Ok(())
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.record(format!("rename {} {}", from.display(), to.display()));
            self.check(from)?;
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let data = files.remove(from).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            files.insert(to.to_owned(), data);
            Ok(())
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.record(format!("rm {}", path.display()));
            self.check(path)?;
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            files.remove(path).map(|_| ()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn set_this_threads_nice(&self, nice: i32) -> io::Result<()> {
            self.record(format!("nice {nice}"));
            Ok(())
        }

        fn set_this_threads_idle(&self, idle: bool) -> io::Result<()> {
            self.record(format!("idle {idle}"));
            Ok(())
        }
    }
}
