//! `quiver admin`: topics and message lookups.

use anyhow::Context;
use clap::{Args, Subcommand};
use quiver_client::{Admin, MessageId};
use quiver_protocol::names::props;
use serde::Serialize;

use super::output::{message_block, message_header, message_line, MessageJson, Out};
use super::ClientArgs;

/// Arguments of `quiver admin`.
#[derive(Args)]
pub(crate) struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create, change, delete, list and describe topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Look messages up by id or by key.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Consumer groups: list, describe, reset offsets, delete.
    #[command(subcommand)]
    Group(super::group::GroupCommand),
    /// WebAssembly plugins: load, reload, unload, list, describe, attach to a topic, detach.
    #[command(subcommand)]
    Plugin(super::plugin::PluginCommand),
    /// A consumer group's dead-letter queue (`%DLQ%<group>`): list, resend.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The cluster: its controller's leader, term and voters.
    #[command(subcommand)]
    Cluster(super::cluster::ClusterCommand),
    /// The broker itself: its status.
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// Users: create, change password, delete, list (docs/SECURITY.md).
    #[command(subcommand)]
    User(super::users::UserCommand),
    /// Access rules of users: grant, revoke, list.
    #[command(subcommand)]
    Acl(super::users::AclCommand),
}

#[derive(Subcommand)]
enum BrokerCommand {
    /// Version, uptime, role, configuration summary, message rates, connections and disk
    /// (like `mqadmin brokerStatus`); the rates are measured over --sample.
    Status {
        /// How long to watch the totals to measure the rates (0: no rates).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_sample)]
        sample: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages of a group.
    List {
        /// Consumer group.
        group: String,
        /// First DLQ offset to show.
        #[arg(long, value_name = "N", default_value_t = 0)]
        from: u64,
        /// At most this many messages.
        #[arg(long, value_name = "N", default_value_t = 100)]
        max: u32,
    },
    /// Resend dead-lettered messages to the group's retry topic: one by --id, or all from
    /// --from (at most --max). The group's consumers get them again with a fresh count.
    Resend {
        /// Consumer group.
        group: String,
        /// Only this message (32 hex digits).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// First DLQ offset to resend (without --id).
        #[arg(long, value_name = "N", default_value_t = 0)]
        from: u64,
        /// At most this many messages (without --id).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        max: u32,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic (fails if it exists).
    Create {
        /// Topic name: 1-127 characters from A-Z a-z 0-9 _ % | -
        name: String,
        /// Number of queues (in a cluster: on each broker set).
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
        queues: u32,
        /// In a cluster: only on these broker sets (comma-separated); default every set with
        /// a live broker.
        #[arg(long, value_name = "SET,...", value_delimiter = ',')]
        sets: Vec<String>,
    },
    /// Change a topic's queue count.
    Update {
        /// Topic name.
        name: String,
        /// New number of queues.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        queues: u32,
        /// Shrink the topic: producers stop sending to the queues beyond N, and consumers
        /// that have not read their messages yet no longer get them.
        #[arg(long)]
        force: bool,
    },
    /// Delete a topic and its messages.
    Delete {
        /// Topic name.
        name: String,
    },
    /// List topics with their queue counts.
    List,
    /// Show where a topic's queues are: broker sets, queue counts and brokers.
    Route {
        /// Topic name.
        name: String,
    },
    /// Show each queue's offset range and message count.
    Describe {
        /// Topic name.
        name: String,
    },
}

#[derive(Subcommand)]
enum MessageCommand {
    /// Show a message by its id (printed by `quiver produce`).
    Get {
        /// Message id: 32 hex digits.
        #[arg(long, value_name = "ID")]
        id: String,
    },
    /// Cancel a scheduled message that is not yet due (`quiver produce --delay`).
    Cancel {
        /// Message id: 32 hex digits.
        #[arg(long, value_name = "ID")]
        id: String,
    },
    /// Find a topic's messages by lookup key (`quiver produce --key`).
    Query {
        /// Topic.
        #[arg(long, short = 't')]
        topic: String,
        /// Lookup key.
        #[arg(long)]
        key: String,
        /// At most this many messages (the broker caps it at 64).
        #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=64))]
        max: u32,
    },
}

#[derive(Serialize)]
struct TopicDone<'a> {
    topic: &'a str,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queues: Option<u32>,
}

#[derive(Serialize)]
struct TopicRow<'a> {
    topic: &'a str,
    queues: u32,
}

