//! Topic commands on a cluster node: routes come from the controller's committed state, and
//! topics are created, changed and deleted through it (the brokers of the route's sets then
//! apply the change to their own topic tables). Everything else goes to the local broker.

use std::net::SocketAddr;

use quiver_protocol::cmd::{Done, TopicRouteReply};
use quiver_protocol::{names, Request, Response, Status};

use crate::broker::{Broker, BrokerError};
use crate::cluster::{ClusterError, Member, RouteError};

/// What [`intercept`] did with a request.
pub(super) enum Routed {
    /// Answered it through the cluster.
    Answered(Result<Response, BrokerError>),
    /// The local broker answers it.
    Local(Request),
}

/// Takes the topic commands that are the cluster's business; hands back the rest.
pub(super) async fn intercept(
    req: Request,
    node: &std::sync::Arc<Member>,
    broker: &Broker,
    remote: SocketAddr,
) -> Routed {
    let answered = match req {
        Request::TopicRoute(r) => {
            let create = r.create && broker.config().broker.auto_create_topics;
            match check_topic(&r.topic) {
                Err(e) => Err(e),
                Ok(()) => node
                    .route(&r.topic, create)
                    .await
                    .map(|sets| Response::TopicRoute(TopicRouteReply { sets }))
                    .map_err(route_error),
            }
        }
        Request::TopicCreateOn(c) => match check_create(&c.topic, c.queues, broker) {
            Err(e) => Err(e),
            Ok(()) => node
                .create_topic(&c.topic, c.queues, c.sets)
                .await
                .map(|sets| Response::TopicCreateOn(TopicRouteReply { sets }))
                .map_err(route_error),
        },
        Request::TopicCreate(c) if !names::is_system_topic(&c.topic) => {
            match check_create(&c.topic, c.queues, broker) {
                Err(e) => Err(e),
                Ok(()) => node
                    .create_topic(&c.topic, c.queues, Vec::new())
                    .await
                    .map(|_| Response::TopicCreate(Done))
                    .map_err(route_error),
            }
        }
        Request::TopicUpdate(c) if !names::is_system_topic(&c.topic) => {
            match check_create(&c.topic, c.queues, broker) {
                Err(e) => Err(e),
                Ok(()) => node
                    .update_topic(&c.topic, c.queues)
                    .await
                    .map(|_| Response::TopicUpdate(Done))
                    .map_err(route_error),
            }
        }
        Request::TopicDelete(c) if !names::is_system_topic(&c.topic) => {
            match node.delete_topic(&c.topic).await {
                Ok(()) => Ok(Response::TopicDelete(Done)),
                // A topic only this broker has (created before it joined the cluster).
                Err(RouteError::NoRoute(_)) => return Routed::Local(Request::TopicDelete(c)),
                Err(e) => Err(route_error(e)),
            }
        }
        // The single-broker route query: this broker's own queues, the topic created
        // through the controller when it is missing and the client asks for it.
        Request::Route(r) if r.create && !names::is_system_topic(&r.topic) => {
            let local = quiver_protocol::cmd::Route {
                topic: r.topic.clone(),
                create: false,
            };
            match broker.handle(Request::Route(local.clone()), remote).await {
                Err(e) if e.status() == Status::TopicNotFound => {}
                other => return Routed::Answered(other),
            }
            if !broker.config().broker.auto_create_topics {
                return Routed::Local(Request::Route(local));
            }
            if let Err(e) = node.route(&r.topic, true).await {
                return Routed::Answered(Err(route_error(e)));
            }
            return Routed::Local(Request::Route(local));
        }
        // Plugins are the master's: a slave mirrors them (and would undo a change of its own).
        Request::PluginLoad(_)
        | Request::PluginReload(_)
        | Request::PluginUnload(_)
        | Request::PluginAttach(_)
        | Request::PluginDetach(_)
            if broker.store().is_replica() =>
        {
            Err(BrokerError::new(
                Status::NotMaster,
                "this broker is a slave of its broker set: plugins are loaded and attached on \
                 the set's master, and its slaves mirror them",
            ))
        }
        // A consumer reading from a slave commits there: the commit also goes to the set's
        // master (which the slave mirrors its offsets from), so it is neither lost at the
        // next mirror nor after a failover. In the background; the slave answers at once.
        Request::CommitOffset(c) if broker.store().is_replica() => {
            let frame = quiver_protocol::cmd::encode_request(&c);
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = node
                    .forward_to_master(frame, quiver_protocol::Command::CommitOffset as u16)
                    .await
                {
                    tracing::debug!(error = %e, "commit not forwarded to the master");
                }
            });
            return Routed::Local(Request::CommitOffset(c));
        }
        other => return Routed::Local(other),
    };
    Routed::Answered(answered)
}

fn check_topic(topic: &str) -> Result<(), BrokerError> {
    names::check_name("topic", topic).map_err(|e| BrokerError::new(Status::InvalidName, e))?;
    if names::is_system_topic(topic) {
        return Err(BrokerError::new(
            Status::BadRequest,
            format!("{topic:?} is a system topic: each broker keeps its own"),
        ));
    }
    Ok(())
}

fn check_create(topic: &str, queues: u32, broker: &Broker) -> Result<(), BrokerError> {
    check_topic(topic)?;
    let max = broker.config().broker.max_queues;
    if queues == 0 || queues > max {
        return Err(BrokerError::new(
            Status::BadRequest,
            format!("queue count must be 1..={max}, got {queues}"),
        ));
    }
    Ok(())
}

fn route_error(e: RouteError) -> BrokerError {
    let status = match &e {
        RouteError::NoRoute(_) => Status::TopicNotFound,
        RouteError::Exists(_) => Status::TopicExists,
        RouteError::Invalid(_) => Status::BadRequest,
        RouteError::Unavailable(_) => Status::ControllerUnavailable,
        RouteError::Cluster(ClusterError::Storage(_) | ClusterError::Malformed(_)) => {
            Status::Internal
        }
        RouteError::Cluster(_) => Status::ControllerUnavailable,
    };
    BrokerError::new(status, e.to_string())
}
