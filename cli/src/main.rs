//! `ambient`: the command-line client of the Ambient control plane. See `ambient --help` and the
//! README's "Use it from the terminal".

use std::process::ExitCode;

use clap::Parser as _;

mod cli;
mod client;
mod config;
mod output;
mod run;
mod watch;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match run::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
