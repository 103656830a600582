//! Topics and lookups: routes (with auto-creation), topic administration, offsets by time,
//! messages by id or key, and WebAssembly plugin administration.

use quiver_protocol::cmd::{
    self, Done, OffsetReply, PluginsReply, Records, RouteReply, RouteSet, TopicListReply,
    TopicReply, TopicRouteReply,
};
use quiver_protocol::names::{self, TopicName};
use quiver_protocol::{QueueInfo, Status, TopicSummary};

use super::{blocking, internal, not_found, special, Broker, BrokerError, Result};
use crate::plugin::LoadSpec;

impl Broker {
    /// `Route`: a topic's queue count, creating it when asked and allowed.
    pub(super) async fn route_cmd(&self, c: cmd::Route) -> Result<RouteReply> {
        let topic = TopicName::parse(c.topic)?;
        let create = c.create;
        // Clients never create system topics: the broker does, when it first needs one (a
        // refused send to `%DLQ%x` must not leave a topic behind).
        if create && names::is_system_topic(&topic) && self.topics.queues(&topic).is_none() {
            return Err(BrokerError::new(
                Status::InvalidName,
                format!("topic {topic:?} is a system topic: only the broker creates and writes it"),
            ));
        }
        let queues = self
            .route(&topic, create && !names::is_system_topic(&topic))
            .await?;
        Ok(RouteReply { queues })
    }

    /// `TopicRoute` on a broker outside a cluster: one set, this broker.
    pub(super) async fn standalone_route(&self, c: cmd::TopicRoute) -> Result<TopicRouteReply> {
        let RouteReply { queues } = self
            .route_cmd(cmd::Route {
                topic: c.topic,
                create: c.create,
            })
            .await?;
        Ok(self.own_route(queues))
    }

