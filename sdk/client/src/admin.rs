//! Topic and consumer-group management, and message lookups.

use bytes::Bytes;
use quiver_protocol::cmd::{
    self, Call, DlqResend, GroupDelete, GroupDescribe, GroupList, GroupResetOffset, MessageById,
    MessageByKey, PluginAttach, PluginDescribe, PluginDetach, PluginList, PluginLoad, PluginReload,
    PluginUnload, PluginsReply, RouteSet, TopicCreate, TopicCreateOn, TopicDelete, TopicList,
    TopicRoute, TopicUpdate,
};
use quiver_protocol::{
    names, GroupMode, GroupQueue, GroupSummary, MemberInfo, PluginInfo, QueueInfo, ResetTarget,
    Status, TopicSummary,
};

use crate::client::Client;
use crate::error::ClientError;
use crate::message::{MessageId, ReceivedMessage};

/// A consumer group in detail (see [`Admin::describe_group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group name.
    pub name: String,
    /// Mode of its members (clustering when it has none).
    pub mode: GroupMode,
    /// Its live members and the queues each owns now.
    pub members: Vec<MemberInfo>,
    /// Every queue of its topics (subscribed or with committed offsets): committed offset,
    /// queue end and current owner.
    pub queues: Vec<GroupQueue>,
}

/// Administrative calls: topics, consumer groups and message lookups. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

/// A password's verifier with a new salt (argon2id off the async threads).
async fn wire_verifier(password: &str) -> Result<cmd::WireVerifier, ClientError> {
    let password = password.to_string();
    let v = tokio::task::spawn_blocking(move || {
        crate::auth::Credentials::new("", password)
            .verifier(quiver_protocol::scram::Params::DEFAULT)
    })
    .await
    .map_err(|e| ClientError::Protocol(format!("password hashing failed: {e}")))??;
    Ok(cmd::WireVerifier {
        salt: v.salt,
        m_kib: v.params.m_kib,
        t: v.params.t,
        p: v.params.p,
        stored_key: v.stored_key,
        server_key: v.server_key,
    })
}

fn json(reply: cmd::JsonReply) -> Result<serde_json::Value, ClientError> {
    serde_json::from_str(&reply.json)
        .map_err(|e| ClientError::Protocol(format!("the broker's answer is not JSON: {e}")))
}

fn check(kind: &str, name: &str) -> Result<(), ClientError> {
    names::check_name(kind, name).map_err(ClientError::InvalidArgument)
}

impl Admin {
    /// Admin calls over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client these calls use.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A call answered with [`cmd::Done`].
    async fn done<C: Call<Reply = cmd::Done>>(&self, c: C) -> Result<(), ClientError> {
        self.client.call(c).await?;
        Ok(())
    }

    /// Creates a topic with `queues` queues (fails with status `TopicExists` if it exists).
    pub async fn create_topic(&self, name: &str, queues: u32) -> Result<(), ClientError> {
        check("topic", name)?;
        if queues == 0 {
            return Err(ClientError::invalid("a topic needs at least one queue"));
        }
        let request = TopicCreate {
            topic: name.to_string(),
            queues,
        };
        self.done(request).await
    }

    /// Creates a topic in a cluster with `queues` queues on each of `sets` (every broker set
    /// with a live broker when empty); returns its route. On a broker outside a cluster the
    /// only set is the broker itself (named after it).
    pub async fn create_topic_on(
        &self,
        name: &str,
        queues: u32,
        sets: &[String],
    ) -> Result<Vec<RouteSet>, ClientError> {
        check("topic", name)?;
        if queues == 0 {
            return Err(ClientError::invalid("a topic needs at least one queue"));
        }
        let reply = self
            .client
            .call(TopicCreateOn {
                topic: name.to_string(),
                queues,
                sets: sets.to_vec(),
            })
            .await?;
        Ok(reply.sets)
    }

    /// A topic's route: the broker sets holding its queues, their queue counts and brokers
    /// (status `TopicNotFound` when it has none).
    pub async fn topic_route(&self, name: &str) -> Result<Vec<RouteSet>, ClientError> {
        check("topic", name)?;
        let reply = self
            .client
            .call(TopicRoute {
                topic: name.to_string(),
                create: false,
            })
            .await?;
        Ok(reply.sets)
    }

    /// Changes a topic's queue count.
    pub async fn update_topic(&self, name: &str, queues: u32) -> Result<(), ClientError> {
        check("topic", name)?;
        if queues == 0 {
            return Err(ClientError::invalid("a topic needs at least one queue"));
        }
        let request = TopicUpdate {
            topic: name.to_string(),
            queues,
        };
        self.done(request).await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        check("topic", name)?;
        let request = TopicDelete {
            topic: name.to_string(),
        };
        self.done(request).await
    }

