use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    projector::run(projector::config::Config::parse()).await
}
