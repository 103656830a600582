//! `quiver consume`: print the messages of a topic's queues, once or following new ones.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use quiver_client::{
    ClientError, PullConsumer, PullOptions, PullResult, PullStatus, QueueInfo, ReceivedMessage,
    Status,
};
use tokio::sync::mpsc;

use super::output::{message_header, message_line, MessageJson, Out};
use super::ClientArgs;

/// How long one `--follow` pull waits at the broker for a new message.
const LONG_POLL: Duration = Duration::from_secs(15);
/// Messages asked for in one pull.
const PULL_BATCH: u32 = 32;

/// Arguments of `quiver consume`.
#[derive(Args)]
#[command(after_help = "\
Reads every queue of the topic (or only --queue) from the start position and prints each \
message: `queue/offset id tag keys props body`, the body as text when it is UTF-8, else as \
0x<hex> with its length. With --json: one object per line with every field (id, topic, queue, \
offset, commit_log_offset, tag, keys, properties, born_timestamp, store_timestamp, born_host, \
reconsume_times, flags, body_len, body_encoding, body); `body` is the text when the payload is \
valid UTF-8 (body_encoding \"utf8\"), else standard base64 (body_encoding \"base64\").

Start position (--from): `first` (the oldest message still stored), `last` (only messages \
stored from now on), an OFFSET (the same in every queue read), or @TIMESTAMP_MS (the first \
message stored at or after that time, in ms since the Unix epoch). Default: with --group, the \
group's committed offset on each queue that has one; everywhere else `first`.

Without --follow, stops when every queue is read to its end; with --follow, keeps long polling \
(15 s per pull) for new messages until --max is reached or Ctrl-C. The queue set is taken once \
at the start.

--group G joins consumer group G as a member (clustering): the broker gives this member its \
share of the topic's queues (all of them if it is alone; start several to share the work), it \
starts at G's committed offsets (or --from: first, last or @TIMESTAMP_MS when G has none), and \
commits what it printed, so the next run continues there. Without --follow it stops after \
2 s without a new message; with --follow, at --max or Ctrl-C. It always leaves the group \
cleanly, so its queues move to the other members at once.

Examples:
  quiver consume --topic orders --max 10
  quiver consume --topic orders --from last --follow --json | jq .body
  quiver consume --topic orders --group billing")]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    #[arg(long, short = 't')]
    topic: String,
    /// Read only this queue (default: every queue of the topic).
    #[arg(long, short = 'q', value_name = "N")]
    queue: Option<u32>,
    /// Where to start: first, last, OFFSET or @TIMESTAMP_MS (see below).
    #[arg(long, value_name = "first|last|OFFSET|@TIMESTAMP_MS")]
    from: Option<From>,
    /// Keep waiting for new messages (until --max or Ctrl-C).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Stop after printing N messages.
    #[arg(long, short = 'n', value_name = "N")]
    max: Option<u64>,
    /// Join this consumer group: share the queues with its other members, start at its
    /// committed offsets, commit what is printed (see below).
    #[arg(long, short = 'g', value_name = "G")]
    group: Option<String>,
    /// Only messages whose tag matches: `TagA || TagB` (`*` = all). Evaluated on the broker.
    #[arg(long, conflicts_with = "sql", value_name = "EXPR")]
    tag: Option<String>,
    /// Only messages whose properties match a SQL92 expression, e.g.
    /// "region IN ('eu','us') AND amount > 100". Evaluated on the broker (docs/FILTERS.md).
    #[arg(long, value_name = "EXPR")]
    sql: Option<String>,
    /// Run this loaded WebAssembly plugin on the broker after the filter (repeat for a chain,
    /// run in order). `NAME:skip` or `NAME:deliver` choose what a failing plugin does to a
    /// batch (default `fail`: the pull fails). See docs/PLUGINS.md.
    #[arg(long = "plugin", value_name = "NAME[:fail|skip|deliver]", value_parser = parse_plugin_ref)]
    plugins: Vec<quiver_client::PluginRef>,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_plugin_ref(s: &str) -> Result<quiver_client::PluginRef, String> {
    let (name, policy) = match s.rsplit_once(':') {
        Some((n, p)) => (
            n,
            quiver_client::PluginFailurePolicy::parse(p)
                .ok_or_else(|| format!("unknown failure policy {p:?}: fail, skip or deliver"))?,
        ),
        None => (s, quiver_client::PluginFailurePolicy::Fail),
    };
    quiver_client::quiver_protocol::names::check_name("plugin", name)?;
    Ok(quiver_client::PluginRef::new(name).on_error(policy))
}

impl ConsumeArgs {
    fn subscription(&self) -> quiver_client::Subscription {
        let filter = match (&self.tag, &self.sql) {
            (Some(t), _) => quiver_client::FilterSpec::Tag(t.clone()),
            (None, Some(s)) => quiver_client::FilterSpec::Sql(s.clone()),
            (None, None) => quiver_client::FilterSpec::All,
        };
        quiver_client::Subscription {
            plugins: self.plugins.clone(),
            ..quiver_client::Subscription::new(self.topic.clone(), filter)
        }
    }
}

/// The start position of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    First,
    Last,
    Offset(u64),
    Timestamp(i64),
}

