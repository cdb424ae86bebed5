//! How answers are printed. `table` (the default) puts every row under a
//! `NODE` column; `json` and `yaml` print the API's objects: one node's
//! answer as it is, several nodes' as a map from node name to answer, in
//! the order the nodes were given (failed nodes are left out: their errors
//! go to stderr).

use kelson_api::types::{
    Accepted, EtcdAlarm, EtcdMember, EtcdStatus, LogLine, NodeStatus, Phase, Pod, Service, StageState, UpgradeResult,
    Version,
};
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("output format {0:?} is not table, json or yaml")]
pub struct FormatError(String);

impl std::str::FromStr for Format {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            other => Err(FormatError(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("rendering JSON")]
    Json(#[source] serde_json::Error),
    #[error("rendering YAML")]
    Yaml(#[source] serde_saphyr::SerializeError),
}

/// Answers of several nodes, serialized as a map in the nodes' order.
pub struct ByNode<'a, T>(pub &'a [(String, T)]);

impl<T: Serialize> Serialize for ByNode<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(node, answer)| (node, answer)))
    }
}

/// `value` as JSON (pretty, newline-terminated) or YAML.
pub fn serialized<T: Serialize>(value: &T, format: Format) -> Result<String, RenderError> {
    match format {
        Format::Yaml => serde_saphyr::to_string(value).map_err(RenderError::Yaml),
        Format::Json | Format::Table => {
            serde_json::to_string_pretty(value).map(|text| text + "\n").map_err(RenderError::Json)
        }
    }
}

/// The answers for json/yaml: alone when one node was asked, else by node.
pub fn answers<T: Serialize>(
    answers: &[(String, T)],
    several_nodes: bool,
    format: Format,
) -> Result<String, RenderError> {
    match answers {
        [(_, only)] if !several_nodes => serialized(only, format),
        [] if !several_nodes => Ok(String::new()),
        _ => serialized(&ByNode(answers), format),
    }
}

/// Columns separated by two spaces, each as wide as its widest cell; the
/// last column unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.take(columns).enumerate() {
                if i + 1 == columns {
                    out += cell;
                } else {
                    out += &format!("{cell:<width$}  ", width = widths[i]);
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(&mut self.headers.iter().copied());
        for row in &self.rows {
            out += &line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `1h02m`, `3m04s`, `5.2s`: short and still exact enough.
pub fn duration(ms: u64) -> String {
    let seconds = ms / 1000;
    if seconds >= 3600 {
        format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60)
    } else if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}.{}s", seconds, ms % 1000 / 100)
    }
}

