//! Property: whatever subset of fields each layer sets, every field of the
//! effective config comes from the highest-precedence layer that set it,
//! and `source_of` names that layer.
#![allow(clippy::unwrap_used)]

use kelson_config::{resolve, Layer, Source};
use proptest::prelude::*;

const SOURCES: [Source; 4] = [Source::ImageDefaults, Source::KernelCmdline, Source::CloudInit, Source::Api];

/// (hostname, mtu, podCIDR third octet) a layer may set, each optional.
type Fields = (Option<u8>, Option<u16>, Option<u8>);

fn document((host, mtu, pod): &Fields) -> String {
    let mut node = String::new();
    let mut network = String::new();
    if let Some(h) = host {
        node.push_str(&format!("  hostname: node-{h}\n"));
    }
    if let Some(m) = mtu {
        network.push_str(&format!("  mtu: {}\n", 576 + u32::from(*m) % 8000));
    }
    if let Some(p) = pod {
        network.push_str(&format!("  podCIDR: 10.244.{p}.0/24\n"));
    }
    let mut text =
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  clusterCIDR: 10.244.0.0/16\n".to_owned();
    text.push_str(&network);
    if !node.is_empty() {
        text.push_str("node:\n");
        text.push_str(&node);
    }
    text
}

proptest! {
    #[test]
    fn the_highest_layer_setting_a_field_wins(fields in proptest::collection::vec(any::<Fields>(), 4)) {
        let layers: Vec<Layer> = SOURCES
            .iter()
            .zip(&fields)
            .map(|(source, f)| Layer::from_document(*source, source.label(), &document(f)).unwrap())
            .collect();
        // Shuffle-independence: resolve orders by source itself.
        let mut reversed = layers.clone();
        reversed.reverse();
        let e = resolve(&reversed).unwrap();

        let winner = |pick: &dyn Fn(&Fields) -> bool| (0..4).rev().find(|i| pick(&fields[*i]));
        match winner(&|f| f.0.is_some()) {
            Some(i) => {
                prop_assert_eq!(e.config.node.hostname.clone(), Some(format!("node-{}", fields[i].0.unwrap())));
                prop_assert_eq!(e.source_of("node.hostname").map(|s| s.0), Some(SOURCES[i]));
            }
            None => prop_assert_eq!(e.config.node.hostname.clone(), None),
        }
        match winner(&|f| f.1.is_some()) {
            Some(i) => {
                prop_assert_eq!(e.config.network.mtu, Some(576 + u32::from(fields[i].1.unwrap()) % 8000));
                prop_assert_eq!(e.source_of("network.mtu").map(|s| s.0), Some(SOURCES[i]));
            }
            None => prop_assert_eq!(e.config.network.mtu, None),
        }
        match winner(&|f| f.2.is_some()) {
            Some(i) => prop_assert_eq!(e.config.network.pod_cidr.clone(), Some(format!("10.244.{}.0/24", fields[i].2.unwrap()))),
            None => prop_assert_eq!(e.config.network.pod_cidr.clone(), None),
        }
        // Every layer sets clusterCIDR, so the API layer is its origin.
        prop_assert_eq!(e.source_of("network.clusterCIDR").map(|s| s.0), Some(Source::Api));
    }
}
