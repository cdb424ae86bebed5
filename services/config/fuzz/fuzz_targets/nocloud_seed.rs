//! Any bytes as a NoCloud seed's three files (split at the first two NUL
//! bytes): reading the seed and resolving its layers must never panic.
#![no_main]

use kelson_config::nocloud::{read_seed, SeedFiles};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0').map(str::to_owned);
    let files = SeedFiles {
        origin: "fuzz".into(),
        meta_data: parts.next(),
        user_data: parts.next(),
        network_config: parts.next(),
    };
    if let Ok(seed) = read_seed(&files) {
        let _ = kelson_config::resolve(&seed.layers);
        let _ = seed.combined("fuzz");
    }
});