/// Binary units, one decimal: `1.5 GiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// RFC 3339 UTC with milliseconds; the number itself if out of range.
pub fn timestamp(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

pub fn versions(answers: &[(String, Version)]) -> Table {
    let mut table = Table::new(&["NODE", "VERSION", "API"]);
    for (node, v) in answers {
        table.push(vec![node.clone(), v.version.clone(), v.api.clone()]);
    }
    table
}

fn phase(status: &NodeStatus) -> String {
    match (status.phase, &status.maintenance) {
        (Phase::Booting, _) => "booting".into(),
        (Phase::Ready, _) => "ready".into(),
        (Phase::Maintenance, Some(m)) => format!("maintenance ({}: {})", m.stage, m.reason),
        (Phase::Maintenance, None) => "maintenance".into(),
    }
}

/// One summary row per node, then the stages and conditions of each.
pub fn statuses(answers: &[(String, NodeStatus)]) -> String {
    let mut summary = Table::new(&["NODE", "PHASE", "UPTIME", "ADDRESSES", "MEMORY AVAILABLE", "PID 1 RSS", "BOOT"]);
    let mut stages = Table::new(&["NODE", "STAGE", "STATE", "STARTED", "ELAPSED", "ERROR"]);
    let mut conditions = Table::new(&["NODE", "CONDITION", "STATE", "REASON"]);
    let mut etcd = Table::new(&["NODE", "ETCD MEMBER", "ID", "ROLE", "HEALTH", "ERRORS"]);
    for (node, s) in answers {
        let boot = match &s.boot {
            None => "direct".to_owned(),
            Some(b) => {
                let mut text = b.version.clone();
                if b.on_trial {
                    text += " (on trial)";
                }
                if !b.failed_updates.is_empty() {
                    text += &format!(" (failed updates: {})", b.failed_updates.join(", "));
                }
                text
            }
        };
        summary.push(vec![
            node.clone(),
            phase(s),
            duration(s.uptime_ms),
            if s.addresses.is_empty() { "-".into() } else { s.addresses.join(",") },
            format!("{} of {}", bytes(s.memory.available_bytes), bytes(s.memory.total_bytes)),
            bytes(s.memory.pid1_rss_bytes),
            boot,
        ]);
        for stage in &s.stages {
            let state = match stage.state {
                StageState::Running => "running",
                StageState::Done => "done",
                StageState::Degraded => "degraded",
                StageState::Failed => "failed",
            };
            stages.push(vec![
                node.clone(),
                stage.name.clone(),
                state.into(),
                duration(stage.started_boot_ms),
                or_dash(stage.elapsed_ms.map(duration)),
                or_dash(stage.error.as_ref()),
            ]);
        }
        for (name, condition) in &s.conditions {
            conditions.push(vec![
                node.clone(),
                name.clone(),
                condition.state.clone(),
                or_dash(condition.reason.as_ref()),
            ]);
        }
        if let Some(view) = &s.etcd {
            etcd_rows(&mut etcd, node, view);
        }
    }
    let mut out = summary.render();
    out += "\n";
    out += &stages.render();
    if !conditions.rows.is_empty() {
        out += "\n";
        out += &conditions.render();
    }
    if !etcd.rows.is_empty() {
        out += "\n";
        out += &etcd.render();
    }
    out
}

/// A control-plane node's etcd: its join while it is under way (or why it
/// failed), then each member as the node last saw it.
fn etcd_rows(table: &mut Table, node: &str, view: &kelson_api::types::NodeEtcd) {
    if let Some(join) = view.join.as_ref().filter(|j| j.state != "member") {
        let state = match join.attempts {
            0 => format!("joining: {}", join.state),
            n => format!("joining: {} ({n} failed attempts)", join.state),
        };
        table.push(vec![
            node.to_owned(),
            "(this node)".into(),
            or_dash(join.member_id.as_ref()),
            state,
            "-".into(),
            or_dash(join.reason.as_ref()),
        ]);
    }
    if let Some(error) = &view.members_error {
        table.push(vec![node.to_owned(), "-".into(), "-".into(), "-".into(), "unknown".into(), error.clone()]);
    }
    for m in &view.members {
        let role = match (m.learner, m.leader) {
            (true, _) => "learner",
            (false, true) => "leader",
            (false, false) => "voter",
        };
        table.push(vec![
            node.to_owned(),
            if m.name.is_empty() { "(not started)".into() } else { m.name.clone() },
            m.id.clone(),
            role.into(),
            if m.reachable { "reachable" } else { "unreachable" }.into(),
            if m.errors.is_empty() { "-".into() } else { m.errors.join("; ") },
        ]);
    }
}

pub fn services<'a>(answers: impl IntoIterator<Item = (&'a String, &'a Service)>) -> Table {
    let mut table = Table::new(&["NODE", "SERVICE", "STATE", "SINCE", "RESTARTS", "PID", "LAST EXIT", "REASON"]);
    for (node, s) in answers {
        table.push(vec![
            node.clone(),
            s.name.clone(),
            s.state.clone(),
            timestamp(s.since_unix_ms),
            s.restarts.to_string(),
            or_dash(s.pid),
            or_dash(s.last_exit.as_ref()),
            s.reason.clone(),
        ]);
    }
    table
}

pub fn pods(answers: &[(String, Vec<Pod>)]) -> Table {
    let mut table = Table::new(&["NODE", "NAMESPACE", "POD", "PHASE", "READY", "RESTARTS", "IP", "MESSAGE"]);
    for (node, pods) in answers {
        for p in pods {
            let ready = p.containers.iter().filter(|c| c.ready).count();
            let restarts: u32 = p.containers.iter().map(|c| c.restart_count).sum();
            table.push(vec![
                node.clone(),
                p.namespace.clone(),
                p.name.clone(),
                p.phase.clone(),
                format!("{ready}/{}", p.containers.len()),
                restarts.to_string(),
                or_dash(p.pod_ip.as_ref()),
                or_dash(p.message.as_ref()),
            ]);
        }
    }
    table
}

pub fn accepted(answers: &[(String, Accepted)]) -> Table {
    let mut table = Table::new(&["NODE", "ACCEPTED"]);
    for (node, a) in answers {
        table.push(vec![node.clone(), a.action.clone()]);
    }
    table
}