    /// `TopicCreateOn` on a broker outside a cluster: its only set is itself.
    pub(super) async fn standalone_create_on(
        &self,
        c: cmd::TopicCreateOn,
    ) -> Result<TopicRouteReply> {
        if let Some(s) = c.sets.iter().find(|s| **s != self.cfg.broker.name) {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!(
                    "no broker set {s:?}: this broker is not in a cluster; its only set is {:?}",
                    self.cfg.broker.name
                ),
            ));
        }
        let queues = c.queues;
        self.create_topic(cmd::TopicCreate {
            topic: c.topic,
            queues,
        })
        .await?;
        Ok(self.own_route(queues))
    }

    fn own_route(&self, queues: u32) -> TopicRouteReply {
        TopicRouteReply {
            sets: vec![RouteSet {
                set: self.cfg.broker.name.clone(),
                queues,
                node_id: 0,
                addr: String::new(),
                alive: true,
            }],
        }
    }

    /// `TopicCreate`.
    pub(super) async fn create_topic(&self, c: cmd::TopicCreate) -> Result<Done> {
        let (topic, queues) = (TopicName::parse(c.topic)?, c.queues);
        client_writable_topic(&topic, "created")?;
        self.check_queue_count(queues)?;
        let (topics, t) = (self.topics.clone(), topic.clone());
        let (_, created) = blocking(move || topics.create(&t, queues))
            .await?
            .map_err(internal)?;
        if !created {
            return Err(BrokerError::new(
                Status::TopicExists,
                format!("topic {topic:?} already exists; use update to change its queue count"),
            ));
        }
        tracing::info!(%topic, queues, "topic created");
        Ok(Done)
    }

    /// `TopicUpdate`: a new queue count.
    pub(super) async fn update_topic(&self, c: cmd::TopicUpdate) -> Result<Done> {
        let (topic, queues) = (TopicName::parse(c.topic)?, c.queues);
        client_writable_topic(&topic, "changed")?;
        self.check_queue_count(queues)?;
        let (topics, t) = (self.topics.clone(), topic.clone());
        if !blocking(move || topics.update(&t, queues))
            .await?
            .map_err(internal)?
        {
            return Err(not_found(&topic));
        }
        tracing::info!(%topic, queues, "topic updated");
        Ok(Done)
    }

    /// `TopicDelete`: the topic, its queues and the offsets committed on it.
    pub(super) async fn delete_topic(&self, c: cmd::TopicDelete) -> Result<Done> {
        let topic = TopicName::parse(c.topic)?;
        // Dead letters are the operator's to clear; every other system topic holds the
        // broker's own state (pending retries, transaction outcomes).
        if !topic.starts_with(names::DLQ_PREFIX) {
            client_writable_topic(&topic, "deleted")?;
        }
        // While the store drops the queues, sends must not re-create the topic (their
        // acknowledged messages would be dropped with it).
        let _deleting = self.topics.begin_delete(&topic);
        let (topics, t) = (self.topics.clone(), topic.clone());
        if !blocking(move || topics.delete(&t))
            .await?
            .map_err(internal)?
        {
            return Err(not_found(&topic));
        }
        self.offsets.forget_topic(&topic);
        let store = self.store.clone();
        let t = topic.clone();
        let dropped = blocking(move || store.delete_topic(&t)).await??;
        tracing::info!(%topic, messages = dropped, "topic deleted");
        Ok(Done)
    }

    /// `TopicList`.
    pub(super) fn list_topics(&self) -> TopicListReply {
        TopicListReply {
            topics: self
                .topics
                .list()
                .into_iter()
                .map(|(name, queues)| TopicSummary { name, queues })
                .collect(),
        }
    }

    /// `TopicDescribe`: each queue's readable range.
    pub(super) fn describe_topic(&self, c: cmd::TopicDescribe) -> Result<TopicReply> {
        let topic = TopicName::parse(c.topic)?;
        let n = self
            .topics
            .queues(&topic)
            .ok_or_else(|| not_found(&topic))?;
        let queues = (0..n)
            .map(|q| {
                let (min_offset, max_offset) = self.store.queue_bounds(&topic, q);
                QueueInfo {
                    queue_id: q,
                    min_offset,
                    max_offset,
                }
            })
            .collect();
        Ok(TopicReply {
            name: topic.into_string(),
            queues,
        })
    }

    /// `OffsetForTime`: the first offset stored at or after a time.
    pub(super) async fn offset_for_time(&self, c: cmd::OffsetForTime) -> Result<OffsetReply> {
        let cmd::OffsetForTime {
            topic,
            queue_id,
            timestamp_ms,
        } = c;
        let topic = TopicName::parse(topic)?;
        self.existing_queue(&topic, queue_id)?;
        let store = self.store.clone();
        let offset =
            blocking(move || store.offset_for_timestamp(&topic, queue_id, timestamp_ms)).await??;
        Ok(OffsetReply {
            offset: Some(offset),
        })
    }

    /// `MessageById`.
    pub(super) async fn message_by_id(&self, c: cmd::MessageById) -> Result<Records> {
        let store = self.store.clone();
        let found = blocking(move || store.message_by_id(c.id)).await??;
        Ok(Records(found.into_iter().collect()))
    }

    /// `MessageByKey`: the newest matches that fit one frame.
    pub(super) async fn message_by_key(&self, c: cmd::MessageByKey) -> Result<Records> {
        let cmd::MessageByKey {
            topic,
            key,
            max,
            begin_ms,
            end_ms,
        } = c;
        let topic = TopicName::parse(topic)?;
        let store = self.store.clone();
        let max = max.clamp(1, 64) as usize;
        let mut found =
            blocking(move || store.query_by_key(&topic, &key, max, begin_ms, end_ms)).await??;
        // The answer must fit one frame: keep the newest records that do.
        let room = (self.cfg.broker.max_frame_bytes as usize).saturating_sub(64 << 10);
        let mut used = 0;
        found.retain(|r| {
            used += r.len();
            used <= room
        });
        Ok(Records(found))
    }

    /// `PluginLoad`.
    pub(super) async fn load_plugin(&self, c: cmd::PluginLoad) -> Result<PluginsReply> {
        let host = self.plugins.clone();
        let spec = LoadSpec {
            wasm: c.wasm,
            config: Some(c.config),
            memory_limit_bytes: c.memory_limit_bytes,
            time_limit_ms: c.time_limit_ms,
        };
        let name = c.name;
        let info = blocking(move || host.load(&name, spec)).await??;
        Ok(PluginsReply {
            plugins: vec![info],
        })
    }

    /// `PluginReload`: atomically; in-flight batches finish on the old version.
    pub(super) async fn reload_plugin(&self, c: cmd::PluginReload) -> Result<PluginsReply> {
        let host = self.plugins.clone();
        let spec = LoadSpec {
            wasm: c.wasm,
            config: c.config,
            memory_limit_bytes: c.memory_limit_bytes,
            time_limit_ms: c.time_limit_ms,
        };
        let name = c.name;
        let info = blocking(move || host.reload(&name, spec)).await??;
        Ok(PluginsReply {
            plugins: vec![info],
        })
    }

    /// `PluginUnload`.
    pub(super) async fn unload_plugin(&self, c: cmd::PluginUnload) -> Result<Done> {
        let host = self.plugins.clone();
        blocking(move || host.unload(&c.name, c.force)).await??;
        Ok(Done)
    }

    /// `PluginList`.
    pub(super) fn list_plugins(&self) -> PluginsReply {
        PluginsReply {
            plugins: self.plugins.list(),
        }
    }

    /// `PluginDescribe`.
    pub(super) fn describe_plugin(&self, c: cmd::PluginDescribe) -> Result<PluginsReply> {
        Ok(PluginsReply {
            plugins: vec![self.plugins.describe(&c.name)?],
        })
    }

    /// `PluginAttach`: to the end of a topic's ingress chain.
    pub(super) async fn attach_plugin(&self, c: cmd::PluginAttach) -> Result<Done> {
        let host = self.plugins.clone();
        blocking(move || host.attach(&c.name, &c.topic)).await??;
        Ok(Done)
    }

    /// `PluginDetach`.
    pub(super) async fn detach_plugin(&self, c: cmd::PluginDetach) -> Result<Done> {
        let host = self.plugins.clone();
        blocking(move || host.detach(&c.name, &c.topic)).await??;
        Ok(Done)
    }

    fn check_queue_count(&self, queues: u32) -> Result<()> {
        let max = self.cfg.broker.max_queues;
        if queues == 0 || queues > max {
            return Err(BrokerError::new(
                Status::BadRequest,
                format!("queue count must be 1..={max}, got {queues}"),
            ));
        }
        Ok(())
    }

    /// Queue count of a topic, auto-creating it when asked and allowed.
    pub(super) async fn route(&self, topic: &TopicName, create: bool) -> Result<u32> {
        internal_topic(topic)?;
        if let Some(q) = self.topics.queues(topic) {
            return Ok(q);
        }
        if create && special::is_broker_created(topic) {
            let (topics, t) = (self.topics.clone(), topic.to_string());
            let (q, _) = blocking(move || topics.create(&t, 1))
                .await?
                .map_err(internal)?;
            return Ok(q);
        }
        if create && self.cfg.cluster.enabled() {
            // A topic exists in a cluster only through its route: the node's cluster agent
            // creates it (route queries with `create`, `admin topic create`).
            return Err(BrokerError::new(
                Status::TopicNotFound,
                format!(
                    "topic {topic:?} does not exist on this broker; in a cluster a topic is \
                     created through the controller (a TopicRoute or Route query with create, \
                     or `quiver admin topic create`)"
                ),
            ));
        }
        if !create || !self.cfg.broker.auto_create_topics {
            return Err(BrokerError::new(
                Status::TopicNotFound,
                format!(
                    "topic {topic:?} does not exist{}",
                    if self.cfg.broker.auto_create_topics {
                        ""
                    } else {
                        " and auto-creation is off; create it with `quiver admin topic create`"
                    }
                ),
            ));
        }
        if self.topics.is_deleting(topic) {
            return Err(BrokerError::new(
                Status::Busy,
                format!("topic {topic:?} is being deleted; retry in a moment"),
            ));
        }
        let max_topics = self.cfg.broker.max_topics;
        if self.topics.len() >= max_topics {
            return Err(BrokerError::new(
                Status::InvalidName,
                format!(
                    "the broker holds {max_topics} topics (broker.max_topics); topic {topic:?} \
                     is not created automatically; delete unused topics or raise the limit"
                ),
            ));
        }
        // Creating writes and fsyncs topics.json: off the async workers.
        let (topics, t, queues) = (
            self.topics.clone(),
            topic.to_string(),
            self.cfg.broker.default_queues,
        );
        let (q, created) = blocking(move || topics.create(&t, queues))
            .await?
            .map_err(internal)?;
        if created {
            tracing::info!(%topic, queues = q, "topic auto-created");
        }
        Ok(q)
    }

    pub(super) fn existing_queue(&self, topic: &TopicName, queue_id: u32) -> Result<u32> {
        let n = self.topics.queues(topic).ok_or_else(|| not_found(topic))?;
        if queue_id >= n {
            return Err(BrokerError::new(
                Status::QueueNotFound,
                format!("topic {topic:?} has {n} queues; queue {queue_id} does not exist"),
            ));
        }
        Ok(n)
    }
}

/// Refuses admin changes to system topics (§9.5 of docs/PROTOCOL.md): the broker creates them
/// and owns their queues.
fn client_writable_topic(topic: &str, what: &str) -> Result<()> {
    internal_topic(topic)?;
    if names::is_system_topic(topic) {
        return Err(BrokerError::new(
            Status::InvalidName,
            format!("topic {topic:?} is a system topic: the broker creates it when needed, and it cannot be {what} by a client"),
        ));
    }
    Ok(())
}

/// Refuses the broker's internal topics (scheduled, half and op records) as user topics:
/// they are read only by the timer and the transaction checker.
fn internal_topic(topic: &str) -> Result<()> {
    if [
        names::SCHEDULE_TOPIC,
        names::HALF_TOPIC,
        names::HALF_OP_TOPIC,
    ]
    .contains(&topic)
    {
        return Err(BrokerError::new(
            Status::InvalidName,
            format!("topic {topic:?} is internal to the broker"),
        ));
    }
    Ok(())
}
