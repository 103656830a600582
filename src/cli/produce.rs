//! `quiver produce`: send messages from arguments or from stdin lines.

use anyhow::Context;
use clap::Args;
use quiver_client::{Message, Producer, ProducerOptions, QueueSelector, SendResult};
use tokio::io::AsyncBufReadExt;

use super::output::{Out, SentJson};
use super::ClientArgs;

/// Arguments of `quiver produce`.
#[derive(Args)]
#[command(after_help = "\
Each BODY argument is one message. Without BODY, stdin is read and every line (without its \
line ending; empty lines are skipped) is one message.

A missing topic is created by the broker with its default queue count when the broker allows \
auto-creation (broker.auto_create_topics); otherwise create it with `quiver admin topic create`.

Prints one row per message: message id, topic, queue, offset and the broker set that stored it \
(with --json: one object per line with id, topic, queue, offset, commit_log_offset, set). In a \
cluster, pass several nodes with --broker a,b: routes come from the cluster, a send goes to the \
broker of the set holding the queue it picks, and --queue counts over all sets' queues in route \
order.

When the connection is lost (the broker restarted, even after kill -9), sends reconnect and are \
retried within --send-timeout; a message whose first attempt may have been stored before the \
connection dropped can then be stored twice, with the same id (at-least-once; see \
docs/SEMANTICS.md). A send that still fails stops the command with the error.

Examples:
  quiver produce --topic orders --tag created --key order-1 'hello'
  seq 1 1000 | quiver produce --topic numbers --batch 100 --json")]
pub(crate) struct ProduceArgs {
    /// Topic to send to.
    #[arg(long, short = 't')]
    topic: String,
    /// Tag of every message (consumers can filter on it).
    #[arg(long)]
    tag: Option<String>,
    /// Lookup key of every message (repeatable; `quiver admin message query` finds them).
    #[arg(long = "key", value_name = "K")]
    keys: Vec<String>,
    /// User property NAME=VALUE of every message (repeatable).
    #[arg(long = "prop", value_name = "NAME=VALUE", value_parser = parse_prop)]
    props: Vec<(String, String)>,
    /// Sharding key: messages with the same key go to the same queue, in order.
    #[arg(long, value_name = "S", conflicts_with = "queue")]
    sharding_key: Option<String>,
    /// Send to this queue (default: round-robin over the topic's queues).
    #[arg(long, short = 'q', value_name = "N")]
    queue: Option<u32>,
    /// Send messages in atomic batches of N (each batch goes to one queue in one request).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Scheduled: deliver each message this long after it is stored (e.g. 10s, 5m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay, conflicts_with = "delay_level")]
    delay: Option<std::time::Duration>,
    /// Scheduled: deliver after the broker's delay level N (1 = 1s ... 18 = 2h by default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    delay_level: Option<u8>,
    /// Time allowed for one send (or batch), retries and reconnecting included: a broker
    /// that restarts within it is ridden out (e.g. 500ms, 10s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    send_timeout: std::time::Duration,
    /// Extra attempts of a send after a retryable failure (lost connection, unreachable or
    /// busy broker), within --send-timeout.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,
    /// Message bodies; without any (and without --file), stdin is read line by line.
    #[arg(value_name = "BODY", conflicts_with = "file")]
    bodies: Vec<String>,
    /// Send this file's whole content as one message.
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_delay(s: &str) -> Result<std::time::Duration, String> {
    quiver::messaging::parse_duration(s)
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match quiver::messaging::parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

fn parse_prop(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    quiver_client::quiver_protocol::names::check_property_name(k)?;
    Ok((k.to_string(), v.to_string()))
}

impl ProduceArgs {
    fn message(&self, body: Vec<u8>) -> Message {
        let mut m = Message::new(self.topic.clone(), body)
            .with_keys(self.keys.iter().cloned())
            .with_tag(self.tag.clone().unwrap_or_default());
        for (k, v) in &self.props {
            m = m.with_property(k.clone(), v.clone());
        }
        if let Some(s) = &self.sharding_key {
            m = m.with_sharding_key(s.clone());
        }
        if let Some(d) = self.delay {
            m = m.with_delay(d);
        }
        if let Some(l) = self.delay_level {
            m = m.with_delay_level(l);
        }
        m
    }
}

struct Sender<'a> {
    args: &'a ProduceArgs,
    producer: Producer,
    out: Out,
    header_done: bool,
    sent: u64,
    /// Count and rate on a terminal's stderr while stdin is sent and stdout is redirected.
    progress: Option<indicatif::ProgressBar>,
}

impl Sender<'_> {
    async fn send(&mut self, bodies: Vec<Vec<u8>>) -> anyhow::Result<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        let n = bodies.len();
        let messages: Vec<Message> = bodies.into_iter().map(|b| self.args.message(b)).collect();
        let results: Vec<SendResult> = if n == 1 {
            let m = messages.into_iter().next().expect("one message");
            vec![self.producer.send(m).await.with_context(|| {
                format!(
                    "sending message {} to topic {:?}",
                    self.sent + 1,
                    self.args.topic
                )
            })?]
        } else {
            self.producer.send_batch(messages).await.with_context(|| {
                format!(
                    "sending a batch of {n} messages (messages {} to {}) to topic {:?}",
                    self.sent + 1,
                    self.sent + n as u64,
                    self.args.topic
                )
            })?
        };
        self.sent += n as u64;
        if let Some(pb) = &self.progress {
            pb.inc(n as u64);
            let rate = pb.position() as f64 / pb.elapsed().as_secs_f64().max(1e-3);
            pb.set_message(format!("{rate:.0} msg/s"));
        }
        // A scheduled message: when it is due, not where the broker keeps it meanwhile.
        let due = self.args.delay.map(|d| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            super::output::rfc3339_ms((now + d).as_millis() as i64)
        });
        let scheduled = due.clone().or_else(|| {
            self.args
                .delay_level
                .map(|l| format!("after delay level {l}"))
        });
        for r in &results {
            if let Some(when) = &scheduled {
                if self.out.json {
                    self.out.json(&serde_json::json!({
                        "msg_id": r.msg_id.to_string(),
                        "topic": self.args.topic,
                        "scheduled": true,
                        "due_at": due,
                        "delay_level": self.args.delay_level,
                    }))?;
                } else {
                    self.out.line(&format!(
                        "{}  scheduled for topic {}: due {}",
                        r.msg_id,
                        self.args.topic,
                        if due.is_some() {
                            format!("at {when}")
                        } else {
                            when.clone()
                        }
                    ))?;
                }
                continue;
            }
            if self.out.json {
                self.out.json(&SentJson::from(r))?;
            } else {
                let topic_w = r.topic.len().max(5);
                if !self.header_done {
                    self.out.line(&format!(
                        "{:<32}  {:<topic_w$}  {:>5}  {:>10}  SET",
                        "MSG ID", "TOPIC", "QUEUE", "OFFSET"
                    ))?;
                    self.header_done = true;
                }
                self.out.line(&format!(
                    "{}  {:<topic_w$}  {:>5}  {:>10}  {}",
                    r.msg_id, r.topic, r.queue_id, r.queue_offset, r.broker_set
                ))?;
            }
        }
        Ok(())
    }
}

