//! The power button. QEMU's `system_powerdown` and a real chassis button
//! both arrive as an ACPI event that the kernel's `button` driver turns into
//! KEY_POWER on an input event device; PID 1 reads those devices directly
//! (there is no acpid or logind on a Kelson node).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

const EV_KEY: u16 = 1;
pub const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: a 16-byte timeval, type, code, value.
pub const INPUT_EVENT_SIZE: usize = 24;

/// Whether a `capabilities/key` bitmap from sysfs has `code` set. The
/// bitmap is hex words of `long` width, most significant word first.
pub fn bitmap_has(bitmap: &str, code: u16) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let (word, bit) = (code as usize / 64, code as usize % 64);
    let Some(text) = words.len().checked_sub(word + 1).and_then(|i| words.get(i)) else {
        return false;
    };
    u64::from_str_radix(text, 16).map(|w| w & (1 << bit) != 0).unwrap_or(false)
}

/// Whether one raw input event is a press of the power key.
pub fn is_power_press(event: &[u8; INPUT_EVENT_SIZE]) -> bool {
    let ev_type = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    ev_type == EV_KEY && code == KEY_POWER && value == 1
}

/// The /dev/input/event* devices that can report KEY_POWER.
pub fn power_button_devices(sys_class_input: &Path, dev_input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_class_input) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("event"))
        .filter(|name| {
            std::fs::read_to_string(sys_class_input.join(name).join("device/capabilities/key"))
                .map(|caps| bitmap_has(&caps, KEY_POWER))
                .unwrap_or(false)
        })
        .map(|name| dev_input.join(name))
        .collect();
    found.sort();
    found
}

/// Blocks reading an opened event device and calls `on_press` for each
/// power key press, until the device goes away. The caller opens the
/// device first: the kernel only delivers events to readers that already
/// have it open, so "watching" must not be announced before that.
pub fn watch(mut file: impl Read, mut on_press: impl FnMut()) -> io::Result<()> {
    let mut event = [0u8; INPUT_EVENT_SIZE];
    loop {
        file.read_exact(&mut event)?;
        if is_power_press(&event) {
            on_press();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ev_type: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut e = [0u8; INPUT_EVENT_SIZE];
        e[16..18].copy_from_slice(&ev_type.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "the A key");
        assert!(!is_power_press(&event(0, KEY_POWER, 1)), "a sync event");
    }

    #[test]
    fn the_power_bit_is_found_in_the_second_word_from_the_right() {
        // What the ACPI power button reports: only bit 116 (word 1, bit 52).
        assert!(bitmap_has("10000000000000 0", KEY_POWER));
        assert!(!bitmap_has("0", KEY_POWER));
        assert!(!bitmap_has("10000000000000", KEY_POWER), "single word covers codes 0-63 only");
        // A keyboard's long bitmap with many bits set, power included.
        assert!(bitmap_has("1 0 0 0 0 0 0 fffffffffffffffe 1fffffffffffff fffffffffffffffe", KEY_POWER));
    }

    #[test]
    fn devices_are_found_from_their_sysfs_capabilities() {
        let sys = tempfile::tempdir().unwrap();
        for (name, caps) in [("event0", "10000000000000 0\n"), ("event1", "0\n"), ("mouse0", "10000000000000 0\n")] {
            let d = sys.path().join(name).join("device/capabilities");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("key"), caps).unwrap();
        }
        assert_eq!(power_button_devices(sys.path(), Path::new("/dev/input")), vec![PathBuf::from("/dev/input/event0")]);
    }

    #[test]
    fn watch_reports_presses_from_a_stream_of_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let mut data = Vec::new();
        for e in [event(EV_KEY, KEY_POWER, 1), event(0, 0, 0), event(EV_KEY, KEY_POWER, 0), event(EV_KEY, KEY_POWER, 1)]
        {
            data.extend_from_slice(&e);
        }
        std::fs::write(&path, data).unwrap();
        let mut presses = 0;
        let end = watch(std::fs::File::open(&path).unwrap(), || presses += 1).unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(presses, 2);
    }
}