#[derive(Serialize)]
struct QueueRow<'a> {
    topic: &'a str,
    queue: u32,
    min_offset: u64,
    max_offset: u64,
    messages: u64,
}

/// Runs `quiver admin ...`.
pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<()> {
    // Check what can be checked before connecting.
    let id = match &args.command {
        AdminCommand::Topic(
            TopicCommand::Create { name, .. }
            | TopicCommand::Update { name, .. }
            | TopicCommand::Delete { name }
            | TopicCommand::Route { name }
            | TopicCommand::Describe { name },
        ) => {
            super::check_name("topic", name)?;
            None
        }
        AdminCommand::Topic(TopicCommand::List) => None,
        AdminCommand::Message(MessageCommand::Get { id } | MessageCommand::Cancel { id }) => {
            Some(parse_id(id)?)
        }
        AdminCommand::Dlq(DlqCommand::List { group, .. }) => {
            super::check_name("group", group)?;
            None
        }
        AdminCommand::Dlq(DlqCommand::Resend { group, id, .. }) => {
            super::check_name("group", group)?;
            id.as_deref().map(parse_id).transpose()?
        }
        AdminCommand::Message(MessageCommand::Query { topic, key, .. }) => {
            super::check_name("topic", topic)?;
            anyhow::ensure!(!key.is_empty(), "the key is empty");
            None
        }
        AdminCommand::Group(g) => {
            for (kind, name) in g.names() {
                super::check_name(kind, name)?;
            }
            None
        }
        AdminCommand::Plugin(p) => {
            for (kind, name) in p.names() {
                super::check_name(kind, name)?;
            }
            None
        }
        AdminCommand::Cluster(_)
        | AdminCommand::Broker(_)
        | AdminCommand::User(_)
        | AdminCommand::Acl(_) => None,
    };
    let client = args.client.connect().await?;
    let admin = Admin::new(client.clone());
    let mut out = Out::new(args.client.json);
    let result = run_command(&admin, &mut out, args.command, id).await;
    client.close().await;
    result
}

