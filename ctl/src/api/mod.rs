//! Driving nodes over the management API: the kelsonconfig file
//! ([`config`]), the mutual-TLS client ([`client`]), how answers are printed
//! ([`output`]) and the verbs ([`verbs`]).

pub mod client;
pub mod config;
pub mod output;
pub mod verbs;

pub use client::{Client, ClientSetupError, RequestError};
pub use config::{choose_config, select_nodes, ConfigChoice, KelsonConfig, NodeEntry};
pub use output::Format;
pub use verbs::{Outcome, Run, RunError, Verb};
