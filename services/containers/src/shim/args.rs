//! The shim's command line: `--socket PATH --state-dir PATH [--no-pivot]`.

use super::ShimError;
use std::ffi::OsString;
use std::path::PathBuf;

/// How the shim is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimOptions {
    /// The unix socket to listen on.
    pub socket: PathBuf,
    /// libcontainer's state root (one directory per container), e.g.
    /// `/run/kelson/containers`.
    pub state_dir: PathBuf,
    /// Set up container roots without pivot_root, as an initramfs root needs.
    pub no_pivot: bool,
}

impl ShimOptions {
    /// The arguments that [`ShimOptions::parse`] reads back: what follows the
    /// subcommand on the shim's command line.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args =
            vec!["--socket".into(), self.socket.clone().into(), "--state-dir".into(), self.state_dir.clone().into()];
        if self.no_pivot {
            args.push("--no-pivot".into());
        }
        args
    }

    /// Reads `--socket PATH --state-dir PATH [--no-pivot]`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, ShimError> {
        let (mut socket, mut state_dir, mut no_pivot) = (None, None, false);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--socket") => socket = args.next().map(PathBuf::from),
                Some("--state-dir") => state_dir = args.next().map(PathBuf::from),
                Some("--no-pivot") => no_pivot = true,
                _ => return Err(ShimError::Usage(format!("unknown argument {arg:?}"))),
            }
        }
        Ok(Self {
            socket: socket.ok_or_else(|| ShimError::Usage("--socket PATH is required".into()))?,
            state_dir: state_dir.ok_or_else(|| ShimError::Usage("--state-dir PATH is required".into()))?,
            no_pivot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_arguments() {
        let options = ShimOptions {
            socket: "/run/kelson/shim.sock".into(),
            state_dir: "/run/kelson/containers".into(),
            no_pivot: true,
        };
        assert_eq!(ShimOptions::parse(options.to_args()).unwrap(), options);
        let plain = ShimOptions { no_pivot: false, ..options };
        assert_eq!(ShimOptions::parse(plain.to_args()).unwrap(), plain);
    }

    #[test]
    fn missing_or_unknown_arguments_are_usage_errors() {
        let err = ShimOptions::parse(["--socket".into(), "/s".into()]).unwrap_err();
        assert_eq!(err.to_string(), "shim arguments: --state-dir PATH is required");
        let err = ShimOptions::parse(["--bogus".into()]).unwrap_err();
        assert_eq!(err.to_string(), "shim arguments: unknown argument \"--bogus\"");
    }
}
