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
use crate::cluster::{Controller, LocalTopics, Member, TopicFuture};
use crate::config::Config;
use crate::net::Listener;
use quiver_protocol::cmd;
use quiver_protocol::{Request, Response, Status};

/// On a cluster node: user and rule changes go through the controller, and the node applies
/// the cluster's newest users and rules (checked about once a second), so a user created
/// on any node can log in on every node.
fn share_users(broker: &Arc<Broker>, member: &Arc<Member>, cfg: &Config, stop: CancellationToken) {
    use crate::auth::Refused;
    use crate::cluster::state::{Command, Reply};
    let m = member.clone();
    broker.auth().attach_cluster(Arc::new(move |expect, json| {
        let m = m.clone();
        Box::pin(async move {
            match m.write(Command::SetAuth { expect, json }).await {
                Ok(Reply::Ok) => Ok(None),
                // Another node's change came first: the newest document this node can read,
                // for the change to be made again on it.
                Ok(Reply::Refused(why)) => match m.state(true).await {
                    Ok(s) => Ok(Some((s.auth.version, s.auth.json.clone()))),
                    Err(_) => Err(Refused::new(Status::Busy, why)),
                },
                Err(e) => Err(Refused::new(
                    Status::ControllerUnavailable,
                    format!("users and rules are stored by the controller: {e}"),
                )),
            }
        })
    }));
    let (b, m) = (broker.clone(), member.clone());
    let every = Duration::from_millis(cfg.cluster.broker_heartbeat_ms.clamp(100, 1000));
    tokio::spawn(async move {
        loop {
            if let Ok(state) = m.state(false).await {
                if state.auth.version > b.auth().cluster_version() {
                    if let Err(e) = b.auth().adopt(state.auth.version, &state.auth.json).await {
                        tracing::error!(error = %format!("{e:#}"), "cannot apply the cluster's users and rules");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// A broker serving on its address until stopped.
pub struct Server {
    /// The bound UDP address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of the TLS certificate (lowercase hex).
    pub fingerprint: String,
    /// The certificate file (usable as a client CA file).
    pub cert_path: PathBuf,
    admin_addr: Option<SocketAddr>,
    admin_https: bool,
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
        let auth = broker.auth();
        if auth.mode() == crate::auth::AuthMode::On
            && auth.user_count() == 0
            && !cfg.broker.listen.ip().is_loopback()
        {
            let b = broker.clone();
            let _ = tokio::task::spawn_blocking(move || b.close()).await;
            anyhow::bail!(
                "refusing to listen on {} without users: anyone who can reach it could read, send \
                 and delete everything. Set auth.bootstrap_password (QUIVER_AUTH__BOOTSTRAP_PASSWORD) \
                 to create the first user, create users while listening on 127.0.0.1, or set \
                 auth.mode = \"off\" (QUIVER_AUTH__MODE=off) to run without access control",
                cfg.broker.listen
            );
        }
        let mut listener = match Listener::bind(&cfg) {
            Ok(l) => l,
            Err(e) => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.close()).await;
                return Err(e);
            }
        };
        let admin = if cfg.admin.enabled {
            match crate::admin_http::bind(&cfg.admin).await {
                Ok(l) => Some(l),
                Err(e) => {
                    let b = broker.clone();
                    let _ = tokio::task::spawn_blocking(move || b.close()).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let admin_addr = admin.as_ref().and_then(crate::admin_http::local_addr);
        if cfg.admin.enabled && !cfg.admin.https() && !cfg.admin.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %cfg.admin.listen,
                "admin.tls = \"off\" on a listener that is not on loopback: console passwords \
                 and tokens cross the network in clear unless a proxy in front ends TLS"
            );
        }
        let admin_tls = match cfg
            .admin
            .https()
            .then(|| listener.https_config())
            .transpose()
        {
            Ok(t) => t,
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
            Some((c, m)) => (c, Some(Arc::new(m))),
            None => (None, None),
        };
        if let Some(m) = &member {
            m.set_local_topics(Arc::new(BrokerTopics(broker.clone())));
            listener.set_cluster(m.clone());
        }
        let addr = listener.local_addr()?;
        broker.set_listen_addr(addr);
        let fingerprint = listener.fingerprint.clone();
        let cert_path = listener.cert_path.clone();
        let shutdown = CancellationToken::new();
        if cfg.cluster.broker_set.is_some() {
            // Until the node knows its role, it takes no write (a slave's log must only ever
            // hold its master's records); the replication agent turns this off on a master.
            let store = broker.store().clone();
            tokio::task::spawn_blocking(move || store.set_replica(true))
                .await
                .context("setting the store's role")?;
        }
        if let Some(l) = admin {
            tokio::spawn(crate::admin_http::serve(
                l,
                admin_tls,
                broker.clone(),
                member.clone(),
                cfg.admin.token.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(m) = member {
            share_users(&broker, &m, &cfg, shutdown.clone());
            tokio::spawn(
                m.clone()
                    .run(cfg.cluster.advertise.unwrap_or(addr), shutdown.clone()),
            );
            let b = broker.clone();
            let in_sync: crate::cluster::InSyncSlaves = b.clone();
            tokio::spawn(m.clone().mirror_state(in_sync.clone(), shutdown.clone()));
            tokio::spawn(
                m.clone()
                    .replicate(broker.store().clone(), in_sync, shutdown.clone()),
            );
        }
        let (b, s) = (broker.clone(), shutdown.clone());
        let stop_controller = controller.clone();
        let task = tokio::spawn(async move {
            let persist = {
                let (b, s) = (b.clone(), s.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    let mut trimmer = crate::memory::Trimmer::new();
                    loop {
                        tokio::select! {
                            _ = s.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        if trimmer.observe(b.metrics().open_connections()) {
                            let _ = tokio::task::spawn_blocking(crate::memory::trim).await;
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
            tracing::debug!("listener closed");
            if let Some(c) = &stop_controller {
                if tokio::time::timeout(Duration::from_secs(3), c.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("the controller did not stop within 3 s; closing anyway");
                }
            }
            tracing::debug!("controller stopped");
            let _ = persist.await;
            tokio::task::spawn_blocking(move || b.close())
                .await
                .context("closing the broker")??;
            tracing::info!("broker stopped cleanly");
            Ok(())
        });
        Ok(Server {
            addr,
            admin_addr,
            admin_https: cfg.admin.https(),
            fingerprint,
            cert_path,
            broker,
            controller,
            shutdown,
            task,
        })
    }

    /// Where the admin HTTP listener (`/metrics`) listens, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The admin listener's base URL (`http://` or `https://`, `admin.tls`), when enabled.
    pub fn admin_url(&self) -> Option<String> {
        let scheme = if self.admin_https { "https" } else { "http" };
        self.admin_addr.map(|a| format!("{scheme}://{a}"))
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
    cfg.cluster
        .check_data_dir(&cfg.broker.data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    let member = Member::new(
        cfg.cluster.clone(),
        controller.clone(),
        peers,
        clock.clone(),
        cfg.broker.default_queues,
    );
    Ok(Some((controller, member)))
}

/// The broker's topic table as the cluster agent changes it (routes applied locally).
struct BrokerTopics(Arc<Broker>);

impl BrokerTopics {
    fn local() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    }
}

impl LocalTopics for BrokerTopics {
    fn ensure(&self, topic: String, queues: u32) -> TopicFuture<()> {
        let b = self.0.clone();
        Box::pin(async move {
            let create = Request::TopicCreate(cmd::TopicCreate {
                topic: topic.clone(),
                queues,
            });
            match b.handle(create, Self::local()).await {
                Ok(_) => Ok(()),
                Err(e) if e.status() == Status::TopicExists => {
                    let update = Request::TopicUpdate(cmd::TopicUpdate { topic, queues });
                    b.handle(update, Self::local())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn delete(&self, topic: String) -> TopicFuture<()> {
        let b = self.0.clone();
        Box::pin(async move {
            match b
                .handle(
                    Request::TopicDelete(cmd::TopicDelete { topic }),
                    Self::local(),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.status() == Status::TopicNotFound => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn list(&self) -> TopicFuture<Vec<(String, u32)>> {
        let b = self.0.clone();
        Box::pin(async move {
            match b
                .handle(Request::TopicList(cmd::TopicList), Self::local())
                .await
            {
                Ok(Response::TopicList(l)) => {
                    Ok(l.topics.into_iter().map(|t| (t.name, t.queues)).collect())
                }
                Ok(_) => Err("unexpected answer to a topic list".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
