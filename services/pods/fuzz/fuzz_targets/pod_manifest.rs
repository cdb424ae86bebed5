//! Any bytes as a static pod manifest, read both as YAML and as JSON:
//! parsing and validation must give a pod spec or errors naming the file,
//! never panic, and must give the same answer twice (the pod UID is derived
//! from the file, so a spec that changed between reads would restart pods).
#![no_main]

use kelson_pods::manifest::{parse, LoadOptions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let options = LoadOptions { node_name: Some("fuzz-node".to_owned()) };
    for name in ["fuzz.yaml", "fuzz.json"] {
        let path = Path::new(name);
        match parse(path, data, &options) {
            Ok(spec) => {
                let again = parse(path, data, &options);
                assert_eq!(again.as_ref().ok(), Some(&spec), "{name}: the same bytes gave another spec");
            }
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains(name), "{name}: the error does not name the file: {message}");
            }
        }
    }
});
