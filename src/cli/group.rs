//! `quiver admin group`: list, describe (members, queues, offsets, lag), reset offsets, delete.

use anyhow::Context;
use clap::Subcommand;
use quiver_client::quiver_protocol::ResetTarget;
use quiver_client::{Admin, GroupMode};
use serde::Serialize;

use super::output::Out;

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// Groups with live members or committed offsets.
    List,
    /// Members with their queues, and each queue's committed offset, end and lag.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move the group's committed offsets on every queue of a topic.
    ResetOffset {
        /// Group name.
        group: String,
        /// Topic whose offsets move.
        #[arg(long, short = 't')]
        topic: String,
        /// first, last, @TIMESTAMP_MS (first message stored at or after), or an OFFSET.
        #[arg(long, value_name = "first|last|@TIMESTAMP_MS|OFFSET", value_parser = parse_target)]
        to: ResetTarget,
        /// Reset even while members are online (they may overwrite it with their next commit).
        #[arg(long)]
        force: bool,
    },
    /// Delete the group's committed offsets (refused while members are online unless --force).
    Delete {
        /// Group name.
        group: String,
        /// Delete even while members are online.
        #[arg(long)]
        force: bool,
    },
}

fn parse_target(s: &str) -> Result<ResetTarget, String> {
    match s {
        "first" => Ok(ResetTarget::First),
        "last" => Ok(ResetTarget::Last),
        _ => {
            if let Some(ts) = s.strip_prefix('@') {
                return ts.parse().map(ResetTarget::Timestamp).map_err(|_| {
                    format!("{s:?}: @ must be followed by milliseconds since the epoch")
                });
            }
            s.parse()
                .map(ResetTarget::Offset)
                .map_err(|_| format!("{s:?} is not first, last, @TIMESTAMP_MS or an offset"))
        }
    }
}

impl GroupCommand {
    pub(crate) fn names(&self) -> Vec<(&'static str, &str)> {
        match self {
            GroupCommand::List => vec![],
            GroupCommand::Describe { group } | GroupCommand::Delete { group, .. } => {
                vec![("group", group)]
            }
            GroupCommand::ResetOffset { group, topic, .. } => {
                vec![("group", group), ("topic", topic)]
            }
        }
    }
}

#[derive(Serialize)]
struct GroupRow<'a> {
    group: &'a str,
    mode: &'static str,
    members: u32,
}

#[derive(Serialize)]
struct QueueRow<'a> {
    group: &'a str,
    topic: &'a str,
    queue: u32,
    committed: Option<u64>,
    max_offset: u64,
    lag: u64,
    owner: Option<&'a str>,
}

fn mode_name(m: GroupMode) -> &'static str {
    match m {
        GroupMode::Clustering => "clustering",
        GroupMode::Broadcasting => "broadcasting",
    }
}

pub(crate) async fn run(admin: &Admin, out: &mut Out, cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List => {
            let groups = admin.list_groups().await.context("listing groups")?;
            if out.json {
                for g in &groups {
                    out.json(&GroupRow {
                        group: &g.name,
                        mode: mode_name(g.mode),
                        members: g.members,
                    })?;
                }
                return Ok(());
            }
            if groups.is_empty() {
                eprintln!("no consumer groups");
                return Ok(());
            }
            let w = groups
                .iter()
                .map(|g| g.name.len())
                .max()
                .unwrap_or(0)
                .max(5);
            out.line(&format!(
                "{:<w$}  {:<12}  {:>7}",
                "GROUP", "MODE", "MEMBERS"
            ))?;
            for g in &groups {
                out.line(&format!(
                    "{:<w$}  {:<12}  {:>7}",
                    g.name,
                    mode_name(g.mode),
                    g.members
                ))?;
            }
            Ok(())
        }
        GroupCommand::Describe { group } => {
            let d = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("describing group {group:?}"))?;
            let rows: Vec<QueueRow<'_>> = d
                .queues
                .iter()
                .map(|q| QueueRow {
                    group: &group,
                    topic: &q.topic,
                    queue: q.queue_id,
                    committed: q.committed,
                    max_offset: q.max_offset,
                    lag: q.max_offset.saturating_sub(q.committed.unwrap_or(0)),
                    owner: q.owner.as_deref(),
                })
                .collect();
            if out.json {
                // The members first (rows with a "member" key), then the queues.
                for m in &d.members {
                    let owns: Vec<String> =
                        m.owned.iter().map(|(t, q)| format!("{t}/{q}")).collect();
                    out.json(&serde_json::json!({
                        "group": group,
                        "member": m.member_id,
                        "client_id": m.client_id,
                        "remote": m.remote,
                        "topics": m.topics,
                        "owns": owns,
                    }))?;
                }
                for r in &rows {
                    out.json(r)?;
                }
                return Ok(());
            }
            let lag: u64 = rows.iter().map(|r| r.lag).sum();
            out.line(&format!(
                "group {group}: {} mode, {} member(s), total lag {lag}",
                mode_name(d.mode),
                d.members.len()
            ))?;
            for m in &d.members {
                let queues: Vec<String> = m.owned.iter().map(|(t, q)| format!("{t}/{q}")).collect();
                out.line(&format!(
                    "  member {} ({}) topics [{}] owns [{}]",
                    m.member_id,
                    m.remote,
                    m.topics.join(","),
                    queues.join(" ")
                ))?;
            }
            out.line(&format!(
                "{:<20}  {:>5}  {:>12}  {:>12}  {:>10}  OWNER",
                "TOPIC", "QUEUE", "COMMITTED", "MAX OFFSET", "LAG"
            ))?;
            for r in &rows {
                out.line(&format!(
                    "{:<20}  {:>5}  {:>12}  {:>12}  {:>10}  {}",
                    r.topic,
                    r.queue,
                    r.committed.map_or("-".to_string(), |c| c.to_string()),
                    r.max_offset,
                    r.lag,
                    r.owner.unwrap_or("-")
                ))?;
            }
            Ok(())
        }
        GroupCommand::ResetOffset {
            group,
            topic,
            to,
            force,
        } => {
            admin
                .reset_group_offset(&group, &topic, to, force)
                .await
                .with_context(|| format!("resetting group {group:?} on topic {topic:?}"))?;
            if out.json {
                return out
                    .json(&serde_json::json!({"group": group, "topic": topic, "action": "reset"}));
            }
            let to = match to {
                ResetTarget::First => "the first message".to_string(),
                ResetTarget::Last => "the end".to_string(),
                ResetTarget::Timestamp(ms) => {
                    format!(
                        "the first message at or after {}",
                        super::output::rfc3339_ms(ms)
                    )
                }
                ResetTarget::Offset(o) => format!("offset {o}"),
            };
            out.line(&format!("reset group {group} on topic {topic} to {to}"))?;
            Ok(())
        }
        GroupCommand::Delete { group, force } => {
            admin
                .delete_group(&group, force)
                .await
                .with_context(|| format!("deleting group {group:?}"))?;
            if out.json {
                return out.json(&serde_json::json!({"group": group, "action": "deleted"}));
            }
            out.line(&format!("deleted group {group}"))?;
            Ok(())
        }
    }
}
