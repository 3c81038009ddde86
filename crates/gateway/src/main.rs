//! renku-ssh-gateway: see the library documentation of the `gateway` crate.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gateway::Gateway;
use gateway::config::Args;
use prometheus_client::registry::Registry;
use tracing::error;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("renku-ssh-gateway: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = admin::init_logging(config.log_format) {
        eprintln!("renku-ssh-gateway: {error}");
        return ExitCode::FAILURE;
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = %error, "renku-ssh-gateway failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: gateway::config::Config) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let health = admin::Health::default();
    let mut registry = Registry::default();
    let gateway = Gateway::start(&config, client, &mut registry, health.clone()).await?;
    let admin_server = admin::AdminServer::bind(
        config.admin_address,
        health,
        Arc::new(registry),
        axum::Router::new(),
    )
    .await?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin_server.serve(async move {
        let _ = admin_stopped.await;
    }));
    gateway.serve(admin::shutdown_signal()).await;
    let _ = stop_admin.send(());
    admin_task.await??;
    Ok(())
}