impl FromStr for From {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "first" | "earliest" => Ok(From::First),
            "last" | "latest" => Ok(From::Last),
            _ => {
                if let Some(ts) = s.strip_prefix('@') {
                    ts.parse().map(From::Timestamp).map_err(|_| {
                        format!("expected @TIMESTAMP_MS (ms since the Unix epoch), got {s:?}")
                    })
                } else {
                    s.parse().map(From::Offset).map_err(|_| {
                        format!("expected first, last, an offset or @TIMESTAMP_MS, got {s:?}")
                    })
                }
            }
        }
    }
}

/// Messages pulled from one queue.
struct Pulled {
    messages: Vec<ReceivedMessage>,
}

struct Printer {
    out: Out,
    printed: u64,
    max: u64,
}

impl Printer {
    fn done(&self) -> bool {
        self.printed >= self.max
    }

    /// Prints the messages (up to --max).
    async fn print(&mut self, p: Pulled) -> anyhow::Result<()> {
        for m in &p.messages {
            if self.done() {
                break;
            }
            if self.out.json {
                self.out.json(&MessageJson::from(m))?;
            } else {
                if self.printed == 0 {
                    self.out.line(&message_header())?;
                }
                self.out.line(&message_line(m))?;
            }
            self.printed += 1;
        }
        Ok(())
    }
}

/// Runs `quiver consume`.
pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    super::check_name("topic", &args.topic)?;
    if let Some(g) = &args.group {
        super::check_name("group", g)?;
    }
    if args.group.is_some() {
        let cluster = args.client.cluster().await?;
        let result = consume_in_group(&args, &cluster).await;
        cluster.close().await;
        return result;
    }
    let client = args.client.connect().await?;
    let consumer = PullConsumer::new(client.clone());
    let result = consume(&args, consumer).await;
    client.close().await;
    result
}