/// Runs `quiver produce`.
pub(crate) async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    super::check_name("topic", &args.topic)?;
    let cluster = args.client.cluster().await?;
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerOptions {
            selector: match args.queue {
                Some(q) => QueueSelector::Fixed(q),
                None => QueueSelector::RoundRobin,
            },
            send_timeout: args.send_timeout,
            retries: args.retries,
            ..ProducerOptions::default()
        },
    );
    let mut sender = Sender {
        args: &args,
        producer,
        out: Out::new(args.client.json),
        header_done: false,
        sent: 0,
        progress: None,
    };
    let batch = args.batch as usize;
    let result = async {
        if let Some(path) = &args.file {
            let body =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            return sender.send(vec![body]).await;
        }
        if !args.bodies.is_empty() {
            for chunk in args.bodies.chunks(batch) {
                sender
                    .send(chunk.iter().map(|b| b.as_bytes().to_vec()).collect())
                    .await?;
            }
            return Ok(());
        }
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut pending = Vec::with_capacity(batch);
        sender.progress = stdin_progress();
        loop {
            let mut line = Vec::new();
            let n = stdin
                .read_until(b'\n', &mut line)
                .await
                .context("reading stdin")?;
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if line.is_empty() {
                continue;
            }
            pending.push(line);
            if pending.len() >= batch {
                sender.send(std::mem::take(&mut pending)).await?;
            }
        }
        sender.send(pending).await
    }
    .await;
    if let Some(pb) = &sender.progress {
        pb.finish_and_clear();
    }
    cluster.close().await;
    result
}

/// A live count and rate for a long stdin, on stderr, only when stderr is a terminal and
/// stdout is not (receipts going to a file would otherwise leave the terminal silent).
fn stdin_progress() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} sent {human_pos} messages ({msg}, {elapsed})",
    ) {
        pb.set_style(style);
    }
    Some(pb)
}