    /// The cluster controller as the connected node sees it: cluster id, this node, the
    /// leader and term, and the controller's voters (`quiver admin cluster list`). A
    /// standalone broker answers `cluster_id` "standalone" and no nodes.
    pub async fn cluster_info(
        &self,
    ) -> Result<quiver_protocol::cmd::ClusterInfoReply, ClientError> {
        self.client.call(quiver_protocol::cmd::ClusterInfo {}).await
    }

    /// Makes node `node` the master of broker set `set` (a switch-over): it must be an
    /// in-sync slave of the set, or the controller refuses (`NotEnoughReplicas` when it is
    /// not in sync). The set's epoch rises by one; the old master becomes a slave. Returns
    /// the cluster as the answering node sees it afterwards.
    pub async fn cluster_elect_master(
        &self,
        set: &str,
        node: u64,
    ) -> Result<quiver_protocol::cmd::ClusterInfoReply, ClientError> {
        let c = quiver_protocol::cmd::ClusterElect {
            set: set.to_string(),
            node_id: node,
        };
        self.client
            .call_with_timeout(c, std::time::Duration::from_secs(30))
            .await
    }

    /// Adds controller voter `id` listening at `addr` (a node started with `cluster.join`):
    /// it joins as a learner, catches up with the log, then votes. Accepted from this
    /// machine (loopback) or a cluster member; returns the controller afterwards.
    pub async fn cluster_add_voter(
        &self,
        id: u64,
        addr: std::net::SocketAddr,
    ) -> Result<quiver_protocol::cmd::ClusterInfoReply, ClientError> {
        let c = quiver_protocol::cmd::ClusterVoter {
            add: true,
            id,
            addr: addr.to_string(),
        };
        self.client
            .call_with_timeout(c, std::time::Duration::from_secs(30))
            .await
    }

    /// Removes controller voter `id` (its node stops taking part in elections and commits).
    pub async fn cluster_remove_voter(
        &self,
        id: u64,
    ) -> Result<quiver_protocol::cmd::ClusterInfoReply, ClientError> {
        let c = quiver_protocol::cmd::ClusterVoter {
            add: false,
            id,
            addr: String::new(),
        };
        self.client
            .call_with_timeout(c, std::time::Duration::from_secs(30))
            .await
    }

    /// The broker's status report as a JSON object: version, uptime, role, configuration
    /// summary, message totals, connections, disk and counters (fields in
    /// docs/PROTOCOL.md, command BrokerStatus).
    pub async fn broker_status(&self) -> Result<serde_json::Value, ClientError> {
        let reply = self.client.call(quiver_protocol::cmd::BrokerStatus).await?;
        serde_json::from_str(&reply.json)
            .map_err(|e| ClientError::Protocol(format!("broker status is not JSON: {e}")))
    }

