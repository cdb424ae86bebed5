//! The shim's wire protocol: one JSON object per line over a unix stream
//! socket. The client sends [`Request`]s, each with a sequence number; the
//! shim answers each with a [`ShimMessage::Reply`] carrying that number, sends
//! [`ShimMessage::Hello`] (every container it knows) when a client connects,
//! and [`ShimMessage::Exit`] whenever a container's process exits.
//!
//! ```text
//! → {"seq":1,"op":"create","id":"etcd","bundle":"/run/kelson/pods/etcd/etcd","stdout":"/var/log/pods/etcd.log","stderr":null}
//! ← {"type":"reply","seq":1,"result":{"Ok":[{"id":"etcd","bundle":"…","pid":812,"exit":null}]}}
//! ← {"type":"exit","id":"etcd","pid":812,"code":null,"signal":9,"oom_killed":true}
//! ```

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the client asks of the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create the container from the bundle and start it. Its stdout and
    /// stderr are appended to the given files (created if missing), or go to
    /// /dev/null.
    Create { id: String, bundle: PathBuf, stdout: Option<PathBuf>, stderr: Option<PathBuf> },
    /// Send `signal` to the container's process.
    Kill { id: String, signal: i32 },
    /// Remove an exited container: its cgroup and runtime state.
    Delete { id: String },
    /// One container's state.
    State { id: String },
    /// Every container's state.
    List,
}

/// A request on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// How a container's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    pub id: String,
    pub pid: i32,
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether the container's cgroup recorded an OOM kill
    /// (`memory.events` `oom_kill` above zero).
    pub oom_killed: bool,
}

/// A container the shim knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub pid: i32,
    /// `None` while it runs.
    pub exit: Option<ExitEvent>,
}

/// What the shim sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimMessage {
    /// Sent first on every connection: the containers as they are now,
    /// including exits that happened while no client was connected.
    Hello { containers: Vec<ContainerState> },
    /// The answer to request `seq`: the containers it concerns, or why it failed.
    Reply { seq: u64, result: Result<Vec<ContainerState>, String> },
    /// A container's process exited.
    Exit(ExitEvent),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_json_objects_with_seq_and_op() {
        let line =
            serde_json::to_string(&Envelope { seq: 7, request: Request::Kill { id: "a".into(), signal: 9 } }).unwrap();
        assert_eq!(line, r#"{"seq":7,"op":"kill","id":"a","signal":9}"#);
        let back: Envelope = serde_json::from_str(r#"{"op":"list","seq":2}"#).unwrap();
        assert_eq!(back, Envelope { seq: 2, request: Request::List });
    }

    #[test]
    fn messages_round_trip() {
        let exit = ExitEvent { id: "a".into(), pid: 5, code: None, signal: Some(9), oom_killed: true };
        for message in [
            ShimMessage::Exit(exit.clone()),
            ShimMessage::Reply { seq: 1, result: Err("no container \"b\"".into()) },
            ShimMessage::Hello {
                containers: vec![ContainerState { id: "a".into(), bundle: "/b".into(), pid: 5, exit: Some(exit) }],
            },
        ] {
            let line = serde_json::to_string(&message).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<ShimMessage>(&line).unwrap(), message);
        }
    }
}
