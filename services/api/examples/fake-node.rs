//! Serves a FakeNode on 127.0.0.1 for tools that test the API from outside
//! (schemathesis in `cargo xtask test`, kelsonctl by hand).
//!
//! `cargo run -p kelson-api --features fake --example fake-node -- DIR`
//! writes a throwaway PKI into DIR (ca.pem, server.pem, server-key.pem,
//! admin.pem, admin-key.pem), serves with the audit log DIR/audit.log on a
//! free port, prints `port N` on stdout, and serves until killed. Log
//! follows end after their backlog, so no request hangs.

use anyhow::{bail, Context, Result};
use kelson_api::fake::{FakeNode, TestPki};
use kelson_api::types::LogSource;
use kelson_api::{serve, ServerSettings};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        bail!("usage: fake-node DIR (where the throwaway PKI and the audit log are written)");
    };
    let dir = PathBuf::from(dir);
    let pki = TestPki::generate("fake-node CA").context("generating the throwaway PKI")?;
    pki.write_to(&dir).with_context(|| format!("writing the throwaway PKI to {}", dir.display()))?;

    let node = Arc::new(FakeNode::new());
    node.push_log(&LogSource::Kernel, "Linux version 6.12.0 (fake)");
    node.push_log(&LogSource::Init, "kelson: ready");
    node.push_log(&LogSource::Service("kubelet".to_owned()), "I0101 kubelet started");
    node.close_logs();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let port = listener.local_addr().context("reading the listener's port")?.port();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "port {port}").and_then(|()| stdout.flush()).context("printing the port")?;

    let (_tls, tls_changes) = tokio::sync::watch::channel(Some(pki.tls_material()));
    serve(listener, node, tls_changes, ServerSettings { audit_log: Some(dir.join("audit.log")) }).await;
    Ok(())
}
