//! `cmdline`: every unknown `kelson.*` key is reported, and a misspelling
//! of a key that changes what the node does (`kelson.stat=/dev/vdb`) stops
//! boot, before the state disk or the config is looked at.

use crate::boot::{BootContext, Done, StageError};
use tracing::warn;

/// Keys that are near misses of keys that change what the node does.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct MisspelledKeys(Vec<String>);

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    crate::power_cut::install(&ctx.cmdline, ctx.status.subscribe());
    let unknown = ctx.cmdline.unknown_kelson_keys();
    for key in unknown.iter().filter(|k| !k.stops_boot) {
        warn!("{key}");
    }
    let stopping: Vec<String> = unknown.iter().filter(|k| k.stops_boot).map(ToString::to_string).collect();
    for line in &stopping {
        tracing::error!("{line}");
    }
    if stopping.is_empty() {
        Ok(Done::Finished)
    } else {
        Err(MisspelledKeys(stopping).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn a_near_miss_of_a_meaningful_key_fails_the_stage_and_an_unknown_key_does_not() {
        let k = FakeKernel::default();
        assert!(run(&mut ctx(&k, "kelson.no_such_thing=1")).is_ok());
        let err = run(&mut ctx(&k, "kelson.stat=/dev/vdb")).err().expect("stops boot");
        assert!(err.to_string().contains("kelson.stat"), "{err}");
        assert!(k.calls().is_empty(), "the stage reads only the command line: {:?}", k.calls());
    }
}
