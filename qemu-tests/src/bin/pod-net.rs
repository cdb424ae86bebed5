//! Test-only guest program: calls kelson-net's pod attach API the way the
//! pods service will, so the QEMU network tests exercise it on a real node.
//!
//! ```text
//! pod-net attach NETNS_PATH POD_ID   prints the pod's address, e.g. 10.244.0.2/24
//! pod-net detach POD_ID
//! ```
//! The bridge plan comes from the node's effective config
//! (/run/kelson/config/effective.yaml); allocations are kept where the node
//! keeps them (/var/lib/kelson/net).

use anyhow::{bail, Context, Result};
use kelson_net::{NetPlan, PodNetwork, RtNetlink};
use std::path::Path;

const EFFECTIVE_CONFIG: &str = "/run/kelson/config/effective.yaml";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = std::fs::read_to_string(EFFECTIVE_CONFIG).with_context(|| format!("reading {EFFECTIVE_CONFIG}"))?;
    let config = kelson_config::parse(EFFECTIVE_CONFIG, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = NetPlan::from_config(&config.network).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let Some(bridge) = plan.bridge else { bail!("the node's config has no pod CIDR, so no bridge") };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let pods = PodNetwork::new(RtNetlink::open()?, bridge, Path::new(kelson_net::pods::DEFAULT_STATE_DIR));
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["attach", netns, id] => {
                let attached = pods.attach(Path::new(netns), id).await?;
                println!("{}", attached.ip);
            }
            ["detach", id] => pods.detach(id).await?,
            _ => bail!("usage: pod-net attach NETNS_PATH POD_ID | pod-net detach POD_ID"),
        }
        Ok(())
    })
}