pub fn etcd_members(answers: &[(String, Vec<EtcdMember>)]) -> Table {
    let mut table = Table::new(&["NODE", "ID", "NAME", "PEER URLS", "CLIENT URLS", "LEARNER"]);
    for (node, members) in answers {
        for m in members {
            table.push(vec![
                node.clone(),
                m.id.clone(),
                m.name.clone(),
                m.peer_urls.join(","),
                m.client_urls.join(","),
                m.is_learner.to_string(),
            ]);
        }
    }
    table
}

pub fn etcd_statuses(answers: &[(String, EtcdStatus)]) -> Table {
    let mut table = Table::new(&["NODE", "VERSION", "DB SIZE", "LEADER", "RAFT INDEX", "RAFT TERM", "ERRORS"]);
    for (node, s) in answers {
        table.push(vec![
            node.clone(),
            s.version.clone(),
            bytes(u64::try_from(s.db_size_bytes).unwrap_or(0)),
            s.leader.clone(),
            s.raft_index.to_string(),
            s.raft_term.to_string(),
            if s.errors.is_empty() { "-".into() } else { s.errors.join("; ") },
        ]);
    }
    table
}

pub fn etcd_alarms(answers: &[(String, Vec<EtcdAlarm>)]) -> Table {
    let mut table = Table::new(&["NODE", "MEMBER", "ALARM"]);
    for (node, alarms) in answers {
        for a in alarms {
            table.push(vec![node.clone(), a.member.clone(), a.alarm.clone()]);
        }
    }
    table
}

pub fn upgrades(answers: &[(String, UpgradeResult)]) -> Table {
    let mut table = Table::new(&["NODE", "VERSION", "SLOT", "ENTRY", "REBOOTING"]);
    for (node, u) in answers {
        table.push(vec![node.clone(), u.version.clone(), u.slot.clone(), u.entry.clone(), u.rebooting.to_string()]);
    }
    table
}

/// A log line for the table format: time and text, the node first when
/// several nodes' lines interleave.
pub fn log_line(node: Option<&str>, line: &LogLine) -> String {
    let prefix = node.map(|n| format!("{n}: ")).unwrap_or_default();
    match line.skipped {
        Some(skipped) => {
            format!("{prefix}{} [{skipped} lines skipped: this reader fell behind]\n", timestamp(line.at_unix_ms))
        }
        None => format!("{prefix}{} {}\n", timestamp(line.at_unix_ms), line.text),
    }
}

