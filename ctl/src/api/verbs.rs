//! The verbs: each is run against every target node concurrently; the
//! answers are printed in the nodes' order, each failure on stderr as
//! `NODE (ENDPOINT): what was being done: why`.

use super::client::{Client, NodeClient, RequestError};
use super::config::NodeEntry;
use super::output::{self, Format, RenderError};
use kelson_api::types::{
    Accepted, ApplyConfig, ApplyResult, EtcdAlarm, EtcdMember, EtcdStatus, LogLine, LogSource, NodeStatus, Pod,
    ResetRequest, Service, ServiceAction, UpgradeResult, Version,
};
use serde::Serialize;
use std::error::Error as StdError;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// What to ask the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Version,
    Status,
    Services,
    Service { name: String, action: ServiceAction },
    Logs { source: LogSource, follow: bool, tail: Option<u32> },
    Pods,
    ConfigGet,
    ConfigApply { file: PathBuf, dry_run: bool },
    Reboot,
    Shutdown,
    Reset { confirm: String },
    EtcdMembers,
    EtcdStatus,
    EtcdAlarms,
    EtcdSnapshot { file: PathBuf },
    Upgrade { image: PathBuf, reboot: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("writing the output")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("reading config {}", .path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd snapshot writes one file from one node, and {0} nodes were selected")]
    SnapshotFromSeveralNodes(usize),
}

/// How a run went: the verb's output is printed; this says whether every
/// node answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failed_nodes: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not SERVICE, POD/CONTAINER (in kube-system) or NAMESPACE/POD/CONTAINER")]
pub struct LogSourceError(String);

/// `SERVICE`, `POD/CONTAINER` (namespace kube-system, where static pods
/// are) or `NAMESPACE/POD/CONTAINER`.
pub fn parse_log_source(text: &str) -> Result<LogSource, LogSourceError> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(LogSourceError(text.to_owned()));
    }
    let container = |namespace: &str, pod: &str, container: &str| LogSource::Container {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
    };
    match parts.as_slice() {
        [service] => Ok(LogSource::Service((*service).to_owned())),
        [pod, name] => Ok(container("kube-system", pod, name)),
        [namespace, pod, name] => Ok(container(namespace, pod, name)),
        _ => Err(LogSourceError(text.to_owned())),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// name can be a path segment.
fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out += &format!("%{byte:02X}");
        }
    }
    out
}

fn log_path(source: &LogSource, follow: bool, tail: Option<u32>) -> String {
    let mut path = match source {
        LogSource::Service(name) => format!("/v1/logs/services/{}", segment(name)),
        LogSource::Container { namespace, pod, container } => {
            format!("/v1/logs/pods/{}/{}/{}", segment(namespace), segment(pod), segment(container))
        }
        LogSource::Kernel => "/v1/logs/kernel".to_owned(),
        LogSource::Init => "/v1/logs/init".to_owned(),
    };
    let mut query = Vec::new();
    if let Some(tail) = tail {
        query.push(format!("tail={tail}"));
    }
    if follow {
        query.push("follow=true".to_owned());
    }
    if !query.is_empty() {
        path += "?";
        path += &query.join("&");
    }
    path
}

fn describe_source(source: &LogSource) -> String {
    match source {
        LogSource::Service(name) => format!("service {name}"),
        LogSource::Container { namespace, pod, container } => format!("container {namespace}/{pod}/{container}"),
        LogSource::Kernel => "the kernel".to_owned(),
        LogSource::Init => "PID 1".to_owned(),
    }
}

/// `error` and its causes, `: `-separated.
pub fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += ": ";
        text += &cause.to_string();
        source = cause.source();
    }
    text
}

/// What the run prints to, and about which nodes.
pub struct Run<'a> {
    pub client: &'a Client,
    pub nodes: &'a [NodeEntry],
    pub format: Format,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

struct Collected<T> {
    answers: Vec<(String, T)>,
    failed: usize,
}

