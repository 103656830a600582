//! A running broker: store + request handling + QUIC listener, with graceful shutdown.
//! `quiver serve` and the integration tests both start brokers through [`Server::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::cluster::{Controller, Member};
use crate::config::Config;
use crate::net::Listener;

/// A broker serving on its address until stopped.
pub struct Server {
    /// The bound UDP address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of the TLS certificate (lowercase hex).
    pub fingerprint: String,
    /// The certificate file (usable as a client CA file).
    pub cert_path: PathBuf,
    broker: Arc<Broker>,
    controller: Option<Arc<Controller>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the store (recovering it), binds the listener and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        Self::start_with_clock(cfg, Clock::system()).await
    }

    /// [`Server::start`] with the clock the broker times group sessions, scheduled messages
    /// and transaction check-backs by (tests pass a manual one).
    pub async fn start_with_clock(cfg: Config, clock: Clock) -> anyhow::Result<Server> {
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let c = cfg.clone();
        let broker_clock = clock.clone();
        let broker = tokio::task::spawn_blocking(move || Broker::open_with_clock(c, broker_clock))
            .await
            .context("opening the broker")??;
        let mut listener = match Listener::bind(&cfg) {
            Ok(l) => l,
            Err(e) => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.close()).await;
                return Err(e);
            }
        };
        let controller = match start_controller(&cfg, &listener, &clock).await {
            Ok(c) => c,
            Err(e) => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.close()).await;
                return Err(e);
            }
        };
        let (controller, member) = match controller {
            Some((c, m)) => (c, Some(m)),
            None => (None, None),
        };
        if let Some(c) = &controller {
            listener.set_controller(c.clone());
        }
        let addr = listener.local_addr()?;
        let fingerprint = listener.fingerprint.clone();
        let cert_path = listener.cert_path.clone();
        let shutdown = CancellationToken::new();
        if let Some(m) = member {
            tokio::spawn(m.run(addr, clock.clone(), shutdown.clone()));
        }
        let (b, s) = (broker.clone(), shutdown.clone());
        let stop_controller = controller.clone();
        let task = tokio::spawn(async move {
            let persist = {
                let (b, s) = (b.clone(), s.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = s.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        let b = b.clone();
                        if let Ok(Err(e)) =
                            tokio::task::spawn_blocking(move || b.persist_offsets()).await
                        {
                            tracing::error!(error = %format!("{e:#}"), "saving consumer offsets failed");
                        }
                    }
                })
            };
            listener.serve(b.clone(), s).await;
            if let Some(c) = &stop_controller {
                c.shutdown().await;
            }
            let _ = persist.await;
            tokio::task::spawn_blocking(move || b.close())
                .await
                .context("closing the broker")??;
            tracing::info!("broker stopped cleanly");
            Ok(())
        });
        Ok(Server {
            addr,
            fingerprint,
            cert_path,
            broker,
            controller,
            shutdown,
            task,
        })
    }

    /// The node's controller, when `cluster.controller` is on.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.as_ref()
    }

    /// The broker behind the listener.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, finishes in-flight requests, flushes and closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after its shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("broker task panicked")?
    }
}

/// In a cluster: starts the controller when this node is a voter (its peers reached through
/// the listener's identity), and the agent that keeps this node's broker registered.
async fn start_controller(
    cfg: &Config,
    listener: &Listener,
    clock: &Clock,
) -> anyhow::Result<Option<(Option<Arc<Controller>>, Member)>> {
    if !cfg.cluster.enabled() {
        return Ok(None);
    }
    let peers = listener.peer_transport(cfg)?;
    let controller = if cfg.cluster.controller {
        Some(
            Controller::start(
                &cfg.cluster,
                &cfg.broker.data_dir,
                peers.clone(),
                clock.clone(),
            )
            .await
            .context("starting the controller")?,
        )
    } else {
        None
    };
    let member = Member::new(cfg.cluster.clone(), controller.clone(), peers);
    Ok(Some((controller, member)))
}
