//! PID 1's log: every tracing event becomes one line on the console and
//! one record in the kernel log (/dev/kmsg), prefixed with CLOCK_BOOTTIME
//! the way the kernel prefixes its own lines:
//!
//! ```text
//! [    2.314159] kelson: stage done stage=modules elapsed_ms=41 loaded=37
//! ```

use crate::clock;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Where lines go. Opened lazily: PID 1 starts logging before /dev exists.
#[derive(Default)]
struct Sinks {
    console: Option<File>,
    kmsg: Option<File>,
    /// The kernel echoes kmsg records below this priority number to the
    /// console itself; those lines are not written to the console twice.
    console_loglevel: u8,
}

/// The outputs of PID 1's log, shared by the layer that writes to them and
/// the boot stages that open them as /dev and /proc appear. Until then
/// lines go to stderr.
#[derive(Clone, Default)]
pub struct LogOutputs(Arc<Mutex<Sinks>>);

impl LogOutputs {
    fn sinks(&self) -> std::sync::MutexGuard<'_, Sinks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens /dev/console; call once /dev is mounted.
    pub fn open_console(&self) {
        self.sinks().console = OpenOptions::new().write(true).open("/dev/console").ok();
    }

    /// Opens /dev/kmsg; call once the console log level keeps kernel-log
    /// records of Kelson's level off the console.
    pub fn open_kmsg(&self) {
        let mut sinks = self.sinks();
        sinks.kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
        sinks.console_loglevel = std::fs::read_to_string("/proc/sys/kernel/printk")
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|w| w.parse().ok()))
            .unwrap_or(0);
    }
}

/// Whether the kernel will print a kmsg record of `priority` on the console.
pub fn kernel_echoes(priority: u8, console_loglevel: u8) -> bool {
    priority < console_loglevel
}

/// Formats one line (without the newline). Pure, for tests.
pub fn format_line(uptime: std::time::Duration, level: Level, message: &str, fields: &[(String, String)]) -> String {
    let mut line = format!("[{:>12}] kelson: ", clock::format_seconds(uptime));
    match level {
        Level::ERROR => line.push_str("ERROR "),
        Level::WARN => line.push_str("WARN "),
        _ => {}
    }
    line.push_str(message);
    for (k, v) in fields {
        if v.contains(char::is_whitespace) || v.is_empty() {
            let _ = write!(line, " {k}={v:?}");
        } else {
            let _ = write!(line, " {k}={v}");
        }
    }
    line
}

fn kmsg_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name().to_owned(), value.to_owned()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push((field.name().to_owned(), format!("{value:?}")));
        }
    }
}

/// The tracing layer that writes lines to the outputs.
pub struct ConsoleKmsgLayer(LogOutputs);

impl<S: Subscriber> Layer<S> for ConsoleKmsgLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut c = Collect::default();
        event.record(&mut c);
        let line = format_line(clock::boottime(), level, &c.message, &c.fields);
        let mut sinks = self.0.sinks();
        let echoed = sinks.kmsg.is_some() && kernel_echoes(kmsg_priority(level), sinks.console_loglevel);
        match sinks.console.as_mut() {
            _ if echoed => {}
            Some(console) => {
                let _ = writeln!(console, "{line}");
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
        if let Some(kmsg) = sinks.kmsg.as_mut() {
            // The kernel timestamps kmsg records itself.
            let body = line.split_once("] ").map_or(line.as_str(), |(_, rest)| rest);
            let _ = kmsg.write_all(format!("<{}>{body}\n", kmsg_priority(level)).as_bytes());
        }
    }
}

/// Installs the layer as the global subscriber (info and above) and
/// returns its outputs, still to be opened.
pub fn init() -> LogOutputs {
    use tracing_subscriber::prelude::*;
    let outputs = LogOutputs::default();
    // kube-runtime's watcher logs every failed try of a watch at WARN;
    // the Node watcher says once what is wrong.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("kube_runtime", tracing::Level::ERROR);
    let _ = tracing_subscriber::registry().with(ConsoleKmsgLayer(outputs.clone()).with_filter(filter)).try_init();
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_carry_boottime_message_and_fields() {
        let line = format_line(
            Duration::from_millis(2314),
            Level::INFO,
            "stage done",
            &[("stage".into(), "modules".into()), ("elapsed_ms".into(), "41".into())],
        );
        assert_eq!(line, "[    2.314000] kelson: stage done stage=modules elapsed_ms=41");
    }

    #[test]
    fn warnings_are_marked_and_values_with_spaces_quoted() {
        let line =
            format_line(Duration::ZERO, Level::WARN, "sysctl failed", &[("error".into(), "no such file".into())]);
        assert_eq!(line, "[    0.000000] kelson: WARN sysctl failed error=\"no such file\"");
    }

    #[test]
    fn lines_the_kernel_echoes_are_not_written_to_the_console_again() {
        // console log level 4: errors (3) are echoed, warnings (4) and info (6) not.
        assert!(kernel_echoes(kmsg_priority(Level::ERROR), 4));
        assert!(!kernel_echoes(kmsg_priority(Level::WARN), 4));
        assert!(!kernel_echoes(kmsg_priority(Level::INFO), 4));
        assert!(kernel_echoes(kmsg_priority(Level::INFO), 7));
    }

    #[test]
    fn the_ready_line_reads_kelson_ready() {
        let line = format_line(Duration::from_secs(3), Level::INFO, "ready", &[]);
        assert!(line.ends_with("kelson: ready"), "{line}");
    }
}