    /// Creates a user with `password` (the first user of a broker must be
    /// [`Role::Super`](quiver_protocol::cmd::Role)). Only the password's verifier is sent:
    /// a random salt, argon2id with the default costs, then the SCRAM keys
    /// (docs/SECURITY.md §2).
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        role: cmd::Role,
    ) -> Result<(), ClientError> {
        check("user", name)?;
        let verifier = wire_verifier(password).await?;
        self.done(cmd::UserCreate {
            name: name.to_string(),
            role,
            verifier,
        })
        .await
    }

    /// Replaces a user's password (open connections stay logged in).
    pub async fn change_password(&self, name: &str, password: &str) -> Result<(), ClientError> {
        let verifier = wire_verifier(password).await?;
        self.done(cmd::UserPassword {
            name: name.to_string(),
            verifier,
        })
        .await
    }

    /// Deletes a user and its rules; its open connections are refused from their next
    /// request.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.done(cmd::UserDelete {
            name: name.to_string(),
        })
        .await
    }

    /// Every user: `{"users": [{"name", "role", "rules", "created_ms"}]}`.
    pub async fn list_users(&self) -> Result<serde_json::Value, ClientError> {
        json(self.client.call(cmd::UserList).await?)
    }

    /// Adds a rule to a user (or widens the actions of its rule with the same resource,
    /// decision and source). Applies to the user's open connections at once.
    pub async fn grant(&self, user: &str, rule: cmd::AclRule) -> Result<(), ClientError> {
        self.done(cmd::AclGrant {
            user: user.to_string(),
            rule,
        })
        .await
    }

    /// Removes `rule.actions` from the user's rule with the same resource, decision and
    /// source (status `NotFound` when it has none).
    pub async fn revoke(&self, user: &str, rule: cmd::AclRule) -> Result<(), ClientError> {
        self.done(cmd::AclRevoke {
            user: user.to_string(),
            rule,
        })
        .await
    }

    /// A user's rules, or every user's (`None`): `{"users": [{"user", "role", "rules":
    /// [{"resource", "actions", "decision", "source"}]}]}`.
    pub async fn list_rules(&self, user: Option<&str>) -> Result<serde_json::Value, ClientError> {
        json(
            self.client
                .call(cmd::AclList {
                    user: user.unwrap_or("").to_string(),
                })
                .await?,
        )
    }

    /// All topics with their queue counts.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        Ok(self.client.call(TopicList).await?.topics)
    }

    /// A topic's queues with their readable offset ranges.
    pub async fn describe_topic(&self, name: &str) -> Result<Vec<QueueInfo>, ClientError> {
        crate::consumer::describe(&self.client, name).await
    }

    /// The message with this id, if the broker still has it.
    pub async fn message_by_id(
        &self,
        id: MessageId,
    ) -> Result<Option<ReceivedMessage>, ClientError> {
        match self.client.call(MessageById { id: id.0 }).await {
            Ok(cmd::Records(records)) => match records.into_iter().next() {
                Some(r) => Ok(Some(ReceivedMessage::parse(r)?)),
                None => Ok(None),
            },
            Err(ClientError::Broker {
                status: Status::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Up to `max` messages of `topic` carrying `key`, whenever they were stored.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: u32,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        self.query_by_key_between(topic, key, max, 0, i64::MAX)
            .await
    }

    /// Up to `max` messages of `topic` carrying `key`, stored between `begin_ms` and `end_ms`
    /// (inclusive, ms since the Unix epoch).
    pub async fn query_by_key_between(
        &self,
        topic: &str,
        key: &str,
        max: u32,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        check("topic", topic)?;
        if key.is_empty() {
            return Err(ClientError::invalid("key is empty"));
        }
        let request = MessageByKey {
            topic: topic.to_string(),
            key: key.to_string(),
            max,
            begin_ms,
            end_ms,
        };
        match self.client.call(request).await {
            Ok(cmd::Records(records)) => records.into_iter().map(ReceivedMessage::parse).collect(),
            Err(ClientError::Broker {
                status: Status::NotFound,
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Consumer groups: those with live members or committed offsets.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        Ok(self.client.call(GroupList).await?.groups)
    }

    /// A group's mode, live members and queues. Fails with status `GroupNotFound` when the
    /// group has neither members nor committed offsets.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        check("group", group)?;
        let request = GroupDescribe {
            group: group.to_string(),
        };
        let cmd::GroupReply {
            name,
            mode,
            members,
            queues,
        } = self.client.call(request).await?;
        Ok(GroupDescription {
            name,
            mode,
            members,
            queues,
        })
    }

    /// Moves a group's committed offsets on every queue of `topic` to `target`. Refused
    /// (status `GroupOnline`) while the group has live members, unless `force`; live members
    /// may then overwrite the new offsets with their next commit.
    pub async fn reset_group_offset(
        &self,
        group: &str,
        topic: &str,
        target: ResetTarget,
        force: bool,
    ) -> Result<(), ClientError> {
        check("group", group)?;
        check("topic", topic)?;
        let request = GroupResetOffset {
            group: group.to_string(),
            topic: topic.to_string(),
            target,
            force,
        };
        self.done(request).await
    }

    /// Deletes a group's committed offsets and membership. Refused (status `GroupOnline`)
    /// while it has live members, unless `force`; fails with `GroupNotFound` when there is
    /// nothing to delete.
    pub async fn delete_group(&self, group: &str, force: bool) -> Result<(), ClientError> {
        check("group", group)?;
        let request = GroupDelete {
            group: group.to_string(),
            force,
        };
        self.done(request).await
    }

    /// A call answered with one plugin (load, reload, describe).
    async fn one_plugin<C: Call<Reply = PluginsReply>>(
        &self,
        c: C,
    ) -> Result<PluginInfo, ClientError> {
        self.client
            .call(c)
            .await?
            .plugins
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol(format!("empty answer to {:?}", C::COMMAND)))
    }

    /// Loads a WebAssembly plugin (binary, or WAT text) under a new `name`, with its
    /// configuration and limits (`None` = the broker's defaults: 16 MiB, 100 ms per batch).
    /// The broker compiles it, checks its exports and imports, runs its `quiver_init`, and keeps
    /// it across restarts. Fails with `InvalidPlugin` saying what is wrong, or `PluginExists`.
    pub async fn load_plugin(
        &self,
        name: &str,
        wasm: impl Into<Bytes>,
        config: Vec<(String, String)>,
        memory_limit_bytes: Option<u64>,
        time_limit_ms: Option<u32>,
    ) -> Result<PluginInfo, ClientError> {
        check("plugin", name)?;
        let request = PluginLoad {
            name: name.to_string(),
            wasm: wasm.into(),
            config,
            memory_limit_bytes: memory_limit_bytes.unwrap_or(0),
            time_limit_ms: time_limit_ms.unwrap_or(0),
        };
        self.one_plugin(request).await
    }

    /// Replaces a plugin atomically: a new module (`None` keeps the current one), a new
    /// configuration (`None` keeps it), new limits (`None` keeps them). Batches already running
    /// finish on the old version. A reload also clears an unhealthy mark.
    pub async fn reload_plugin(
        &self,
        name: &str,
        wasm: Option<Bytes>,
        config: Option<Vec<(String, String)>>,
        memory_limit_bytes: Option<u64>,
        time_limit_ms: Option<u32>,
    ) -> Result<PluginInfo, ClientError> {
        check("plugin", name)?;
        let request = PluginReload {
            name: name.to_string(),
            wasm: wasm.unwrap_or_default(),
            config,
            memory_limit_bytes: memory_limit_bytes.unwrap_or(0),
            time_limit_ms: time_limit_ms.unwrap_or(0),
        };
        self.one_plugin(request).await
    }

    /// Unloads a plugin. Refused (`PluginInUse`) while it is attached to a topic's ingress,
    /// unless `force`, which detaches it first. Subscriptions naming it then fail their pulls
    /// with `PluginNotFound`.
    pub async fn unload_plugin(&self, name: &str, force: bool) -> Result<(), ClientError> {
        check("plugin", name)?;
        let request = PluginUnload {
            name: name.to_string(),
            force,
        };
        self.done(request).await
    }

    /// Every loaded plugin with its health and counters.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>, ClientError> {
        Ok(self.client.call(PluginList).await?.plugins)
    }

    /// One plugin.
    pub async fn describe_plugin(&self, name: &str) -> Result<PluginInfo, ClientError> {
        check("plugin", name)?;
        let request = PluginDescribe {
            name: name.to_string(),
        };
        self.one_plugin(request).await
    }

    /// Appends a plugin to `topic`'s ingress chain: from now on every send to the topic runs
    /// through it before anything is stored.
    pub async fn attach_plugin(&self, name: &str, topic: &str) -> Result<(), ClientError> {
        check("plugin", name)?;
        check("topic", topic)?;
        let request = PluginAttach {
            name: name.to_string(),
            topic: topic.to_string(),
        };
        self.done(request).await
    }

    /// Removes a plugin from `topic`'s ingress chain.
    pub async fn detach_plugin(&self, name: &str, topic: &str) -> Result<(), ClientError> {
        check("plugin", name)?;
        check("topic", topic)?;
        let request = PluginDetach {
            name: name.to_string(),
            topic: topic.to_string(),
        };
        self.done(request).await
    }

    /// Messages in `group`'s dead-letter queue (`%DLQ%<group>`), from queue offset `from`, at
    /// most `max`; their `topic` is the dead-letter topic and the `RETRY_TOPIC` property names
    /// the topic they were first sent to. An empty list when the group has no DLQ.
    pub async fn dlq_list(
        &self,
        group: &str,
        from: u64,
        max: u32,
    ) -> Result<Vec<ReceivedMessage>, ClientError> {
        check("group", group)?;
        let topic = quiver_protocol::names::dlq_topic(group);
        let consumer = crate::consumer::PullConsumer::new(self.client.clone());
        let options = crate::consumer::PullOptions {
            max_messages: max.clamp(1, 4096),
            long_poll: std::time::Duration::ZERO,
            ..Default::default()
        };
        match consumer.pull(&topic, 0, from, options).await {
            Ok(r) => Ok(r.messages),
            Err(ClientError::Broker {
                status: Status::TopicNotFound,
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Resends dead-lettered messages of `group` to its retry topic, where the group's
    /// consumers get them again with a fresh reconsume count: one message by id, or up to
    /// `max` messages from DLQ offset `from`. Returns how many were resent.
    pub async fn dlq_resend(
        &self,
        group: &str,
        id: Option<MessageId>,
        from: u64,
        max: u32,
    ) -> Result<u64, ClientError> {
        check("group", group)?;
        let request = DlqResend {
            group: group.to_string(),
            id: id.map(|i| i.0),
            from_offset: from,
            max,
        };
        Ok(self.client.call(request).await?.0)
    }
}
