//! What long-running commands (the controller, the agent, local mode) share: the async runtime,
//! logging, the client, signals.

use kube::Client;
use tokio_util::sync::CancellationToken;

/// Runs `f` to its end on a multi-threaded runtime of its own, handing freed heap back to the
/// system as it goes (memory.rs).
pub fn block_on<T, E: From<std::io::Error>>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            crate::memory::spawn_trimming();
            f.await
        })
}

/// Logs to stderr as text, or as JSON lines when `json`; RUST_LOG overrides the levels.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,kube_runtime=warn,hyper=warn,warp=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A client from the in-cluster service account or the kubeconfig, like kubectl.
pub async fn client() -> Result<Client, crate::Error> {
    client_and_url().await.map(|(client, _)| client)
}

/// [`client`] and the apiserver URL it talks to (the agent reads the certificate served there).
pub async fn client_and_url() -> Result<(Client, String), crate::Error> {
    let no_client = |e: kube::Error| crate::Error::NoClient {
        source: Box::new(e),
    };
    let config = kube::Config::infer()
        .await
        .map_err(|e| no_client(kube::Error::InferConfig(e)))?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(no_client)?;
    Ok((client, url))
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing running steps, then stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing running steps, then stopping"),
        }
        t.cancel();
    });
    token
}
