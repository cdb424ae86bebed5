//! The node's machine id and hostname. The machine id is kept on the state
//! disk once one exists; until then it comes from the SMBIOS system UUID
//! (stable for a VM or a board), or is random. The hostname defaults to
//! `kelson-` and the id's first eight hex digits until configuration names it.

use crate::kernel::Kernel;
use std::path::Path;

pub const PERSISTED_MACHINE_ID: &str = "/var/lib/kelson/machine-id";
pub const SMBIOS_UUID: &str = "/sys/class/dmi/id/product_uuid";

/// A machine id: 32 lowercase hex digits, as in /etc/machine-id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineId(String);

impl MachineId {
    /// Accepts a UUID or a bare 32-digit hex id; rejects the all-zero id
    /// that firmware without a real UUID reports.
    pub fn parse(text: &str) -> Option<Self> {
        let hex: String = text.trim().chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
        let valid = hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
        (valid && hex.chars().any(|c| c != '0')).then_some(MachineId(hex))
    }

    pub fn from_random(bytes: [u8; 16]) -> Self {
        MachineId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn default_hostname(&self) -> String {
        format!("kelson-{}", &self.0[..8])
    }
}

/// Picks the machine id from, in order: the persisted one, the SMBIOS UUID,
/// fresh random bytes. Returns the id and where it came from.
///
/// `random` is called only when neither id will do: reading random bytes
/// early in boot can wait for the kernel's random generator to be seeded
/// (about a second in a VM with no hardware source), and most boots have
/// an id already.
pub fn choose_machine_id(
    persisted: Option<&str>,
    smbios: Option<&str>,
    random: impl FnOnce() -> [u8; 16],
) -> (MachineId, &'static str) {
    if let Some(id) = persisted.and_then(MachineId::parse) {
        return (id, "state disk");
    }
    if let Some(id) = smbios.and_then(MachineId::parse) {
        return (id, "SMBIOS system UUID");
    }
    (MachineId::from_random(random()), "random")
}

/// The one hostname rule, shared with the machine config's validation.
pub use kelson_config::valid_hostname;

/// A file's text without surrounding whitespace; `None` if it cannot be read.
pub fn read_trimmed(kernel: &dyn Kernel, path: &Path) -> Option<String> {
    kernel.read_file(path).ok().map(|b| String::from_utf8_lossy(&b).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_become_lowercase_machine_ids() {
        let id = MachineId::parse("6B29FC40-CA47-1067-B31D-00DD010662DA\n").unwrap();
        assert_eq!(id.as_str(), "6b29fc40ca471067b31d00dd010662da");
        assert_eq!(id.default_hostname(), "kelson-6b29fc40");
    }

    #[test]
    fn zero_and_malformed_ids_are_rejected() {
        assert!(MachineId::parse("00000000-0000-0000-0000-000000000000").is_none());
        assert!(MachineId::parse("not-a-uuid").is_none());
        assert!(MachineId::parse("").is_none());
    }

    #[test]
    fn a_persisted_id_wins_over_smbios_which_wins_over_random() {
        let persisted = "0123456789abcdef0123456789abcdef";
        let smbios = "6b29fc40-ca47-1067-b31d-00dd010662da";
        let no_random = || -> [u8; 16] { panic!("random bytes read although an id was there") };
        assert_eq!(choose_machine_id(Some(persisted), Some(smbios), no_random).1, "state disk");
        assert_eq!(choose_machine_id(None, Some(smbios), no_random).1, "SMBIOS system UUID");
        let (id, source) = choose_machine_id(None, Some("00000000-0000-0000-0000-000000000000"), || [0xab; 16]);
        assert_eq!(source, "random");
        assert_eq!(id.as_str(), "ab".repeat(16));
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        assert!(valid_hostname("kelson-6b29fc40"));
        assert!(valid_hostname("node1.example"));
        assert!(!valid_hostname("Node1"));
        assert!(!valid_hostname("-node"));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname(&"a".repeat(64)));
    }
}
