//! kelsonctl: parses the command line and hands off to the library.

use anyhow::Context;
use clap::Parser;
use kelsonctl::cli::{Cli, Command, GenClusterArgs, GenCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("kelsonctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gen(GenCommand::Cluster(args)) => gen_cluster(&args),
    }
}

fn gen_cluster(args: &GenClusterArgs) -> anyhow::Result<()> {
    let generated = kelsonctl::gen::generate_cluster(&args.spec(), &args.output, args.force)
        .with_context(|| format!("generating cluster {} into {}", args.name, args.output.display()))?;
    print!("{}", generated.describe(&args.output));
    Ok(())
}
