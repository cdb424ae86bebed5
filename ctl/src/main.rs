//! kelsonctl: parses the command line and hands off to the library.

use anyhow::Context;
use clap::Parser;
use kelsonctl::api::{self, Client, KelsonConfig, Run};
use kelsonctl::cli::{Cli, Command, GenClusterArgs, GenCommand, GenNodeArgs, NodeCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("kelsonctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Gen(GenCommand::Cluster(args)) => gen_cluster(&args).map(|()| ExitCode::SUCCESS),
        Command::Gen(GenCommand::Node(args)) => gen_node(&args).map(|()| ExitCode::SUCCESS),
        Command::Node(command) => node_command(&command),
    }
}

fn gen_cluster(args: &GenClusterArgs) -> anyhow::Result<()> {
    let generated = kelsonctl::gen::generate_cluster(&args.spec(), &args.output, args.force)
        .with_context(|| format!("generating cluster {} into {}", args.name, args.output.display()))?;
    print!("{}", generated.describe(&args.output));
    Ok(())
}

fn gen_node(args: &GenNodeArgs) -> anyhow::Result<()> {
    let generated = kelsonctl::gen::generate_node(&args.cluster, &args.spec())
        .with_context(|| format!("adding node {} to the cluster in {}", args.name, args.cluster.display()))?;
    print!("{}", generated.describe(&args.cluster));
    Ok(())
}

/// Runs a verb against the chosen nodes; failing nodes have been reported
/// on stderr and make the exit code 1.
fn node_command(command: &NodeCommand) -> anyhow::Result<ExitCode> {
    let target = command.target();
    let env = std::env::var_os(api::config::ENV_VAR);
    let choice = api::choose_config(target.kelsonconfig.as_deref(), env, |path| path.exists())?;
    let config = KelsonConfig::load(&choice)?;
    let nodes = api::select_nodes(&config, &target.nodes)
        .with_context(|| format!("choosing nodes from {}", choice.path.display()))?;
    let client = Client::new(&config).with_context(|| format!("loading {}", choice.path.display()))?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut run = Run { client: &client, nodes: &nodes, format: target.output, out: &mut stdout, err: &mut stderr };
    let outcome = runtime.block_on(run.verb(&command.verb()))?;
    Ok(if outcome.failed_nodes == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
