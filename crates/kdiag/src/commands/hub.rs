//! `kdiag hub`: the fleet hub in the management cluster (docs/fleet.md).

use std::net::SocketAddr;
use std::process::ExitCode;

use kdiag_fleet::hub::{self, HubConfig};
use kdiag_runtime::process;

use super::CommandError;
use crate::cli::HubArgs;

pub async fn run(args: HubArgs) -> Result<ExitCode, CommandError> {
    let client = process::client().await?;
    let shutdown = process::shutdown_on_signals();
    let mut config = HubConfig::new(
        SocketAddr::new(args.bind_address, args.port),
        args.tls_cert_file,
        args.tls_key_file,
    );
    config.namespace = args.namespace;
    config.offline_after = args.offline_after;
    config.heartbeat_write_interval = args.heartbeat_write_interval;
    if args.accept_shared_secret_key {
        let key = std::env::var("SECRET_KEY").unwrap_or_default();
        if key.trim().is_empty() {
            anyhow::bail!(
                "--accept-shared-secret-key needs the environment variable SECRET_KEY (KubeProber's shared key)"
            );
        }
        config.shared_secret_key = Some(key);
    }
    let (_, serving) = hub::start(client, config, shutdown).await?;
    serving.await;
    Ok(ExitCode::SUCCESS)
}