impl Run<'_> {
    fn several(&self) -> bool {
        self.nodes.len() > 1
    }

    fn print(&mut self, text: &str) -> Result<(), RunError> {
        self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()).map_err(RunError::Write)
    }

    fn report(&mut self, node: &NodeEntry, doing: &str, error: &RequestError) -> Result<(), RunError> {
        let line = format!("kelsonctl: error: {} ({}): {doing}: {}\n", node.name, node.endpoint, error_chain(error));
        self.err.write_all(line.as_bytes()).map_err(RunError::Write)
    }

    /// Runs `call` against every node at once; reports failures.
    async fn each<T, F, Fut>(&mut self, doing: &str, call: F) -> Result<Collected<T>, RunError>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = Result<T, RequestError>>,
    {
        let calls = self.nodes.iter().map(|node| call(self.client.node(node)));
        let results = futures_util::future::join_all(calls).await;
        let mut collected = Collected { answers: Vec::new(), failed: 0 };
        for (node, result) in self.nodes.iter().zip(results) {
            match result {
                Ok(answer) => collected.answers.push((node.name.clone(), answer)),
                Err(error) => {
                    collected.failed += 1;
                    self.report(node, doing, &error)?;
                }
            }
        }
        Ok(collected)
    }

    /// `each`, then the answers as a table or as the API's objects.
    async fn simple<T, F, Fut>(
        &mut self,
        doing: &str,
        call: F,
        table: fn(&[(String, T)]) -> String,
    ) -> Result<Outcome, RunError>
    where
        T: Serialize,
        F: Fn(NodeClient) -> Fut,
        Fut: Future<Output = Result<T, RequestError>>,
    {
        let collected = self.each(doing, call).await?;
        let text = match self.format {
            Format::Table if collected.answers.is_empty() => String::new(),
            Format::Table => table(&collected.answers),
            format => output::answers(&collected.answers, self.several(), format)?,
        };
        self.print(&text)?;
        Ok(Outcome { failed_nodes: collected.failed })
    }

    pub async fn verb(&mut self, verb: &Verb) -> Result<Outcome, RunError> {
        match verb {
            Verb::Version => {
                self.simple(
                    "getting the version",
                    |n| async move { n.get::<Version>("/v1/version").await },
                    |a| output::versions(a).render(),
                )
                .await
            }
            Verb::Status => {
                self.simple(
                    "getting the status",
                    |n| async move { n.get::<NodeStatus>("/v1/status").await },
                    output::statuses,
                )
                .await
            }
            Verb::Services => {
                self.simple(
                    "listing services",
                    |n| async move { n.get::<Vec<Service>>("/v1/services").await },
                    |a| {
                        output::services(a.iter().flat_map(|(node, list)| list.iter().map(move |s| (node, s)))).render()
                    },
                )
                .await
            }
            Verb::Service { name, action } => {
                let doing = match action {
                    ServiceAction::Start => format!("starting service {name}"),
                    ServiceAction::Stop => format!("stopping service {name}"),
                    ServiceAction::Restart => format!("restarting service {name}"),
                };
                let path = format!("/v1/services/{}/{}", segment(name), action.as_str());
                self.simple(
                    &doing,
                    |n| {
                        let path = path.clone();
                        async move { n.post::<(), Service>(&path, None).await }
                    },
                    |a| output::services(a.iter().map(|(node, s)| (node, s))).render(),
                )
                .await
            }
            Verb::Pods => {
                self.simple(
                    "listing pods",
                    |n| async move { n.get::<Vec<Pod>>("/v1/pods").await },
                    |a| output::pods(a).render(),
                )
                .await
            }
            Verb::ConfigGet => {
                let several = self.several();
                let collected = self
                    .each("getting the config", |n| async move {
                        n.get::<kelson_api::types::EffectiveConfig>("/v1/config").await
                    })
                    .await?;
                let text = match self.format {
                    Format::Table => collected
                        .answers
                        .iter()
                        .map(|(node, config)| output::text_block(several.then_some(node.as_str()), &config.yaml))
                        .collect(),
                    format => output::answers(&collected.answers, several, format)?,
                };
                self.print(&text)?;
                Ok(Outcome { failed_nodes: collected.failed })
            }
            Verb::ConfigApply { file, dry_run } => self.config_apply(file, *dry_run).await,
            Verb::Reboot => self.power("rebooting", "/v1/reboot", None).await,
            Verb::Shutdown => self.power("shutting down", "/v1/shutdown", None).await,
            Verb::Reset { confirm } => {
                self.power("resetting", "/v1/reset", Some(ResetRequest { confirm: confirm.clone() })).await
            }
            Verb::EtcdMembers => {
                self.simple(
                    "listing etcd members",
                    |n| async move { n.get::<Vec<EtcdMember>>("/v1/etcd/members").await },
                    |a| output::etcd_members(a).render(),
                )
                .await
            }
            Verb::EtcdStatus => {
                self.simple(
                    "getting etcd's status",
                    |n| async move { n.get::<EtcdStatus>("/v1/etcd/status").await },
                    |a| output::etcd_statuses(a).render(),
                )
                .await
            }
            Verb::EtcdAlarms => {
                self.simple(
                    "listing etcd alarms",
                    |n| async move { n.get::<Vec<EtcdAlarm>>("/v1/etcd/alarms").await },
                    |a| output::etcd_alarms(a).render(),
                )
                .await
            }
            Verb::EtcdSnapshot { file } => self.snapshot(file).await,
            Verb::Upgrade { image, reboot } => {
                let path = format!("/v1/upgrade{}", if *reboot { "?reboot=true" } else { "" });
                let doing = format!("installing {}", image.display());
                self.simple(
                    &doing,
                    |n| {
                        let path = path.clone();
                        async move { n.upload::<UpgradeResult>(&path, image).await }
                    },
                    |a| output::upgrades(a).render(),
                )
                .await
            }
            Verb::Logs { source, follow, tail } => self.logs(source, *follow, *tail).await,
        }
    }

    async fn power(&mut self, doing: &str, path: &str, body: Option<ResetRequest>) -> Result<Outcome, RunError> {
        self.simple(
            doing,
            |n| {
                let body = body.clone();
                async move { n.post::<ResetRequest, Accepted>(path, body.as_ref()).await }
            },
            |a| output::accepted(a).render(),
        )
        .await
    }

    async fn config_apply(&mut self, file: &std::path::Path, dry_run: bool) -> Result<Outcome, RunError> {
        let document =
            std::fs::read_to_string(file).map_err(|source| RunError::ReadConfig { path: file.to_owned(), source })?;
        let request = ApplyConfig { document, dry_run };
        let doing = if dry_run {
            format!("checking config {} (dry run)", file.display())
        } else {
            format!("applying config {}", file.display())
        };
        let several = self.several();
        let calls = self.nodes.iter().map(|node| {
            let client = self.client.node(node);
            let request = &request;
            async move { client.post::<ApplyConfig, ApplyResult>("/v1/config", Some(request)).await }
        });
        let results = futures_util::future::join_all(calls).await;
        let mut answers = Vec::new();
        let mut failed = 0;
        for (node, result) in self.nodes.iter().zip(results) {
            match result {
                Ok(answer) => answers.push((node.name.clone(), answer)),
                Err(error) => {
                    failed += 1;
                    self.report(node, &doing, &error)?;
                    if let RequestError::Rejected(result) = &error {
                        let prefix = if several { format!("{}: ", node.name) } else { String::new() };
                        for problem in &result.problems {
                            let line = format!("{prefix}{}: {}: {}\n", problem.document, problem.path, problem.reason);
                            self.err.write_all(line.as_bytes()).map_err(RunError::Write)?;
                        }
                    }
                }
            }
        }
        let text = match self.format {
            Format::Table => answers.iter().map(|(node, result)| apply_text(several.then_some(node), result)).collect(),
            format => output::answers(&answers, several, format)?,
        };
        self.print(&text)?;
        Ok(Outcome { failed_nodes: failed })
    }

    async fn snapshot(&mut self, file: &std::path::Path) -> Result<Outcome, RunError> {
        if self.nodes.len() != 1 {
            return Err(RunError::SnapshotFromSeveralNodes(self.nodes.len()));
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Snapshot {
            file: String,
            bytes: u64,
        }
        let doing = format!("taking an etcd snapshot into {}", file.display());
        self.simple(
            &doing,
            |n| async move {
                let bytes = n.download("/v1/etcd/snapshot", file).await?;
                Ok(Snapshot { file: file.display().to_string(), bytes })
            },
            |a| {
                let mut table = output::Table::new(&["NODE", "FILE", "BYTES"]);
                for (node, s) in a {
                    table.push(vec![node.clone(), s.file.clone(), s.bytes.to_string()]);
                }
                table.render()
            },
        )
        .await
    }

    async fn logs(&mut self, source: &LogSource, follow: bool, tail: Option<u32>) -> Result<Outcome, RunError> {
        enum Event {
            Line(LogLine),
            Failed(RequestError),
        }
        let path = log_path(source, follow, tail);
        let doing = format!("reading the log of {}", describe_source(source));
        let several = self.several();
        let (sender, mut events) = mpsc::channel::<(usize, Event)>(256);
        let mut readers = tokio::task::JoinSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let client = self.client.node(node);
            let sender = sender.clone();
            let path = path.clone();
            readers.spawn(async move {
                let result = async {
                    let mut lines = client.log_lines(&path).await?;
                    while let Some(line) = lines.next().await? {
                        if sender.send((index, Event::Line(line))).await.is_err() {
                            break;
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(error) = result {
                    let _ = sender.send((index, Event::Failed(error))).await;
                }
            });
        }
        drop(sender);
        let mut failed = 0;
        while let Some((index, event)) = events.recv().await {
            let node = &self.nodes[index];
            match event {
                Event::Line(line) => {
                    let text = log_text(several.then_some(node.name.as_str()), &line, self.format)?;
                    self.print(&text)?;
                }
                Event::Failed(error) => {
                    failed += 1;
                    let node = node.clone();
                    self.report(&node, &doing, &error)?;
                }
            }
        }
        while readers.join_next().await.is_some() {}
        Ok(Outcome { failed_nodes: failed })
    }
}

fn log_text(node: Option<&str>, line: &LogLine, format: Format) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct NodeLine<'a> {
        node: &'a str,
        #[serde(flatten)]
        line: &'a LogLine,
    }
    match (format, node) {
        (Format::Table, _) => Ok(output::log_line(node, line)),
        (Format::Json, None) => serde_json::to_string(line).map(|t| t + "\n").map_err(RenderError::Json),
        (Format::Json, Some(node)) => {
            serde_json::to_string(&NodeLine { node, line }).map(|t| t + "\n").map_err(RenderError::Json)
        }
        // One sequence item per line: the whole output is a YAML list.
        (Format::Yaml, None) => output::serialized(&[line], Format::Yaml),
        (Format::Yaml, Some(node)) => output::serialized(&[NodeLine { node, line }], Format::Yaml),
    }
}

