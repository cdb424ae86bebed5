//! Boot entries and boot counting, as systemd-boot does them.
//!
//! Each installed version is one UKI in the ESP's `\EFI\Linux`, named
//! `kelson-<version>.efi`. A freshly installed version is named
//! `kelson-<version>+<tries>.efi`: systemd-boot renames it before each try
//! (`+2-1`, `+1-2`, `+0-3`), sets the EFI variable `LoaderBootCountPath` to
//! the renamed file, and sorts an entry with no tries left after all the
//! others. PID 1 "blesses" the entry it booted from when the node reaches
//! ready, by renaming it to the name without a counter; an entry whose
//! tries run out without that is skipped from then on, and the node runs
//! the newest version that was never on trial or passed it.
//!
//! This module is the pure part: names, versions and the EFI variables'
//! encoding. [`crate::esp`] reads and renames the files.

use std::cmp::Ordering;

/// What every Kelson UKI's file name starts with.
pub const ENTRY_PREFIX: &str = "kelson-";
pub const ENTRY_SUFFIX: &str = ".efi";
/// How many times a newly installed version is tried before the boot
/// loader gives up on it.
pub const DEFAULT_TRIES: u32 = 3;
/// systemd-boot's vendor GUID for its EFI variables.
pub const LOADER_VENDOR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The variable naming the boot-counted file systemd-boot started, as an
/// ESP path (`\EFI\Linux\kelson-2+2-1.efi`); absent when the entry booted
/// has no counter.
pub const BOOT_COUNT_PATH_VAR: &str = "LoaderBootCountPath";
/// The variable naming the entry systemd-boot started.
pub const ENTRY_SELECTED_VAR: &str = "LoaderEntrySelected";

/// A boot counter in a file name: tries left and tries done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// A Kelson UKI's file name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFile {
    /// The file name as it is in the ESP.
    pub file: String,
    pub version: String,
    /// `None` for a blessed (or never counted) entry.
    pub counter: Option<Counter>,
}

impl EntryFile {
    /// Takes apart `kelson-<version>[+<left>[-<done>]].efi`; `None` for
    /// any other name.
    pub fn parse(file: &str) -> Option<EntryFile> {
        let stem = file.strip_prefix(ENTRY_PREFIX)?.strip_suffix(ENTRY_SUFFIX)?;
        let (version, counter) = match stem.rsplit_once('+') {
            None => (stem, None),
            Some((version, count)) => {
                let (left, done) = count.split_once('-').unwrap_or((count, "0"));
                let left = left.parse().ok()?;
                let done = done.parse().ok()?;
                (version, Some(Counter { left, done }))
            }
        };
        valid_version(version).then(|| EntryFile { file: file.to_owned(), version: version.to_owned(), counter })
    }

    /// The name this entry has once blessed: no counter.
    pub fn blessed_name(&self) -> String {
        blessed_file_name(&self.version)
    }

    /// Whether the boot loader has given up on this entry.
    pub fn exhausted(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }
}

/// `kelson-<version>.efi`.
pub fn blessed_file_name(version: &str) -> String {
    format!("{ENTRY_PREFIX}{version}{ENTRY_SUFFIX}")
}

/// `kelson-<version>+<tries>.efi`: a new entry, on trial.
pub fn trial_file_name(version: &str, tries: u32) -> String {
    format!("{ENTRY_PREFIX}{version}+{tries}{ENTRY_SUFFIX}")
}

/// Whether `version` can be part of an entry's name: not empty, no `+`
/// (the counter's separator), no path separators or spaces.
pub fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '^'))
}

/// Orders versions as systemd-boot does for the versions Kelson makes:
/// runs of digits compare as numbers, other runs as text, and a version
/// that is a prefix of the other is older (`1.2` < `1.2.1`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        // Separators compare equal to each other; what follows decides.
        a = a.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        b = b.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        let (run_a, rest_a) = split_run(a);
        let (run_b, rest_b) = split_run(b);
        let digits = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
        let order = match (digits(run_a), digits(run_b)) {
            (true, true) => {
                let (x, y) = (run_a.trim_start_matches('0'), run_b.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            // A number is newer than a word (`1.2.1` > `1.2.rc1`).
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => run_a.cmp(run_b),
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
}

/// The leading run of digits or of letters of `s`, and the rest.
fn split_run(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s.find(|c: char| !c.is_ascii_alphanumeric() || c.is_ascii_digit() != digits).unwrap_or(s.len());
    s.split_at(end)
}

/// An EFI string variable as efivarfs shows it: four bytes of attributes,
/// then UTF-16LE up to a NUL.
pub fn parse_efi_string(bytes: &[u8]) -> Option<String> {
    let text = bytes.get(4..)?;
    let units: Vec<u16> =
        text.chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).take_while(|unit| *unit != 0).collect();
    String::from_utf16(&units).ok()
}

/// The file name at the end of an ESP path (`\EFI\Linux\x.efi` → `x.efi`).
pub fn esp_file_name(esp_path: &str) -> &str {
    esp_path.rsplit(['\\', '/']).next().unwrap_or(esp_path)
}

/// The value of `key` in an os-release file (`KEY=value` or
/// `KEY="value"` lines).
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        let unquoted = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        Some(unquoted.to_owned())
    })
}