async fn consume(args: &ConsumeArgs, consumer: PullConsumer) -> anyhow::Result<()> {
    let topic = args.topic.as_str();
    let filter = args.subscription();
    let mut queues = match consumer.queues(topic).await {
        // --follow on a topic that does not exist yet: wait for it to be created.
        Err(e) if args.follow && e.status() == Some(quiver_client::Status::TopicNotFound) => {
            eprintln!("topic {topic:?} does not exist yet: waiting for it to be created");
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                match consumer.queues(topic).await {
                    Ok(q) => break q,
                    Err(e) if e.status() == Some(quiver_client::Status::TopicNotFound) => {}
                    Err(e) => return Err(e).with_context(|| format!("describing topic {topic:?}")),
                }
            }
        }
        other => other.with_context(|| format!("describing topic {topic:?}"))?,
    };
    if let Some(q) = args.queue {
        let n = queues.len();
        queues.retain(|i| i.queue_id == q);
        if queues.is_empty() {
            anyhow::bail!("topic {topic:?} has {n} queues; queue {q} does not exist");
        }
    }
    let mut cursors = Vec::with_capacity(queues.len());
    for q in &queues {
        cursors.push((q.queue_id, start_offset(args, &consumer, q).await?));
    }
    let mut printer = Printer {
        out: Out::new(args.client.json),
        printed: 0,
        max: args.max.unwrap_or(u64::MAX),
    };
    if printer.done() {
        return Ok(());
    }
    if !args.follow {
        // One queue after the other, each to its end.
        for (queue, mut offset) in cursors {
            while !printer.done() {
                let want = (printer.max - printer.printed).min(u64::from(PULL_BATCH)) as u32;
                let r = pull(
                    &consumer,
                    topic,
                    queue,
                    offset,
                    want,
                    Duration::ZERO,
                    &filter,
                )
                .await?;
                let moved = r.next_offset > offset;
                offset = r.next_offset;
                match r.status {
                    PullStatus::Found if !r.messages.is_empty() => {
                        printer
                            .print(Pulled {
                                messages: r.messages,
                            })
                            .await?;
                    }
                    PullStatus::NoMatch | PullStatus::OffsetTooSmall if moved => {}
                    _ => break,
                }
            }
        }
        if printer.printed == 0 {
            // Said on stderr: stdout (and --json output) stays empty for scripts.
            let what = if args.tag.is_some() || args.sql.is_some() {
                " matched the filter"
            } else {
                ""
            };
            eprintln!("no messages{what} in topic {topic:?} from the chosen offsets");
        }
        return Ok(());
    }
    // --follow: one long-polling task per queue feeds the printer.
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Pulled>>(cursors.len().max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for (queue, offset) in cursors {
        let (tx, consumer, topic) = (tx.clone(), consumer.clone(), topic.to_string());
        tasks.spawn(follow_queue(
            consumer,
            topic,
            queue,
            offset,
            filter.clone(),
            tx,
        ));
    }
    drop(tx);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while !printer.done() {
        tokio::select! {
            item = rx.recv() => match item {
                Some(Ok(p)) => printer.print(p).await?,
                Some(Err(e)) => return Err(e),
                None => break,
            },
            _ = &mut ctrl_c => break,
        }
    }
    tasks.abort_all();
    Ok(())
}

/// How long `consume --group` without --follow waits for another message before it stops.
const GROUP_IDLE: Duration = Duration::from_secs(2);

