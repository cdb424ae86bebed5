//! The audit log: one JSON line per write request, allowed or refused.

use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// One write request as the audit log keeps it. Never holds a request
/// body: a config may carry secrets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord<'a> {
    pub at_unix_ms: u64,
    /// The client certificate's subject CN.
    pub subject: &'a str,
    /// The client certificate's serial number, hex.
    pub serial: &'a str,
    /// `null` when the certificate names no known role.
    pub role: Option<&'static str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// What was asked, in a few words (`kubelet restart`, `dryRun=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("creating the audit log's directory {}", .path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("appending to the audit log {}", .path.display())]
    Append { path: PathBuf, source: std::io::Error },
}

/// Appends `record` as one line to the log at `path`, creating the file
/// (0600) and its directories (0700) as needed.
pub async fn append(path: &Path, record: &AuditRecord<'_>) -> Result<(), AuditError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .await
            .map_err(|source| AuditError::CreateDir { path: dir.to_owned(), source })?;
    }
    // Serializing plain strings and numbers cannot fail.
    let mut line = serde_json::to_vec(record).unwrap_or_default();
    line.push(b'\n');
    let append_error = |source| AuditError::Append { path: path.to_owned(), source };
    let mut file =
        tokio::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).await.map_err(append_error)?;
    // One write of the whole line: O_APPEND keeps concurrent lines whole.
    file.write_all(&line).await.map_err(append_error)?;
    file.flush().await.map_err(append_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn records_are_appended_as_lines_to_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/audit.log");
        let record = AuditRecord {
            at_unix_ms: 1,
            subject: "alice",
            serial: "0a",
            role: Some(crate::ROLE_ADMIN),
            method: "POST",
            path: "/v1/reboot",
            status: 202,
            what: None,
        };
        append(&path, &record).await.unwrap();
        append(&path, &AuditRecord { status: 403, ..record }).await.unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["subject"], "alice");
        assert_eq!(lines[1]["status"], 403);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
