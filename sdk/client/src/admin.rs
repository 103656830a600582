//! Topic and consumer-group management, and message lookups.

use quiver_protocol::{
    names, GroupMode, GroupQueue, GroupSummary, MemberInfo, QueueInfo, Request, ResetTarget,
    Response, Status, TopicSummary,
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

    async fn done(&self, what: &str, request: Request) -> Result<(), ClientError> {
        match self.client.request(request).await? {
            Response::Done => Ok(()),
            other => Err(ClientError::unexpected(what, &other)),
        }
    }

    /// Creates a topic with `queues` queues (fails with status `TopicExists` if it exists).
    pub async fn create_topic(&self, name: &str, queues: u32) -> Result<(), ClientError> {
        check("topic", name)?;
        if queues == 0 {
            return Err(ClientError::invalid("a topic needs at least one queue"));
        }
        let request = Request::TopicCreate {
            topic: name.to_string(),
            queues,
        };
        self.done("TopicCreate", request).await
    }

    /// Changes a topic's queue count.
    pub async fn update_topic(&self, name: &str, queues: u32) -> Result<(), ClientError> {
        check("topic", name)?;
        if queues == 0 {
            return Err(ClientError::invalid("a topic needs at least one queue"));
        }
        let request = Request::TopicUpdate {
            topic: name.to_string(),
            queues,
        };
        self.done("TopicUpdate", request).await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        check("topic", name)?;
        let request = Request::TopicDelete {
            topic: name.to_string(),
        };
        self.done("TopicDelete", request).await
    }

    /// All topics with their queue counts.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        match self.client.request(Request::TopicList).await? {
            Response::Topics(list) => Ok(list),
            other => Err(ClientError::unexpected("TopicList", &other)),
        }
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
        match self.client.request(Request::MessageById { id: id.0 }).await {
            Ok(Response::Messages(records)) => match records.into_iter().next() {
                Some(r) => Ok(Some(ReceivedMessage::parse(r)?)),
                None => Ok(None),
            },
            Ok(other) => Err(ClientError::unexpected("MessageById", &other)),
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
        let request = Request::MessageByKey {
            topic: topic.to_string(),
            key: key.to_string(),
            max,
            begin_ms,
            end_ms,
        };
        match self.client.request(request).await {
            Ok(Response::Messages(records)) => {
                records.into_iter().map(ReceivedMessage::parse).collect()
            }
            Ok(other) => Err(ClientError::unexpected("MessageByKey", &other)),
            Err(ClientError::Broker {
                status: Status::NotFound,
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Consumer groups: those with live members or committed offsets.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        match self.client.request(Request::GroupList).await? {
            Response::Groups(list) => Ok(list),
            other => Err(ClientError::unexpected("GroupList", &other)),
        }
    }

    /// A group's mode, live members and queues. Fails with status `GroupNotFound` when the
    /// group has neither members nor committed offsets.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        check("group", group)?;
        let request = Request::GroupDescribe {
            group: group.to_string(),
        };
        match self.client.request(request).await? {
            Response::Group {
                name,
                mode,
                members,
                queues,
            } => Ok(GroupDescription {
                name,
                mode,
                members,
                queues,
            }),
            other => Err(ClientError::unexpected("GroupDescribe", &other)),
        }
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
        let request = Request::GroupResetOffset {
            group: group.to_string(),
            topic: topic.to_string(),
            target,
            force,
        };
        self.done("GroupResetOffset", request).await
    }

    /// Deletes a group's committed offsets and membership. Refused (status `GroupOnline`)
    /// while it has live members, unless `force`; fails with `GroupNotFound` when there is
    /// nothing to delete.
    pub async fn delete_group(&self, group: &str, force: bool) -> Result<(), ClientError> {
        check("group", group)?;
        let request = Request::GroupDelete {
            group: group.to_string(),
            force,
        };
        self.done("GroupDelete", request).await
    }
}
