//! The api binary: parse the configuration and run the service.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = api::config::Config::parse();
    match api::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "api failed");
            std::process::ExitCode::FAILURE
        }
    }
}
