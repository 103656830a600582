//! Many brokers behind a list of bootstrap addresses: topic routes from the cluster's
//! controller (any node answers), one connection per broker set, and a short memory of the
//! sets that failed recently so that sends avoid them (RocketMQ's latency-fault tolerance).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_protocol::cmd::{RouteSet, TopicCreateOn, TopicRoute, TopicRouteReply};

use quiver_protocol::{GroupMode, QueueRef, Subscription};

use crate::client::{Client, ClientConfig};
use crate::error::ClientError;
use crate::message::ReceivedMessage;
use crate::push::{box_listener, IntoConsumeResult, Listener, PushConsumer, PushConsumerOptions};

/// How long a broker set that failed a request is avoided by queue selection.
pub const FAULT_PAUSE: Duration = Duration::from_secs(10);

/// A Quiver cluster as a client sees it: bootstrap brokers to ask for routes, and a
/// connection per broker address that routes name (opened on first use). Cheap to clone.
///
/// A single broker outside a cluster works too: it answers routes as one broker set (named
/// after the broker) on the connection that asked.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    bootstrap: Vec<Client>,
    template: ClientConfig,
    pool: Mutex<HashMap<SocketAddr, Client>>,
    /// Broker sets that failed a request, and until when they are avoided.
    faults: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field(
                "bootstrap",
                &self
                    .inner
                    .bootstrap
                    .iter()
                    .map(|c| c.config().addr)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One broker set of a topic's route, with the connection to its broker.
#[derive(Clone, Debug)]
pub struct SetRoute {
    /// Broker set name.
    pub name: String,
    /// The topic's queue count on this set.
    pub queues: u32,
    /// The set's broker was alive when the route was read.
    pub alive: bool,
    /// The connection to the set's broker.
    pub client: Client,
}

impl Cluster {
    /// A cluster reached through `bootstrap` (at least one address; every node of a cluster
    /// can answer), with `template` for every connection (its `addr` is replaced by each
    /// broker's). Connects to the first bootstrap address that answers; fails when none
    /// does.
    pub async fn connect(
        bootstrap: &[SocketAddr],
        template: ClientConfig,
    ) -> Result<Cluster, ClientError> {
        if bootstrap.is_empty() {
            return Err(ClientError::invalid("no bootstrap broker address"));
        }
        let mut clients = Vec::with_capacity(bootstrap.len());
        let mut last = None;
        let mut connected = false;
        for addr in bootstrap {
            let cfg = ClientConfig {
                addr: *addr,
                ..template.clone()
            };
            if connected {
                clients.push(Client::lazy(cfg)?);
                continue;
            }
            match Client::connect(cfg.clone()).await {
                Ok(c) => {
                    connected = true;
                    clients.push(c);
                }
                Err(e) => {
                    last = Some(e);
                    clients.push(Client::lazy(cfg)?);
                }
            }
        }
        if !connected {
            return Err(last.unwrap_or_else(|| ClientError::invalid("no bootstrap broker")));
        }
        let pool = clients
            .iter()
            .map(|c| (c.config().addr, c.clone()))
            .collect();
        Ok(Cluster {
            inner: Arc::new(Inner {
                bootstrap: clients,
                template,
                pool: Mutex::new(pool),
                faults: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The bootstrap connections, in the order given.
    pub fn bootstrap(&self) -> &[Client] {
        &self.inner.bootstrap
    }

    /// Asks the bootstrap brokers in turn (live connections first) until one answers.
    async fn ask<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, ClientError>
    where
        F: Fn(Client, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + timeout;
        let mut order: Vec<&Client> = self.inner.bootstrap.iter().collect();
        order.sort_by_key(|c| c.broker_info().is_none());
        let mut last = None;
        for c in order {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match f(c.clone(), left).await {
                Ok(r) => return Ok(r),
                // The broker answered: its answer stands (another node would say the same).
                Err(e @ ClientError::Broker { .. }) if !e.is_retryable() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Timeout(timeout)))
    }

    /// A topic's route (creating the topic when `create` and the cluster allows it), with a
    /// connection per broker set, in route order.
    pub async fn route(
        &self,
        topic: &str,
        create: bool,
        timeout: Duration,
    ) -> Result<Vec<SetRoute>, ClientError> {
        let req = TopicRoute {
            topic: topic.to_string(),
            create,
        };
        let (asked, reply) = self
            .ask(timeout, |c, t| {
                let req = req.clone();
                async move {
                    let r: TopicRouteReply = c.call_with_timeout(req, t).await?;
                    Ok((c, r))
                }
            })
            .await?;
        self.resolve(&asked, reply.sets)
    }

    /// The cluster as the first bootstrap node that answers sees it: controller, brokers,
    /// and each broker set's master, epoch and in-sync slaves.
    pub async fn info(
        &self,
        timeout: Duration,
    ) -> Result<quiver_protocol::cmd::ClusterInfoReply, ClientError> {
        self.ask(timeout, |c, t| async move {
            c.call_with_timeout(quiver_protocol::cmd::ClusterInfo {}, t)
                .await
        })
        .await
    }

    /// Connections to the live slaves of broker set `set` according to `info`, in-sync ones
    /// first, then by node id.
    pub fn slaves(&self, info: &quiver_protocol::cmd::ClusterInfoReply, set: &str) -> Vec<Client> {
        let Some(roles) = info.sets.iter().find(|s| s.set == set) else {
            return Vec::new();
        };
        let mut live: Vec<&quiver_protocol::cmd::ClusterBroker> = info
            .brokers
            .iter()
            .filter(|b| b.set == set && b.alive && b.id != roles.master)
            .collect();
        live.sort_by_key(|b| (!roles.in_sync.contains(&b.id), b.id));
        live.into_iter()
            .filter_map(|b| b.addr.parse::<SocketAddr>().ok())
            .filter_map(|a| self.client(a).ok())
            .collect()
    }

    /// Creates a topic with `queues` queues on each of `sets` (every set with a live broker
    /// when empty); its route.
    pub async fn create_topic(
        &self,
        topic: &str,
        queues: u32,
        sets: &[String],
        timeout: Duration,
    ) -> Result<Vec<RouteSet>, ClientError> {
        let req = TopicCreateOn {
            topic: topic.to_string(),
            queues,
            sets: sets.to_vec(),
        };
        let reply: TopicRouteReply = self
            .ask(timeout, |c, t| {
                let req = req.clone();
                async move { c.call_with_timeout(req, t).await }
            })
            .await?;
        Ok(reply.sets)
    }

    fn resolve(&self, asked: &Client, sets: Vec<RouteSet>) -> Result<Vec<SetRoute>, ClientError> {
        sets.into_iter()
            .map(|s| {
                let client = if s.addr.is_empty() {
                    asked.clone()
                } else {
                    let addr: SocketAddr = s.addr.parse().map_err(|e| {
                        ClientError::Protocol(format!(
                            "broker set {} has a malformed address {:?}: {e}",
                            s.set, s.addr
                        ))
                    })?;
                    self.client(addr)?
                };
                Ok(SetRoute {
                    name: s.set,
                    queues: s.queues,
                    alive: s.alive,
                    client,
                })
            })
            .collect()
    }

    /// The connection to the broker at `addr` (opened on its first request).
    pub fn client(&self, addr: SocketAddr) -> Result<Client, ClientError> {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = pool.get(&addr) {
            return Ok(c.clone());
        }
        let c = Client::lazy(ClientConfig {
            addr,
            ..self.inner.template.clone()
        })?;
        pool.insert(addr, c.clone());
        Ok(c)
    }

    /// Every connection opened so far (bootstrap nodes and the brokers routes named).
    pub fn clients(&self) -> Vec<Client> {
        let pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Client> = pool.values().cloned().collect();
        v.sort_by_key(|c| c.config().addr);
        v
    }

    /// Remembers that `set` failed a request: queue selection avoids it for
    /// [`FAULT_PAUSE`].
    pub fn mark_failed(&self, set: &str) {
        let mut f = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        f.insert(set.to_string(), Instant::now() + FAULT_PAUSE);
    }

    /// False while `set` is avoided after a failure.
    pub fn available(&self, set: &str) -> bool {
        let f = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        f.get(set).is_none_or(|until| Instant::now() >= *until)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        let clients: Vec<Client> = self
            .inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for c in clients {
            c.close().await;
        }
    }
}

/// Which broker of a set a [`ClusterPushConsumer`] reads from ([`PushConsumerOptions`]'s
/// `read_from`). A slave serves reads like its master (the same messages at the same
/// offsets, up to what it has replicated); offsets committed on a slave also go to the
/// master, which the slaves mirror. Messages a listener hands back for retry need the
/// master (a slave refuses the write): while reading from a slave, such a message is
/// delivered again from the slave instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// Always the set's master (the default).
    #[default]
    Master,
    /// The master while it is alive; a live slave of the set while the master is down (and
    /// no failover has named a new master yet), back to the master when it is.
    MasterOrSlave,
    /// A live slave (in sync preferred) to take reads off the master; the master when the
    /// set has none.
    Slave,
}

/// How often a [`ClusterPushConsumer`] reads its topics' routes again to join broker sets
/// that started holding them, and to follow a set to its new master after a failover.
const ROUTE_REFRESH: Duration = Duration::from_secs(2);

/// A consumer-group member over every broker set that holds its topics: one
/// [`PushConsumer`] per set, all sharing the listener. Each set's broker rebalances its own
/// queues over the group's members (every member joins the group on every set), and keeps
/// the group's committed offsets of its queues; a message handed back for retry is retried
/// on the set that holds it. Sets that start holding a subscribed topic later are joined
/// within 2 s. A set whose broker is down keeps its queues (and their offsets) until it is
/// back, or until the set has a new master (failover): the member then moves to it within
/// 2 s, and continues from the group's committed offsets, which the new master mirrored
/// from the old one as a slave (once a second: what was consumed since may be delivered
/// again). With `read_from` ([`ReadFrom`]) it reads from a slave of the set instead. The
/// other sets' queues go on being consumed.
pub struct ClusterPushConsumer {
    members: Arc<tokio::sync::Mutex<HashMap<String, PushConsumer>>>,
    stop: tokio::sync::watch::Sender<bool>,
    refresh: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for ClusterPushConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterPushConsumer")
            .finish_non_exhaustive()
    }
}

impl ClusterPushConsumer {
    /// Joins `options.group` on every broker set holding one of `subscriptions`' topics and
    /// starts consuming (see [`PushConsumer::start`] for the listener and the options; in
    /// broadcasting mode each set's offsets go to their own file, `<offset file>.<set>`).
    pub async fn start<F, Fut>(
        cluster: &Cluster,
        subscriptions: Vec<Subscription>,
        options: PushConsumerOptions,
        listener: F,
    ) -> Result<ClusterPushConsumer, ClientError>
    where
        F: Fn(Vec<ReceivedMessage>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: IntoConsumeResult,
    {
        options.validate()?;
        let listener = box_listener(listener);
        let members = Arc::new(tokio::sync::Mutex::new(HashMap::new()));
        join_sets(cluster, &subscriptions, &options, &listener, &members, true).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let refresh = {
            let (cluster, members) = (cluster.clone(), members.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = tokio::time::sleep(ROUTE_REFRESH) => {}
                    }
                    if let Err(e) = join_sets(
                        &cluster,
                        &subscriptions,
                        &options,
                        &listener,
                        &members,
                        false,
                    )
                    .await
                    {
                        tracing::debug!(error = %e, "reading the subscribed topics' routes failed");
                    }
                }
            })
        };
        Ok(ClusterPushConsumer {
            members,
            stop,
            refresh,
        })
    }

    /// The broker sets this consumer has joined.
    pub async fn sets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.members.lock().await.keys().cloned().collect();
        v.sort();
        v
    }

    /// The queues this member owns, per broker set.
    pub async fn owned_queues(&self) -> Vec<(String, QueueRef)> {
        let members = self.members.lock().await;
        let mut v: Vec<(String, QueueRef)> = members
            .iter()
            .flat_map(|(set, c)| c.owned_queues().into_iter().map(|q| (set.clone(), q)))
            .collect();
        v.sort();
        v
    }

    /// Stops every set's consumer as [`PushConsumer::shutdown`] does; the first error.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.stop.send_replace(true);
        self.refresh.abort();
        let members = self.members.lock().await;
        let results = futures_util::future::join_all(members.values().map(|c| c.shutdown())).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    /// Stops at once, as a crash would ([`PushConsumer::kill`] on every set).
    pub async fn kill(&self) {
        self.stop.send_replace(true);
        self.refresh.abort();
        for c in self.members.lock().await.values() {
            c.kill();
        }
    }
}

/// Starts a set consumer for every set of the subscribed topics' routes not joined yet.
async fn join_sets(
    cluster: &Cluster,
    subscriptions: &[Subscription],
    options: &PushConsumerOptions,
    listener: &Listener,
    members: &tokio::sync::Mutex<HashMap<String, PushConsumer>>,
    first: bool,
) -> Result<(), ClientError> {
    let timeout = cluster.bootstrap()[0].config().request_timeout;
    // Who holds each set's slaves, when they may be read from.
    let info = match options.read_from {
        ReadFrom::Master => None,
        _ => cluster.info(timeout).await.ok(),
    };
    let mut per_set: HashMap<String, (Client, Vec<Subscription>)> = HashMap::new();
    for s in subscriptions {
        for set in cluster.route(&s.topic, true, timeout).await? {
            let slave = || {
                info.as_ref()
                    .and_then(|i| cluster.slaves(i, &set.name).into_iter().next())
            };
            let reader = match options.read_from {
                ReadFrom::Master => set.client.clone(),
                ReadFrom::MasterOrSlave if set.alive => set.client.clone(),
                ReadFrom::MasterOrSlave | ReadFrom::Slave => {
                    slave().unwrap_or_else(|| set.client.clone())
                }
            };
            per_set
                .entry(set.name.clone())
                .or_insert_with(|| (reader, Vec::new()))
                .1
                .push(s.clone());
        }
    }
    let mut members = members.lock().await;
    for (set, (client, subs)) in per_set {
        match members.get(&set) {
            Some(m) if m.broker_addr() == client.config().addr => continue,
            // The set has a new master (failover), or the broker to read from changed
            // (`read_from`): the member moves. The old one stops as a crash would (its broker
            // may be gone); the new broker has the group's committed offsets (slaves mirror
            // their master's once a second), so what is delivered again is what was
            // consumed since.
            Some(m) => {
                tracing::warn!(%set, from = %m.broker_addr(), to = %client.config().addr,
                    "the broker set's reader moves: the group member follows");
                m.kill();
                members.remove(&set);
            }
            None => {}
        }
        let mut opts = options.clone();
        if opts.mode == GroupMode::Broadcasting {
            let file = opts.offset_file();
            let mut name = file.clone().into_os_string();
            name.push(format!(".{set}"));
            opts.offset_store_path = Some(name.into());
        }
        match PushConsumer::start_boxed(client, subs, opts, listener.clone()).await {
            Ok(c) => {
                tracing::info!(%set, group = %options.group, "joined the group on a broker set");
                members.insert(set, c);
            }
            Err(e) if first && !e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::warn!(%set, error = %e, "cannot join the group on a broker set yet");
            }
        }
    }
    Ok(())
}