async fn run_command(
    admin: &Admin,
    out: &mut Out,
    command: AdminCommand,
    id: Option<MessageId>,
) -> anyhow::Result<()> {
    match command {
        AdminCommand::Group(g) => super::group::run(admin, out, g).await,
        AdminCommand::Plugin(p) => super::plugin::run(admin, out, p).await,
        AdminCommand::Cluster(c) => super::cluster::run(admin, out, c).await,
        AdminCommand::User(c) => super::users::run_user(admin, out, c).await,
        AdminCommand::Acl(c) => super::users::run_acl(admin, out, c).await,
        AdminCommand::Broker(BrokerCommand::Status { sample }) => {
            broker_status(admin, out, sample).await
        }
        AdminCommand::Topic(TopicCommand::Create { name, queues, sets }) if sets.is_empty() => {
            admin
                .create_topic(&name, queues)
                .await
                .with_context(|| format!("creating topic {name:?}"))?;
            done(out, &name, "created", Some(queues))
        }
        AdminCommand::Topic(TopicCommand::Create { name, queues, sets }) => {
            let route = admin
                .create_topic_on(&name, queues, &sets)
                .await
                .with_context(|| format!("creating topic {name:?} on {}", sets.join(",")))?;
            print_route(out, &name, &route)
        }
        AdminCommand::Topic(TopicCommand::Route { name }) => {
            let route = admin
                .topic_route(&name)
                .await
                .with_context(|| format!("reading the route of topic {name:?}"))?;
            print_route(out, &name, &route)
        }
        AdminCommand::Topic(TopicCommand::Update {
            name,
            queues,
            force,
        }) => {
            if !force {
                let now = admin
                    .describe_topic(&name)
                    .await
                    .with_context(|| format!("reading topic {name:?}"))?;
                let unread: u64 = now
                    .iter()
                    .filter(|q| q.queue_id >= queues)
                    .map(|q| q.max_offset - q.min_offset)
                    .sum();
                if (now.len() as u32) > queues {
                    anyhow::bail!(
                        "topic {name:?} has {} queues: shrinking it to {queues} stops sends to \
                         queues {queues}..{} and leaves their {unread} stored message(s) behind \
                         for new consumers; add --force to shrink it",
                        now.len(),
                        now.len() - 1
                    );
                }
            }
            admin
                .update_topic(&name, queues)
                .await
                .with_context(|| format!("updating topic {name:?}"))?;
            done(out, &name, "updated", Some(queues))
        }
        AdminCommand::Topic(TopicCommand::Delete { name }) => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("deleting topic {name:?}"))?;
            done(out, &name, "deleted", None)
        }
        AdminCommand::Topic(TopicCommand::List) => {
            let mut topics = admin.list_topics().await.context("listing topics")?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            if out.json {
                for t in &topics {
                    out.json(&TopicRow {
                        topic: &t.name,
                        queues: t.queues,
                    })?;
                }
                return Ok(());
            }
            if topics.is_empty() {
                eprintln!("no topics");
                return Ok(());
            }
            let w = topics
                .iter()
                .map(|t| t.name.len())
                .max()
                .unwrap_or(0)
                .max(5);
            out.line(&format!("{:<w$}  {:>6}", "TOPIC", "QUEUES"))?;
            for t in &topics {
                out.line(&format!("{:<w$}  {:>6}", t.name, t.queues))?;
            }
            Ok(())
        }
        AdminCommand::Topic(TopicCommand::Describe { name }) => {
            let queues = admin
                .describe_topic(&name)
                .await
                .with_context(|| format!("describing topic {name:?}"))?;
            let rows: Vec<QueueRow<'_>> = queues
                .iter()
                .map(|q| QueueRow {
                    topic: &name,
                    queue: q.queue_id,
                    min_offset: q.min_offset,
                    max_offset: q.max_offset,
                    messages: q.max_offset.saturating_sub(q.min_offset),
                })
                .collect();
            if out.json {
                for r in &rows {
                    out.json(r)?;
                }
                return Ok(());
            }
            let total: u64 = rows.iter().map(|r| r.messages).sum();
            out.line(&format!(
                "topic {name}: {} queue{}, {total} message{}",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" },
                if total == 1 { "" } else { "s" },
            ))?;
            out.line(&format!(
                "{:>5}  {:>12}  {:>12}  {:>12}",
                "QUEUE", "MIN OFFSET", "MAX OFFSET", "MESSAGES"
            ))?;
            for r in &rows {
                out.line(&format!(
                    "{:>5}  {:>12}  {:>12}  {:>12}",
                    r.queue, r.min_offset, r.max_offset, r.messages
                ))?;
            }
            Ok(())
        }
        AdminCommand::Message(MessageCommand::Get { .. }) => {
            let id = id.context("message id")?;
            let m = admin
                .message_by_id(id)
                .await
                .with_context(|| format!("looking up message {id}"))?
                .with_context(|| format!("message {id} not found"))?;
            if out.json {
                return out.json(&MessageJson::from(&m));
            }
            for l in message_block(&m) {
                out.line(&l)?;
            }
            Ok(())
        }
        AdminCommand::Message(MessageCommand::Cancel { .. }) => {
            let id = id.context("message id")?;
            quiver_client::Producer::new(admin.client().clone(), Default::default())
                .cancel_scheduled(id)
                .await
                .with_context(|| format!("cancelling scheduled message {id}"))?;
            if out.json {
                return out.json(&serde_json::json!({"id": id.to_string(), "action": "cancelled"}));
            }
            out.line(&format!("scheduled message {id} cancelled"))?;
            Ok(())
        }
        AdminCommand::Dlq(DlqCommand::List { group, from, max }) => {
            let found = admin
                .dlq_list(&group, from, max)
                .await
                .with_context(|| format!("listing the dead-letter queue of {group:?}"))?;
            if out.json {
                for m in &found {
                    out.json(&MessageJson::from(m))?;
                }
                return Ok(());
            }
            if found.is_empty() {
                eprintln!("group {group:?} has no dead-lettered messages from offset {from}");
                return Ok(());
            }
            out.line(&format!("{}  RECONSUMED  FROM TOPIC", message_header()))?;
            for m in &found {
                out.line(&format!(
                    "{}  {:>10}  {}",
                    message_line(m),
                    m.reconsume_times,
                    m.property(props::RETRY_TOPIC).unwrap_or("-")
                ))?;
            }
            Ok(())
        }
        AdminCommand::Dlq(DlqCommand::Resend {
            group, from, max, ..
        }) => {
            let n = admin
                .dlq_resend(&group, id, from, max)
                .await
                .with_context(|| format!("resending from the dead-letter queue of {group:?}"))?;
            if out.json {
                return out.json(&serde_json::json!({"group": group, "resent": n}));
            }
            out.line(&format!(
                "{n} message(s) resent to %RETRY%{group}; the group's consumers get them again"
            ))?;
            Ok(())
        }
        AdminCommand::Message(MessageCommand::Query { topic, key, max }) => {
            let found = admin
                .query_by_key(&topic, &key, max)
                .await
                .with_context(|| format!("querying topic {topic:?} for key {key:?}"))?;
            if out.json {
                for m in &found {
                    out.json(&MessageJson::from(m))?;
                }
                return Ok(());
            }
            if found.is_empty() {
                eprintln!("no message of topic {topic:?} has key {key:?}");
                return Ok(());
            }
            out.line(&message_header())?;
            for m in &found {
                out.line(&message_line(m))?;
            }
            Ok(())
        }
    }
}

