//! What every Kelson service shares, and nothing about any one of them:
//!
//! - [`Exit`]: how a process ended; [`restart`]: whether and when it
//!   starts again (the supervisor's services and the static pods'
//!   containers follow one schedule).
//! - [`clock`]: time behind a trait, so waits are tested with a fake clock.
//! - [`atomic`]: file replacement that a power cut cannot tear.
//! - [`error_chain`]: how an error and its causes are reported, on one line.
//! - [`paths`]: the node's well-known paths shared between components.

pub mod atomic;
pub mod clock;
mod error;
mod exit;
pub mod paths;
pub mod restart;

pub use clock::{Clock, FakeClock, SystemClock};
pub use error::chain as error_chain;
pub use exit::Exit;
