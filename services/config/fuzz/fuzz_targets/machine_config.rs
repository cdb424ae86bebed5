//! Any text as a machine config document: parsing and layering must give a
//! config or errors, never panic, and an accepted config must survive being
//! written out and read back.
#![no_main]

use kelson_config::{resolve, Layer, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = kelson_config::parse("fuzz", text) {
        let again = kelson_config::parse("fuzz (written back)", &config.to_yaml_with_secrets());
        assert_eq!(again.as_ref().ok(), Some(&config), "a config did not survive being written back");
    }
    if let Ok(layer) = Layer::from_document(Source::Api, "fuzz", text) {
        let _ = resolve(&[layer]);
    }
});