/// Text (a config, a diff) for the table format, each line prefixed with
/// the node when several nodes are shown.
pub fn text_block(node: Option<&str>, text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if let Some(node) = node {
            out += &format!("{node}: ");
        }
        out += line;
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_api::types::{Container, Memory, Stage};
    use std::collections::BTreeMap;

    fn service(name: &str, state: &str, pid: Option<i32>) -> Service {
        Service {
            name: name.into(),
            state: state.into(),
            reason: "started".into(),
            since_unix_ms: 1_700_000_000_000,
            restarts: 2,
            pid,
            last_exit: None,
        }
    }

    #[test]
    fn a_table_aligns_columns_and_leaves_the_last_unpadded() {
        let mut table = Table::new(&["NODE", "NAME", "NOTE"]);
        table.push(vec!["cp1".into(), "containerd".into(), "x".into()]);
        table.push(vec!["worker-1".into(), "k".into(), "".into()]);
        assert_eq!(table.render(), "NODE      NAME        NOTE\ncp1       containerd  x\nworker-1  k\n");
    }

    #[test]
    fn services_are_one_row_per_node_and_service() {
        let cp1 = "cp1".to_owned();
        let w1 = "w1".to_owned();
        let a = service("kubelet", "running", Some(42));
        let b = service("containerd", "stopped", None);
        let text = services([(&cp1, &a), (&w1, &b)]).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NODE  SERVICE     STATE    SINCE"), "{text}");
        assert!(
            lines[1].starts_with("cp1   kubelet     running  2023-11-14T22:13:20.000Z  2         42   -"),
            "{text}"
        );
        assert!(lines[2].starts_with("w1    containerd  stopped"), "{text}");
    }

    #[test]
    fn pods_show_ready_containers_and_summed_restarts() {
        let container = |ready, restarts| Container {
            name: "c".into(),
            image: "i".into(),
            state: "running".into(),
            reason: None,
            ready,
            restart_count: restarts,
        };
        let pod = Pod {
            namespace: "kube-system".into(),
            name: "etcd-cp1".into(),
            uid: "u".into(),
            phase: "Running".into(),
            ready: false,
            pod_ip: Some("192.168.100.10".into()),
            message: None,
            containers: vec![container(true, 1), container(false, 3)],
        };
        let text = pods(&[("cp1".into(), vec![pod])]).render();
        assert_eq!(
            text.lines().nth(1),
            Some("cp1   kube-system  etcd-cp1  Running  1/2    4         192.168.100.10  -")
        );
    }

    #[test]
    fn status_shows_maintenance_with_its_reason_and_stages() {
        let status = NodeStatus {
            node: "cp1".into(),
            phase: Phase::Maintenance,
            maintenance: Some(kelson_api::types::Maintenance { stage: "network".into(), reason: "no link".into() }),
            stages: vec![Stage {
                name: "network".into(),
                state: StageState::Failed,
                started_boot_ms: 1200,
                elapsed_ms: Some(61_000),
                error: Some("no link".into()),
            }],
            conditions: BTreeMap::new(),
            addresses: vec![],
            uptime_ms: 3_723_000,
            memory: Memory {
                total_bytes: 2 << 30,
                available_bytes: 3 << 29,
                pid1_rss_bytes: 12 << 20,
                pid1_rss_anon_bytes: 8 << 20,
                pid1_rss_file_bytes: 4 << 20,
                pid1_threads: 4,
            },
            boot: None,
            etcd: None,
        };
        let text = statuses(&[("cp1".into(), status)]);
        assert!(
            text.contains(
                "cp1   maintenance (network: no link)  1h02m   -          1.5 GiB of 2.0 GiB  12.0 MiB   direct"
            ),
            "{text}"
        );
        assert!(text.contains("cp1   network  failed  1.2s     1m01s    no link"), "{text}");
    }

    #[test]
    fn status_shows_a_joining_etcd_member_with_its_reason_and_the_members_health() {
        use kelson_api::types::{EtcdJoinProgress, EtcdMemberHealth, NodeEtcd};
        let member = |id: &str, name: &str, learner, reachable, leader, errors: &[&str]| EtcdMemberHealth {
            id: id.into(),
            name: name.into(),
            learner,
            reachable,
            leader,
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
        };
        let mut status = kelson_api::backend::Node::status(&kelson_api::fake::FakeNode::new());
        status.etcd = Some(NodeEtcd {
            join: Some(EtcdJoinProgress {
                state: "learner".into(),
                member_id: Some("b1".into()),
                attempts: 2,
                reason: Some("promoting etcd learner b1: not in sync".into()),
            }),
            members: vec![
                member("a1", "cp-1", false, true, true, &[]),
                member("b1", "", true, false, false, &["not started: no client URLs"]),
            ],
            members_error: None,
        });

        let text = statuses(&[("cp-2".into(), status)]);

        assert!(text.contains("ETCD MEMBER"), "{text}");
        assert!(
            text.contains("cp-2  (this node)    b1  joining: learner (2 failed attempts)  -            promoting etcd learner b1: not in sync"),
            "{text}"
        );
        assert!(text.contains("cp-2  cp-1           a1  leader"), "{text}");
        assert!(text.contains("cp-2  (not started)  b1  learner"), "{text}");
        assert!(text.contains("unreachable  not started: no client URLs"), "{text}");
    }

    #[test]
    fn one_node_is_printed_alone_and_several_as_a_map_in_order() {
        let v = |node: &str| Version { node: node.into(), version: "0.1.0".into(), api: "v1".into() };
        let one = answers(&[("cp1".to_owned(), v("cp1"))], false, Format::Json).unwrap();
        assert_eq!(one, "{\n  \"node\": \"cp1\",\n  \"version\": \"0.1.0\",\n  \"api\": \"v1\"\n}\n");
        let two = answers(&[("w1".to_owned(), v("w1")), ("cp1".to_owned(), v("cp1"))], true, Format::Yaml).unwrap();
        assert!(two.starts_with("w1:\n"), "{two}");
        assert!(two.contains("\ncp1:\n"), "{two}");
    }

    #[test]
    fn log_lines_carry_the_node_only_when_several_interleave() {
        let line = LogLine { at_unix_ms: 1_700_000_000_123, text: "hello".into(), skipped: None };
        assert_eq!(log_line(None, &line), "2023-11-14T22:13:20.123Z hello\n");
        assert_eq!(log_line(Some("cp1"), &line), "cp1: 2023-11-14T22:13:20.123Z hello\n");
        let gap = LogLine { skipped: Some(7), ..line };
        assert!(log_line(None, &gap).contains("[7 lines skipped"));
    }

    #[test]
    fn sizes_and_durations_read_short() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(5_250), "5.2s");
        assert_eq!(duration(184_000), "3m04s");
    }
}