/// The key of the os-release field that holds Kelson's version.
pub const VERSION_FIELD: &str = "IMAGE_VERSION";

/// A newer version the boot loader gave up on: installed, tried, and never
/// ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedUpdate {
    pub version: String,
    pub tries: u32,
}

/// The entry this boot came from, found by the boot-entry stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningEntry {
    /// The ESP's partition device.
    pub esp: std::path::PathBuf,
    pub version: String,
    /// The counted file booted, when this version is on trial.
    pub trial: Option<EntryFile>,
}

/// The entries newer than `running` whose tries ran out: the running
/// version is what the node fell back to.
pub fn failed_updates(entries: &[EntryFile], running: &str) -> Vec<FailedUpdate> {
    entries
        .iter()
        .filter(|e| e.exhausted() && compare_versions(&e.version, running) == Ordering::Greater)
        .map(|e| FailedUpdate { version: e.version.clone(), tries: e.counter.map_or(0, |c| c.done) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_taken_apart_with_their_counters() {
        let plain = EntryFile::parse("kelson-0.1.0.efi").unwrap();
        assert_eq!((plain.version.as_str(), plain.counter), ("0.1.0", None));
        let fresh = EntryFile::parse("kelson-0.1.0.1+3.efi").unwrap();
        assert_eq!(fresh.counter, Some(Counter { left: 3, done: 0 }));
        let tried = EntryFile::parse("kelson-0.2+0-3.efi").unwrap();
        assert_eq!((tried.version.as_str(), tried.counter), ("0.2", Some(Counter { left: 0, done: 3 })));
        assert!(tried.exhausted());
        assert_eq!(tried.blessed_name(), "kelson-0.2.efi");
        assert_eq!(trial_file_name("0.2", 3), "kelson-0.2+3.efi");
        for other in ["BOOTX64.EFI", "kelson.efi", "kelson-.efi", "kelson-1+x.efi", "kelson-1 2.efi", "other-1.efi"] {
            assert_eq!(EntryFile::parse(other), None, "{other}");
        }
    }

    #[test]
    fn versions_order_by_their_numbers() {
        use Ordering::*;
        for (a, b, want) in [
            ("0.1.0", "0.1.0", Equal),
            ("0.1.0.1", "0.1.0", Greater),
            ("0.10", "0.9", Greater),
            ("1.002", "1.2", Equal),
            ("1.2.rc1", "1.2.1", Less),
            ("2", "10", Less),
            ("1.2a", "1.2b", Less),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn efi_strings_are_utf16_after_the_attributes() {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in "\\EFI\\Linux\\kelson-2+2-1.efi".encode_utf16().chain([0]) {
            bytes.extend(unit.to_le_bytes());
        }
        let text = parse_efi_string(&bytes).unwrap();
        assert_eq!(esp_file_name(&text), "kelson-2+2-1.efi");
        assert_eq!(parse_efi_string(&[1, 2]), None);
    }

    #[test]
    fn os_release_fields_are_read_quoted_or_not() {
        let text = "ID=debian\nIMAGE_ID=kelson\nIMAGE_VERSION=\"0.1.0\"\nVERSION_ID=13\n";
        assert_eq!(os_release_field(text, VERSION_FIELD).as_deref(), Some("0.1.0"));
        assert_eq!(os_release_field(text, "IMAGE_ID").as_deref(), Some("kelson"));
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_field(text, "NAME"), None);
    }

    #[test]
    fn only_newer_exhausted_entries_are_failed_updates() {
        let entries: Vec<EntryFile> = ["kelson-1.efi", "kelson-2+0-3.efi", "kelson-0.9+0-3.efi", "kelson-3+1-2.efi"]
            .iter()
            .filter_map(|n| EntryFile::parse(n))
            .collect();
        assert_eq!(failed_updates(&entries, "1"), vec![FailedUpdate { version: "2".into(), tries: 3 }]);
        assert_eq!(failed_updates(&entries, "2"), vec![]);
    }
}
