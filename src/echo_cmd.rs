//! `berth echo`: the demo and test workload (see `agent::echo`).

use anyhow::Result;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Listen address (default: $HOST:$PORT, where HOST defaults to 127.0.0.1 and PORT to 8081).
    #[arg(long)]
    pub listen: Option<String>,
}

pub async fn echo(args: EchoArgs) -> Result<ExitCode> {
    let listen = args.listen.unwrap_or_else(agent::echo::default_listen);
    let code = agent::echo::run(&listen).await?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