fn apply_text(node: Option<&String>, result: &ApplyResult) -> String {
    let node = node.map(String::as_str);
    let list = |items: &[String]| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    let mut text = String::new();
    if result.dry_run {
        text += "dry run: nothing was changed\n";
    }
    if result.diff.trim().is_empty() {
        text += "no changes\n";
    } else {
        text += &result.diff;
        if !result.diff.ends_with('\n') {
            text += "\n";
        }
    }
    let live = if result.dry_run { "would apply live" } else { "applied live" };
    text += &format!("{live}: {}\n", list(&result.applied_live));
    text += &format!("reboot required for: {}\n", list(&result.reboot_required));
    for error in &result.live_errors {
        text += &format!("failed live (saved; applies at the next boot): {error}\n");
    }
    output::text_block(node, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_without_namespace_is_in_kube_system() {
        assert_eq!(parse_log_source("kubelet").unwrap(), LogSource::Service("kubelet".into()));
        assert_eq!(
            parse_log_source("etcd-cp1/etcd").unwrap(),
            LogSource::Container { namespace: "kube-system".into(), pod: "etcd-cp1".into(), container: "etcd".into() }
        );
        assert_eq!(
            parse_log_source("default/web/nginx").unwrap(),
            LogSource::Container { namespace: "default".into(), pod: "web".into(), container: "nginx".into() }
        );
        assert!(parse_log_source("a/b/c/d").is_err());
        assert!(parse_log_source("a//c").is_err());
    }

    #[test]
    fn log_paths_carry_tail_and_follow_and_escape_names() {
        assert_eq!(log_path(&LogSource::Kernel, true, Some(10)), "/v1/logs/kernel?tail=10&follow=true");
        assert_eq!(log_path(&LogSource::Init, false, None), "/v1/logs/init");
        assert_eq!(log_path(&LogSource::Service("a b".into()), false, None), "/v1/logs/services/a%20b");
    }

    #[test]
    fn an_applied_config_shows_diff_and_both_lists() {
        let result = ApplyResult {
            dry_run: true,
            problems: vec![],
            diff: "-a: 1\n+a: 2\n".into(),
            applied_live: vec!["sysctls".into()],
            reboot_required: vec![],
            live_errors: vec![],
        };
        let cp1 = "cp1".to_owned();
        assert_eq!(
            apply_text(Some(&cp1), &result),
            "cp1: dry run: nothing was changed\ncp1: -a: 1\ncp1: +a: 2\ncp1: would apply live: sysctls\n\
             cp1: reboot required for: none\n"
        );
    }
}
