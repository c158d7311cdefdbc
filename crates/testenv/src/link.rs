//! A network link to the real apiserver that a test can cut: a TCP relay on loopback. While it
//! is cut, every open connection is closed and new ones are closed at once, which is what a
//! client sees when the apiserver is unreachable (a network partition, a restarting
//! apiserver). TLS passes through untouched, so clients still talk to the real apiserver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::TestEnvError;

/// A relay from `https://127.0.0.1:<port>` to a target address.
pub struct Link {
    url: String,
    up: watch::Sender<bool>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// A link to `target` (host:port of an https URL such as the apiserver's), up.
    pub async fn to(target_url: &str) -> Result<Self, TestEnvError> {
        let target: SocketAddr = target_url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| TestEnvError::Client(format!("link target {target_url}: {e}")))?;
        let listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| TestEnvError::Io {
                    path: "127.0.0.1:0".into(),
                    source,
                })?;
        let port = listener
            .local_addr()
            .map_err(|source| TestEnvError::Io {
                path: "127.0.0.1:0".into(),
                source,
            })?
            .port();
        let (up, _) = watch::channel(true);
        let refused = Arc::new(AtomicUsize::new(0));
        let (state, count) = (up.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut link_up = state.subscribe();
                if !*link_up.borrow() {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = link_up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Self {
            url: format!("https://127.0.0.1:{port}"),
            up,
            refused,
            task,
        })
    }

    /// The URL clients use instead of the target's.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes every open connection and refuses new ones until [`Link::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Connections refused while the link was cut.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}
