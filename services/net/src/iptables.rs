//! The seed notes' MASQUERADE rule, kept in a chain of Kelson's own:
//!
//! ```text
//! -t nat -A POSTROUTING -j KELSON-POSTROUTING                  (exactly one jump)
//! -t nat -A KELSON-POSTROUTING ! -d CLUSTER_CIDR -m addrtype ! --dst-type LOCAL -j MASQUERADE
//! ```
//!
//! Runs the real `iptables` binary through a [`CommandRunner`] (the
//! `iptables` crate spawns children itself, which PID 1's single reaper
//! forbids). Which backend that binary uses is the image's choice; Debian's
//! default `iptables` is iptables-nft, the same one kube-proxy should use.

use crate::runner::{command_line, CommandRunner};
use ipnet::Ipv4Net;
use std::path::Path;
use std::process::Command;

/// Kelson's nat chain, jumped to from POSTROUTING.
pub const CHAIN: &str = "KELSON-POSTROUTING";

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {code}: {stderr}")]
    Failed { command: String, code: i32, stderr: String },
}

/// The rule's match and target, after `-A CHAIN`.
pub fn masquerade_rule(cluster: Ipv4Net) -> Vec<String> {
    ["!", "-d", &cluster.to_string(), "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "MASQUERADE"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

struct Iptables<'a, R> {
    runner: &'a R,
    binary: &'a Path,
}

impl<R: CommandRunner> Iptables<'_, R> {
    /// `iptables` with a suffix: `iptables-save`, `iptables-restore`.
    fn sibling(&self, suffix: &str) -> std::path::PathBuf {
        let mut name = self.binary.as_os_str().to_owned();
        name.push(suffix);
        name.into()
    }

    fn output(&self, cmd: Command, nonzero_is_answer: bool) -> Result<Option<String>, IptablesError> {
        let command = command_line(&cmd);
        let out =
            self.runner.output(cmd).map_err(|source| IptablesError::Spawn { command: command.clone(), source })?;
        if out.status.success() {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else if nonzero_is_answer {
            Ok(None)
        } else {
            Err(IptablesError::Failed {
                command,
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Runs `iptables -w -t nat ARGS`; Ok(None) for a nonzero exit when the
    /// caller asked to see it (a check), Err for a nonzero exit otherwise.
    fn run(&self, args: &[&str], nonzero_is_answer: bool) -> Result<Option<String>, IptablesError> {
        let mut cmd = Command::new(self.binary);
        cmd.args(["-w", "-t", "nat"]).args(args);
        self.output(cmd, nonzero_is_answer)
    }

    /// The nat table as `iptables-save` prints it: one process, whatever
    /// is in the table.
    fn nat_table(&self) -> Result<NatState, IptablesError> {
        let mut cmd = Command::new(self.sibling("-save"));
        cmd.args(["-t", "nat"]);
        Ok(NatState::parse(&self.output(cmd, false)?.unwrap_or_default()))
    }

    /// Applies `lines` to the nat table in one `iptables-restore --noflush`
    /// transaction, leaving every other chain as it is.
    fn restore(&self, lines: &[String]) -> Result<(), IptablesError> {
        // Unique per call: passes may run concurrently (tests, or a re-apply
        // racing a DHCP-triggered one).
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("kelson-nat-{}-{seq}.rules", std::process::id()));
        let text = format!("*nat\n{}\nCOMMIT\n", lines.join("\n"));
        let mut cmd = Command::new(self.sibling("-restore"));
        cmd.args(["-w", "--noflush"]).arg(&file);
        std::fs::write(&file, text)
            .map_err(|source| IptablesError::Spawn { command: format!("writing {}", file.display()), source })?;
        let result = self.output(cmd, false);
        let _ = std::fs::remove_file(&file);
        result.map(|_| ())
    }
}

/// Creates the first-pass marker; false if it cannot.
fn mark(marker: &Path) -> bool {
    marker.parent().is_some_and(|dir| std::fs::create_dir_all(dir).is_ok()) && std::fs::write(marker, b"").is_ok()
}

/// What matters of the nat table: whether Kelson's chain exists, its
/// rules, and how many jumps to it POSTROUTING has.
#[derive(Debug, Default)]
struct NatState {
    chain_exists: bool,
    chain_rules: Vec<String>,
    jumps: usize,
}

impl NatState {
    fn parse(saved: &str) -> NatState {
        let declaration = format!(":{CHAIN} ");
        let rule_prefix = format!("-A {CHAIN} ");
        let jump = format!("-A POSTROUTING -j {CHAIN}");
        let mut state = NatState::default();
        for line in saved.lines().map(str::trim) {
            if line.starts_with(&declaration) {
                state.chain_exists = true;
            } else if let Some(rule) = line.strip_prefix(&rule_prefix) {
                state.chain_rules.push(rule.to_owned());
            } else if line == jump {
                state.jumps += 1;
            }
        }
        state
    }
}

/// Makes the nat table hold Kelson's chain with exactly the rule for
/// `cluster` and exactly one jump to it; with `None`, removes both.
/// Returns what it changed (empty: it was already so).
///
/// The table is read with one `iptables-save` and, only if something
/// differs, changed with one `iptables-restore --noflush`: each iptables
/// process costs tens of milliseconds on a small node, and a restore is
/// one transaction.
///
/// On the first pass after boot even the read is skipped: the nat table
/// starts empty, so Kelson's chain and jump cannot be there yet. `marker`
/// records that a pass has run; it must be on a filesystem that starts
/// empty at boot (/run), and it is written before the table is touched, so
/// a pass that cannot write it always reads the table first.
pub fn ensure_masquerade<R: CommandRunner>(
    runner: &R,
    binary: &Path,
    marker: &Path,
    cluster: Option<Ipv4Net>,
) -> Result<Vec<String>, IptablesError> {
    let ipt = Iptables { runner, binary };
    let mut changes = Vec::new();
    let first_pass_this_boot = cluster.is_some() && !marker.exists() && mark(marker);
    let state = if first_pass_this_boot { NatState::default() } else { ipt.nat_table()? };
    let Some(cluster) = cluster else {
        for _ in 0..state.jumps {
            ipt.run(&["-D", "POSTROUTING", "-j", CHAIN], false)?;
            changes.push(format!("removed the jump from POSTROUTING to {CHAIN}"));
        }
        if state.chain_exists {
            ipt.run(&["-F", CHAIN], false)?;
            ipt.run(&["-X", CHAIN], false)?;
            changes.push(format!("removed chain {CHAIN}"));
        }
        return Ok(changes);
    };

    let rule = masquerade_rule(cluster).join(" ");
    let mut lines = Vec::new();
    if state.chain_rules != [rule.clone()] {
        if !state.chain_exists {
            changes.push(format!("created chain {CHAIN}"));
        }
        // With --noflush, declaring the chain creates it or empties it.
        lines.push(format!(":{CHAIN} - [0:0]"));
        lines.push(format!("-A {CHAIN} {rule}"));
        changes.push(format!("{CHAIN}: MASQUERADE traffic not to {cluster} nor local"));
    }
    if state.jumps == 0 {
        lines.push(format!("-A POSTROUTING -j {CHAIN}"));
        changes.push(format!("added the jump from POSTROUTING to {CHAIN}"));
    }
    for _ in 1..state.jumps.max(1) {
        lines.push(format!("-D POSTROUTING -j {CHAIN}"));
        changes.push(format!("removed a duplicate jump from POSTROUTING to {CHAIN}"));
    }
    if !lines.is_empty() {
        ipt.restore(&lines)?;
    }
    Ok(changes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runner::{fake_output, FakeRunner};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// Just enough of `iptables -t nat` (-S -N -F -X -A -C -D),
    /// `iptables-save -t nat` and `iptables-restore --noflush` to test the
    /// decisions; the host tests run the real binary.
    /// The nat table: chain → rules (without "-A CHAIN").
    pub(crate) type NatTable = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

    pub(crate) fn fake_iptables() -> (FakeRunner, NatTable) {
        let table: NatTable = Arc::default();
        table.lock().unwrap().insert("POSTROUTING".into(), Vec::new());
        let t = table.clone();
        let runner = FakeRunner::new(move |argv| {
            let mut t = t.lock().unwrap();
            if argv[0].ends_with("-save") {
                assert_eq!(&argv[1..], ["-t", "nat"]);
                let mut out = String::from("# Generated by the fake\n*nat\n:POSTROUTING ACCEPT [0:0]\n");
                for chain in t.keys().filter(|c| *c != "POSTROUTING") {
                    out.push_str(&format!(":{chain} - [0:0]\n"));
                }
                for (chain, rules) in t.iter() {
                    for r in rules {
                        out.push_str(&format!("-A {chain} {r}\n"));
                    }
                }
                out.push_str("COMMIT\n");
                return fake_output(0, &out, "");
            }
            if argv[0].ends_with("-restore") {
                assert_eq!(&argv[1..3], ["-w", "--noflush"]);
                let text = std::fs::read_to_string(&argv[3]).unwrap();
                let mut lines = text.lines();
                assert_eq!(lines.next(), Some("*nat"));
                for line in lines {
                    if line == "COMMIT" {
                        break;
                    }
                    if let Some(decl) = line.strip_prefix(':') {
                        let chain = decl.split_whitespace().next().unwrap().to_owned();
                        t.entry(chain).or_default().clear();
                    } else {
                        let mut words = line.splitn(3, ' ');
                        let (op, chain, rule) =
                            (words.next().unwrap(), words.next().unwrap(), words.next().unwrap_or(""));
                        let Some(rules) = t.get_mut(chain) else {
                            return fake_output(
                                2,
                                "",
                                &format!("iptables-restore: line: chain {chain} does not exist"),
                            );
                        };
                        match op {
                            "-A" => rules.push(rule.to_owned()),
                            "-D" => match rules.iter().position(|x| x == rule) {
                                Some(i) => {
                                    rules.remove(i);
                                }
                                None => return fake_output(1, "", "iptables-restore: Bad rule"),
                            },
                            other => panic!("fake iptables-restore does not know {other}"),
                        }
                    }
                }
                return fake_output(0, "", "");
            }
            assert_eq!(&argv[1..4], ["-w", "-t", "nat"]);
            let (op, chain, rule) = (argv[4].as_str(), argv[5].clone(), argv[6..].join(" "));
            let missing = fake_output(1, "", "iptables: No chain/target/match by that name.");
            match op {
                "-S" => match t.get(&chain) {
                    None => missing,
                    Some(rules) => {
                        let head =
                            if chain == "POSTROUTING" { "-P POSTROUTING ACCEPT".into() } else { format!("-N {chain}") };
                        let lines: Vec<String> =
                            std::iter::once(head).chain(rules.iter().map(|r| format!("-A {chain} {r}"))).collect();
                        fake_output(0, &(lines.join("\n") + "\n"), "")
                    }
                },
                "-N" if t.contains_key(&chain) => fake_output(1, "", "iptables: Chain already exists."),
                "-N" => {
                    t.insert(chain, Vec::new());
                    fake_output(0, "", "")
                }
                "-F" => t.get_mut(&chain).map_or(missing, |r| {
                    r.clear();
                    fake_output(0, "", "")
                }),
                "-X" => t.remove(&chain).map_or_else(|| fake_output(1, "", ""), |_| fake_output(0, "", "")),
                "-A" => t.get_mut(&chain).map_or(missing, |r| {
                    r.push(rule);
                    fake_output(0, "", "")
                }),
                "-C" => match t.get(&chain) {
                    Some(r) if r.contains(&rule) => fake_output(0, "", ""),
                    _ => fake_output(1, "", "iptables: Bad rule (does a matching rule exist in that chain?)."),
                },
                "-D" => match t.get_mut(&chain).and_then(|r| r.iter().position(|x| *x == rule).map(|i| (r, i))) {
                    Some((r, i)) => {
                        r.remove(i);
                        fake_output(0, "", "")
                    }
                    None => fake_output(1, "", "iptables: Bad rule."),
                },
                other => panic!("fake iptables does not know {other}"),
            }
        });
        (runner, table)
    }

    /// A marker that already exists: these tests check the read-and-compare
    /// path, which every pass but a boot's first takes.
    fn touched() -> std::path::PathBuf {
        let file = tempfile::NamedTempFile::new().unwrap();
        let (_, path) = file.keep().unwrap();
        path
    }

    #[test]
    fn the_first_pass_after_boot_writes_without_reading_and_later_passes_read() {
        let (runner, table) = fake_iptables();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("run/nat-touched");
        let changes = ensure_masquerade(&runner, Path::new("iptables"), &marker, cidr("10.244.0.0/16")).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(marker.exists());
        let calls = runner.calls();
        assert_eq!(calls.len(), 1, "one iptables-restore and nothing else: {calls:?}");
        assert!(calls[0].starts_with("iptables-restore -w --noflush "), "{calls:?}");
        let changes = ensure_masquerade(&runner, Path::new("iptables"), &marker, cidr("10.244.0.0/16")).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(runner.calls()[1..], ["iptables-save -t nat"]);
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KELSON-POSTROUTING"]);
        assert_eq!(t[CHAIN], [RULE]);
    }

    #[test]
    fn a_marker_that_cannot_be_written_means_reading_first() {
        let (runner, _) = fake_iptables();
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        ensure_masquerade(&runner, Path::new("iptables"), &blocker.join("nat-touched"), cidr("10.244.0.0/16")).unwrap();
        assert_eq!(runner.calls()[0], "iptables-save -t nat");
    }

    fn cidr(s: &str) -> Option<Ipv4Net> {
        Some(s.parse().unwrap())
    }

    const RULE: &str = "! -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE";

    #[test]
    fn a_fresh_table_gets_the_chain_the_rule_and_one_jump() {
        let (runner, table) = fake_iptables();
        let changes = ensure_masquerade(&runner, Path::new("iptables"), &touched(), cidr("10.244.0.0/16")).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KELSON-POSTROUTING"]);
        assert_eq!(t[CHAIN], [RULE]);
    }

    #[test]
    fn a_second_pass_only_reads_and_checks() {
        let (runner, _) = fake_iptables();
        ensure_masquerade(&runner, Path::new("iptables"), &touched(), cidr("10.244.0.0/16")).unwrap();
        let before = runner.calls().len();
        let changes = ensure_masquerade(&runner, Path::new("iptables"), &touched(), cidr("10.244.0.0/16")).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        let second: Vec<String> = runner.calls()[before..].to_vec();
        assert_eq!(second, ["iptables-save -t nat"]);
    }

    #[test]
    fn a_changed_cluster_cidr_replaces_the_rule_and_duplicate_jumps_are_removed() {
        let (runner, table) = fake_iptables();
        ensure_masquerade(&runner, Path::new("iptables"), &touched(), cidr("10.244.0.0/16")).unwrap();
        {
            let mut t = table.lock().unwrap();
            t.get_mut("POSTROUTING").unwrap().push("-j KELSON-POSTROUTING".into());
            t.get_mut(CHAIN).unwrap().push("-j ACCEPT".into());
        }
        ensure_masquerade(&runner, Path::new("iptables"), &touched(), cidr("10.32.0.0/12")).unwrap();
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KELSON-POSTROUTING"]);
        assert_eq!(t[CHAIN], ["! -d 10.32.0.0/12 -m addrtype ! --dst-type LOCAL -j MASQUERADE"]);
    }

    #[test]
    fn no_cluster_cidr_removes_what_kelson_set_and_leaves_the_rest() {
        let (runner, table) = fake_iptables();
        table.lock().unwrap().get_mut("POSTROUTING").unwrap().push("-j KUBE-POSTROUTING".into());
        ensure_masquerade(&runner, Path::new("iptables"), &touched(), cidr("10.244.0.0/16")).unwrap();
        let changes = ensure_masquerade(&runner, Path::new("iptables"), &touched(), None).unwrap();
        assert_eq!(changes.len(), 2);
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KUBE-POSTROUTING"]);
        assert!(!t.contains_key(CHAIN));
    }

    #[test]
    fn a_failing_iptables_names_the_command_and_its_stderr() {
        let runner = FakeRunner::new(|_| {
            fake_output(4, "", "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id")
        });
        let err =
            ensure_masquerade(&runner, Path::new("/usr/sbin/iptables"), &touched(), cidr("10.244.0.0/16")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/usr/sbin/iptables-save -t nat` exited with 4: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id"
        );
    }
}
