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
    /// Runs `iptables -w -t nat ARGS`; Ok(None) for a nonzero exit when the
    /// caller asked to see it (a check), Err for a nonzero exit otherwise.
    fn run(&self, args: &[&str], nonzero_is_answer: bool) -> Result<Option<String>, IptablesError> {
        let mut cmd = Command::new(self.binary);
        cmd.args(["-w", "-t", "nat"]).args(args);
        let command = command_line(&cmd);
        let out = self.runner.output(cmd).map_err(|source| IptablesError::Spawn { command: command.clone(), source })?;
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

    fn jumps(&self) -> Result<usize, IptablesError> {
        let listing = self.run(&["-S", "POSTROUTING"], false)?.unwrap_or_default();
        let jump = format!("-A POSTROUTING -j {CHAIN}");
        Ok(listing.lines().filter(|l| l.trim() == jump).count())
    }
}

/// Makes the nat table hold Kelson's chain with exactly the rule for
/// `cluster` and exactly one jump to it; with `None`, removes both.
/// Returns what it changed (empty: it was already so).
pub fn ensure_masquerade<R: CommandRunner>(
    runner: &R,
    binary: &Path,
    cluster: Option<Ipv4Net>,
) -> Result<Vec<String>, IptablesError> {
    let ipt = Iptables { runner, binary };
    let mut changes = Vec::new();
    let chain_rules = ipt.run(&["-S", CHAIN], true)?;
    let Some(cluster) = cluster else {
        for _ in 0..ipt.jumps()? {
            ipt.run(&["-D", "POSTROUTING", "-j", CHAIN], false)?;
            changes.push(format!("removed the jump from POSTROUTING to {CHAIN}"));
        }
        if chain_rules.is_some() {
            ipt.run(&["-F", CHAIN], false)?;
            ipt.run(&["-X", CHAIN], false)?;
            changes.push(format!("removed chain {CHAIN}"));
        }
        return Ok(changes);
    };

    let rule = masquerade_rule(cluster);
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    let prefix = format!("-A {CHAIN} ");
    let current_is_wanted = match &chain_rules {
        None => {
            ipt.run(&["-N", CHAIN], false)?;
            changes.push(format!("created chain {CHAIN}"));
            false
        }
        Some(listing) => {
            let count = listing.lines().filter(|l| l.starts_with(&prefix)).count();
            // -C lets iptables compare, so its print format does not matter.
            count == 1 && ipt.run(&[&["-C", CHAIN][..], &rule].concat(), true)?.is_some()
        }
    };
    if !current_is_wanted {
        if chain_rules.is_some() {
            ipt.run(&["-F", CHAIN], false)?;
        }
        ipt.run(&[&["-A", CHAIN][..], &rule].concat(), false)?;
        changes.push(format!("{CHAIN}: MASQUERADE traffic not to {cluster} nor local"));
    }

    let jumps = ipt.jumps()?;
    if jumps == 0 {
        ipt.run(&["-A", "POSTROUTING", "-j", CHAIN], false)?;
        changes.push(format!("added the jump from POSTROUTING to {CHAIN}"));
    }
    for _ in 1..jumps.max(1) {
        ipt.run(&["-D", "POSTROUTING", "-j", CHAIN], false)?;
        changes.push(format!("removed a duplicate jump from POSTROUTING to {CHAIN}"));
    }
    Ok(changes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runner::{fake_output, FakeRunner};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// Just enough of `iptables -t nat` (-S -N -F -X -A -C -D) to test the
    /// decisions; the host tests run the real binary.
    /// The nat table: chain → rules (without "-A CHAIN").
    pub(crate) type NatTable = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

    pub(crate) fn fake_iptables() -> (FakeRunner, NatTable) {
        let table: NatTable = Arc::default();
        table.lock().unwrap().insert("POSTROUTING".into(), Vec::new());
        let t = table.clone();
        let runner = FakeRunner::new(move |argv| {
            let mut t = t.lock().unwrap();
            assert_eq!(&argv[1..4], ["-w", "-t", "nat"]);
            let (op, chain, rule) = (argv[4].as_str(), argv[5].clone(), argv[6..].join(" "));
            let missing = fake_output(1, "", "iptables: No chain/target/match by that name.");
            match op {
                "-S" => match t.get(&chain) {
                    None => missing,
                    Some(rules) => {
                        let head = if chain == "POSTROUTING" { "-P POSTROUTING ACCEPT".into() } else { format!("-N {chain}") };
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

    fn cidr(s: &str) -> Option<Ipv4Net> {
        Some(s.parse().unwrap())
    }

    const RULE: &str = "! -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE";

    #[test]
    fn a_fresh_table_gets_the_chain_the_rule_and_one_jump() {
        let (runner, table) = fake_iptables();
        let changes = ensure_masquerade(&runner, Path::new("iptables"), cidr("10.244.0.0/16")).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KELSON-POSTROUTING"]);
        assert_eq!(t[CHAIN], [RULE]);
    }

    #[test]
    fn a_second_pass_only_reads_and_checks() {
        let (runner, _) = fake_iptables();
        ensure_masquerade(&runner, Path::new("iptables"), cidr("10.244.0.0/16")).unwrap();
        let before = runner.calls().len();
        let changes = ensure_masquerade(&runner, Path::new("iptables"), cidr("10.244.0.0/16")).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        let second: Vec<String> = runner.calls()[before..].to_vec();
        assert!(second.iter().all(|c| c.contains(" -S ") || c.contains(" -C ")), "{second:?}");
    }

    #[test]
    fn a_changed_cluster_cidr_replaces_the_rule_and_duplicate_jumps_are_removed() {
        let (runner, table) = fake_iptables();
        ensure_masquerade(&runner, Path::new("iptables"), cidr("10.244.0.0/16")).unwrap();
        {
            let mut t = table.lock().unwrap();
            t.get_mut("POSTROUTING").unwrap().push("-j KELSON-POSTROUTING".into());
            t.get_mut(CHAIN).unwrap().push("-j ACCEPT".into());
        }
        ensure_masquerade(&runner, Path::new("iptables"), cidr("10.32.0.0/12")).unwrap();
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KELSON-POSTROUTING"]);
        assert_eq!(t[CHAIN], ["! -d 10.32.0.0/12 -m addrtype ! --dst-type LOCAL -j MASQUERADE"]);
    }

    #[test]
    fn no_cluster_cidr_removes_what_kelson_set_and_leaves_the_rest() {
        let (runner, table) = fake_iptables();
        table.lock().unwrap().get_mut("POSTROUTING").unwrap().push("-j KUBE-POSTROUTING".into());
        ensure_masquerade(&runner, Path::new("iptables"), cidr("10.244.0.0/16")).unwrap();
        let changes = ensure_masquerade(&runner, Path::new("iptables"), None).unwrap();
        assert_eq!(changes.len(), 2);
        let t = table.lock().unwrap();
        assert_eq!(t["POSTROUTING"], ["-j KUBE-POSTROUTING"]);
        assert!(!t.contains_key(CHAIN));
    }

    #[test]
    fn a_failing_iptables_names_the_command_and_its_stderr() {
        let runner = FakeRunner::new(|_| fake_output(4, "", "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id"));
        let err = ensure_masquerade(&runner, Path::new("/usr/sbin/iptables"), cidr("10.244.0.0/16")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/usr/sbin/iptables -w -t nat -N KELSON-POSTROUTING` exited with 4: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id"
        );
    }
}