fn parse_id(id: &str) -> anyhow::Result<MessageId> {
    id.parse::<MessageId>()
        .map_err(|_| anyhow::anyhow!("a message id is 32 hex digits, got {id:?}"))
}

fn done(
    out: &mut Out,
    topic: &str,
    action: &'static str,
    queues: Option<u32>,
) -> anyhow::Result<()> {
    if out.json {
        return out.json(&TopicDone {
            topic,
            action,
            queues,
        });
    }
    match queues {
        Some(q) => out.line(&format!(
            "{action} topic {topic} ({q} queue{})",
            if q == 1 { "" } else { "s" }
        ))?,
        None => out.line(&format!("{action} topic {topic}"))?,
    }
    Ok(())
}

#[derive(Serialize)]
struct RouteRow<'a> {
    topic: &'a str,
    set: &'a str,
    queues: u32,
    node: u64,
    addr: &'a str,
    alive: bool,
}

/// A topic's route: one row per broker set.
fn print_route(
    out: &mut Out,
    topic: &str,
    route: &[quiver_client::quiver_protocol::cmd::RouteSet],
) -> anyhow::Result<()> {
    if out.json {
        for s in route {
            out.json(&RouteRow {
                topic,
                set: &s.set,
                queues: s.queues,
                node: s.node_id,
                addr: &s.addr,
                alive: s.alive,
            })?;
        }
        return Ok(());
    }
    let w = route.iter().map(|s| s.set.len()).max().unwrap_or(0).max(3);
    println!(
        "{:<w$}  {:>6}  {:>5}  {:<22}  ALIVE",
        "SET", "QUEUES", "NODE", "ADDRESS"
    );
    for s in route {
        let addr = if s.addr.is_empty() {
            "(this broker)"
        } else {
            s.addr.as_str()
        };
        println!(
            "{:<w$}  {:>6}  {:>5}  {:<22}  {}",
            s.set,
            s.queues,
            s.node_id,
            addr,
            if s.alive { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// `quiver admin broker status`: the BrokerStatus report, with rates from two samples.
async fn broker_status(
    admin: &Admin,
    out: &mut Out,
    sample: std::time::Duration,
) -> anyhow::Result<()> {
    let first = admin
        .broker_status()
        .await
        .context("asking for the broker's status")?;
    let mut status = first.clone();
    let mut rates = None;
    if !sample.is_zero() {
        tokio::time::sleep(sample).await;
        status = admin
            .broker_status()
            .await
            .context("asking for the broker's status")?;
        let secs = (status["now_ms"].as_i64().unwrap_or(0) - first["now_ms"].as_i64().unwrap_or(0))
            .max(1) as f64
            / 1000.0;
        let rate = |k: &str| {
            (status["totals"][k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(first["totals"][k].as_u64().unwrap_or(0))) as f64
                / secs
        };
        rates = Some((
            rate("messages_in"),
            rate("messages_out"),
            rate("bytes_in"),
            rate("bytes_out"),
        ));
    }
    if out.json {
        let mut v = status.clone();
        if let Some((mi, mo, bi, bo)) = rates {
            v["rates"] = serde_json::json!({
                "messages_in_per_second": mi, "messages_out_per_second": mo,
                "bytes_in_per_second": bi, "bytes_out_per_second": bo,
            });
        }
        return out.json(&v);
    }
    let s = |k: &str| match &status[k] {
        serde_json::Value::String(x) => x.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let up = status["uptime_seconds"].as_u64().unwrap_or(0);
    let mut lines = vec![
        format!(
            "broker {} ({}), listening on {}",
            s("broker"),
            s("role"),
            s("listen")
        ),
        format!(
            "  version:       {} (commit {}, protocol {})",
            s("version"),
            s("commit"),
            s("protocol")
        ),
        format!(
            "  uptime:        {}h {:02}m {:02}s",
            up / 3600,
            up % 3600 / 60,
            up % 60
        ),
        format!("  flush:         {}", s("flush")),
    ];
    if status["replication"].is_string() {
        lines.push(format!("  replication:   {}", s("replication")));
    }
    let t = &status["totals"];
    lines.push(format!(
        "  messages:      {} in, {} out since start ({} B in, {} B out)",
        t["messages_in"], t["messages_out"], t["bytes_in"], t["bytes_out"]
    ));
    if let Some((mi, mo, bi, bo)) = rates {
        lines.push(format!(
            "  rates:         {mi:.1} msg/s in, {mo:.1} msg/s out ({bi:.0} B/s in, {bo:.0} B/s out; over {})",
            humantime_like(sample)
        ));
    }
    lines.push(format!(
        "  connections:   {} ({} long polls parked)",
        s("connections"),
        s("long_polls_parked")
    ));
    lines.push(format!(
        "  topics:        {}, groups: {}, plugins: {}",
        s("topics"),
        s("groups"),
        s("plugins")
    ));
    lines.push(format!(
        "  pending:       {} scheduled, {} unresolved transactions, {} dead letters",
        s("scheduled_pending"),
        s("unresolved_transactions"),
        s("dlq_messages")
    ));
    let disk = match status["disk_used_ratio"].as_f64() {
        Some(r) => format!("{:.0}% used", r * 100.0),
        None => "usage unknown".to_string(),
    };
    lines.push(format!(
        "  disk:          {disk}, commit log {} B{}",
        s("log_bytes"),
        if status["disk_full"] == true {
            ", WRITES REFUSED (disk full)"
        } else {
            ""
        }
    ));
    if let Some(c) = status["controller"].as_object() {
        lines.push(format!(
            "  controller:    cluster {}, node {}, leader {}, term {}",
            c["cluster"].as_str().unwrap_or("-"),
            c["node"],
            c["leader"],
            c["term"]
        ));
    }
    for sl in status["slaves"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  slave {}:       lag {} B / {} msgs, {}",
            sl["node"],
            sl["lag_bytes"],
            sl["lag_messages"],
            if sl["in_sync"] == true {
                "in sync"
            } else {
                "NOT in sync"
            }
        ));
    }
    for l in lines {
        out.line(&l)?;
    }
    Ok(())
}

fn humantime_like(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A duration, or `0` for none.
fn parse_sample(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    quiver::units::parse_duration(s)
}
