use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    reconciler::run(reconciler::config::Config::parse()).await
}
