//! Test-only guest program: applies a machine config's `network` section
//! with kelson-net, as PID 1's network stage does, but as an ordinary
//! process started from a shell. `cargo xtask bench net` times it beside the
//! seed notes' shell commands under the same conditions.
//!
//! ```text
//! net-apply MACHINE_CONFIG.yaml
//! ```

use anyhow::{bail, Context, Result};
use kelson_net::{Host, NetPlan, Networking, Paths, RtNetlink, StdRunner};

fn main() -> Result<()> {
    let Some(path) = std::env::args().nth(1) else { bail!("usage: net-apply MACHINE_CONFIG.yaml") };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let config = kelson_config::parse(&path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = NetPlan::from_config(&config.network).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let host = Host { netlink: RtNetlink::open()?, runner: StdRunner, paths: Paths::default() };
        let mut networking = Networking::new(host);
        anyhow::Ok(networking.apply(&plan).await)
    })?;
    if !report.ok() {
        bail!("network steps failed: {report:?}");
    }
    Ok(())
}