/// `consume --group`: a member of the group (push consumer), printing what it is given.
async fn consume_in_group(
    args: &ConsumeArgs,
    cluster: &quiver_client::Cluster,
) -> anyhow::Result<()> {
    use quiver_client::{ClusterPushConsumer, ConsumeFrom, ConsumeResult, PushConsumerOptions};
    use tokio::sync::oneshot;

    let group = args.group.clone().context("group")?;
    anyhow::ensure!(
        args.queue.is_none(),
        "--queue cannot be combined with --group: the group decides which queues a member reads"
    );
    let consume_from = match args.from {
        None | Some(From::First) => ConsumeFrom::First,
        Some(From::Last) => ConsumeFrom::Last,
        Some(From::Timestamp(ts)) => ConsumeFrom::Timestamp(ts),
        Some(From::Offset(_)) => anyhow::bail!(
            "--from OFFSET cannot be combined with --group; move the group with \
             `quiver admin group reset-offset {group} --topic {} --to OFFSET`",
            args.topic
        ),
    };
    let options = PushConsumerOptions {
        consume_from,
        // One message at a time, so what is committed is exactly what was printed.
        max_in_flight: 1,
        batch_size: 1,
        ..PushConsumerOptions::new(group.clone())
    };
    let (tx, mut rx) = mpsc::channel::<(ReceivedMessage, oneshot::Sender<bool>)>(1);
    let sub = args.subscription();
    // A member of the group on every broker set holding the topic (one set outside a cluster).
    let consumer = ClusterPushConsumer::start(cluster, vec![sub], options, move |mut batch| {
        let tx = tx.clone();
        async move {
            let Some(m) = batch.pop() else {
                return ConsumeResult::Success;
            };
            let (ack, printed) = oneshot::channel();
            // Not printed (stopping): left uncommitted for the next member, not retried.
            if tx.send((m, ack)).await.is_err() {
                return ConsumeResult::Suspend;
            }
            match printed.await {
                Ok(true) => ConsumeResult::Success,
                _ => ConsumeResult::Suspend,
            }
        }
    })
    .await
    .with_context(|| format!("joining group {group:?}"))?;
    let mut out = Out::new(args.client.json);
    let max = args.max.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result: anyhow::Result<()> = async {
        while printed < max {
            let next = async {
                if args.follow {
                    rx.recv().await
                } else {
                    tokio::time::timeout(GROUP_IDLE, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let (m, ack) = tokio::select! {
                item = next => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = &mut ctrl_c => break,
            };
            if out.json {
                out.json(&MessageJson::from(&m))?;
            } else {
                if printed == 0 {
                    out.line(&message_header())?;
                }
                out.line(&message_line(&m))?;
            }
            printed += 1;
            let _ = ack.send(true);
        }
        Ok(())
    }
    .await;
    // Anything handed over but not printed stays uncommitted for the next member.
    rx.close();
    while let Ok((_, ack)) = rx.try_recv() {
        let _ = ack.send(false);
    }
    consumer
        .shutdown()
        .await
        .with_context(|| format!("leaving group {group:?}"))?;
    result
}

/// Long-polls one queue forever, sending what it finds; stops when the printer is gone or on
/// an error that retrying will not fix.
async fn follow_queue(
    consumer: PullConsumer,
    topic: String,
    queue: u32,
    mut offset: u64,
    filter: quiver_client::Subscription,
    tx: mpsc::Sender<anyhow::Result<Pulled>>,
) {
    loop {
        match pull(
            &consumer, &topic, queue, offset, PULL_BATCH, LONG_POLL, &filter,
        )
        .await
        {
            Ok(r) => {
                // Always continue at next_offset: past what was read or scanned (a filter
                // skips non-matching messages), or the queue's first / next offset.
                offset = r.next_offset;
                if r.status == PullStatus::Found && !r.messages.is_empty() {
                    let p = Pulled {
                        messages: r.messages,
                    };
                    if tx.send(Ok(p)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) if retryable(&e) => {
                eprintln!("warning: pulling {topic}/{queue}: {e:#}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ClientError>()
            .is_some_and(|e| e.is_retryable())
    })
}

async fn pull(
    consumer: &PullConsumer,
    topic: &str,
    queue: u32,
    offset: u64,
    max_messages: u32,
    long_poll: Duration,
    filter: &quiver_client::Subscription,
) -> anyhow::Result<PullResult> {
    consumer
        .pull(
            topic,
            queue,
            offset,
            PullOptions {
                max_messages,
                long_poll,
                filter: filter.filter.clone(),
                plugins: filter.plugins.clone(),
                ..PullOptions::default()
            },
        )
        .await
        .with_context(|| format!("pulling {topic}/{queue} at offset {offset}"))
}

/// Where reading a queue starts (see the --help text).
async fn start_offset(
    args: &ConsumeArgs,
    consumer: &PullConsumer,
    q: &QueueInfo,
) -> anyhow::Result<u64> {
    let topic = args.topic.as_str();
    Ok(match args.from.unwrap_or(From::First) {
        From::First => q.min_offset,
        From::Last => q.max_offset,
        From::Offset(o) => o,
        From::Timestamp(ts) => match consumer.offset_for_timestamp(topic, q.queue_id, ts).await {
            Ok(o) => o,
            Err(ClientError::Broker {
                status: Status::NotFound,
                ..
            }) => q.max_offset,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "finding the offset for time {ts} in {topic}/{}",
                    q.queue_id
                )))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!("first".parse::<From>(), Ok(From::First));
        assert_eq!("last".parse::<From>(), Ok(From::Last));
        assert_eq!("42".parse::<From>(), Ok(From::Offset(42)));
        assert_eq!(
            "@1700000000000".parse::<From>(),
            Ok(From::Timestamp(1_700_000_000_000))
        );
        assert!("@x".parse::<From>().is_err());
        assert!("-1".parse::<From>().is_err());
        assert!("soon".parse::<From>().is_err());
    }
}
