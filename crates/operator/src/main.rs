//! `renku-ssh-operator`: parses flags, sets up logging, connects to the cluster (in-cluster
//! service account or `KUBECONFIG`) and runs [`operator::Operator`] until SIGTERM or SIGINT.
//! With `--webhook` it also serves the sidecar admission webhook (crates/webhook) on every
//! replica, leader or not.

use std::process::ExitCode;

use clap::Parser;
use operator::{Args, Operator};

/// Flags of the operator and of the webhook.
#[derive(Parser)]
#[command(name = "renku-ssh-operator", version, about, long_about = None)]
struct Command {
    #[command(flatten)]
    operator: Args,
    #[command(flatten)]
    webhook: webhook::Args,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command {
        operator: args,
        webhook: webhook_args,
    } = Command::parse();
    let log_format = match args.log_format() {
        Ok(format) => format,
        Err(error) => return fail(&error),
    };
    if let Err(error) = admin::init_logging(log_format) {
        return fail(&error);
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(error) => return fail(&error),
    };
    // One registry serves the operator's and the webhook's metrics on the admin server.
    let mut registry = prometheus_client::registry::Registry::default();
    let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
    let started = start_webhook(
        &webhook_args,
        &config,
        &client,
        &mut registry,
        webhook_stopped,
    );
    let webhook = match started.await {
        Ok(webhook) => webhook,
        Err(error) => return fail(&error),
    };
    let operator = match Operator::new_with_registry(config, client, registry).await {
        Ok(operator) => operator,
        Err(error) => return fail(&error),
    };
    let result = operator.run(admin::shutdown_signal()).await;
    let _ = stop_webhook.send(());
    if let Some(webhook) = webhook {
        match webhook.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return fail(&error),
            Err(error) => tracing::warn!(%error, "webhook task failed"),
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Binds the webhook when `--webhook` is set, with the operator's SSH policy and namespace, and
/// serves it in the background until `stopped` completes, which happens when the operator stops.
async fn start_webhook(
    args: &webhook::Args,
    config: &operator::Config,
    client: &kube::Client,
    registry: &mut prometheus_client::registry::Registry,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<Option<tokio::task::JoinHandle<Result<(), webhook::Error>>>, webhook::Error> {
    if !args.enabled {
        return Ok(None);
    }
    let policy = match config.ssh_policy {
        operator::SshPolicy::All => webhook::SshPolicy::All,
        operator::SshPolicy::Annotated => webhook::SshPolicy::Annotated,
        operator::SshPolicy::Explicit => webhook::SshPolicy::Explicit,
    };
    let pod_namespace = std::env::var("POD_NAMESPACE").ok();
    let mut webhook_config = args.to_config(policy, pod_namespace.as_deref())?;
    webhook_config.watch_namespace = config.namespace.clone();
    let webhook = webhook::Webhook::bind(webhook_config, client.clone(), registry).await?;
    let shutdown = async move {
        let _ = stopped.await;
    };
    Ok(Some(tokio::spawn(webhook.run(shutdown))))
}

fn fail(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    tracing::error!(error, "renku-ssh-operator stopped");
    eprintln!("renku-ssh-operator: {error}");
    ExitCode::FAILURE
}
