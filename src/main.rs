//! The `quiver` binary: one command for the broker, its tools and its benchmarks.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cli::bench::{store_bench, StoreBenchOptions};
use quiver::store::{FlushMode, NewMessage, Store, StoreConfig};

mod cli;

use cli::TlsArgs;

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "Quiver: a RocketMQ-class message broker over QUIC"
)]
struct Cli {
    /// Log lines on stderr as text for people (the default) or as one JSON object per line.
    /// Which lines: RUST_LOG (e.g. `RUST_LOG=debug`, `RUST_LOG=quiver=debug,openraft=warn`);
    /// by default `info` for `serve`, `bench` and `dev-cluster`, `warn` for the client
    /// commands. Colours only when stderr is a terminal (and NO_COLOR is unset).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"], env = "QUIVER_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// A socket address from `IP:PORT` or `HOST:PORT` (host names resolved; the port defaults
/// to 10911), as `--broker` reads it.
fn parse_host_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    quiver_client::resolve_broker(s).map_err(|e| e.to_string())
}

/// Writes to stdout; a reader that closed the pipe early (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// `--version`: the package version, the git commit it was built from, the protocol version.
fn version_text() -> &'static str {
    let v = format!(
        "{} (commit {}, protocol version {})",
        env!("CARGO_PKG_VERSION"),
        env!("QUIVER_GIT_COMMIT"),
        quiver_protocol::PROTOCOL_VERSION
    );
    Box::leak(v.into_boxed_str())
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (embedded defaults; see --print-config).
    Serve(ServeArgs),
    /// Print a shell completion script: `quiver completions bash > /etc/bash_completion.d/quiver`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `quiver man > quiver.1 && man ./quiver.1`.
    Man,
    /// Send messages (arguments, or one per stdin line).
    Produce(cli::produce::ProduceArgs),
    /// Print a topic's messages; --follow waits for new ones.
    Consume(cli::consume::ConsumeArgs),
    /// Manage topics, consumer groups, and look messages up.
    Admin(cli::admin::AdminArgs),
    /// Check or evaluate a tag / SQL92 filter expression locally (no broker needed).
    #[command(subcommand)]
    Filter(cli::filter::FilterCommand),
    /// Measure throughput, latency and memory; prints figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Start a local cluster to try out: N `quiver serve` nodes on 127.0.0.1 (Ctrl-C stops
    /// them all).
    DevCluster(cli::dev_cluster::DevClusterArgs),
    /// Tools for tests and diagnosis.
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (sections [broker], [tls], [store]).
    #[arg(long, short = 'c', env = "QUIVER_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on, HOST:PORT (overrides broker.listen; `localhost:10911` works).
    #[arg(long, value_parser = parse_host_addr)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (overrides broker.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The store alone: append (async/sync, 1/8/64 writers), read, and RSS over a backlog.
    Store(StoreBenchArgs),
    /// Producers over QUIC: msgs/s, MB/s, per-request latency percentiles.
    Produce(NetBenchArgs),
    /// Fill a topic, then consume it all: msgs/s, MB/s, per-pull latency percentiles; with
    /// --group, consume as push-consumer group members while producing (end-to-end latency).
    Consume(NetBenchArgs),
    /// Produce and consume at once: throughput and send-to-receive latency percentiles.
    E2e(NetBenchArgs),
    /// WebAssembly plugins: per-message cost of a filter at batch sizes 1, 32 and 256, and
    /// pull throughput over QUIC with and without a plugin attached.
    Plugin {
        /// A filter plugin to measure instead of the built-in trivial one (.wasm or .wat).
        #[arg(long, value_name = "FILE")]
        wasm: Option<PathBuf>,
        /// Its configuration, KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Messages for the pull comparison.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Where the embedded broker keeps its temporary data.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Scheduled messages: delivery lateness p50/p99/max for MESSAGES due within WINDOW,
    /// then broker memory with PENDING scheduled messages waiting.
    Schedule {
        /// Scheduled messages for the lateness measurement.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Seconds within which they are due.
        #[arg(long, default_value_t = 60)]
        window: u64,
        /// Pending messages for the memory measurement (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        pending: u64,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Sends in flight.
        #[arg(long, default_value_t = 128)]
        inflight: usize,
        /// Where the embedded broker keeps its temporary data.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Transactional sends (half message + commit) against plain sync sends.
    Tx {
        /// Messages per round.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Sends in flight.
        #[arg(long, default_value_t = 64)]
        inflight: usize,
        /// Where the embedded broker keeps its temporary data.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Replication on local `quiver serve` processes: producer throughput on a single broker
    /// against a master with a sync and an async slave (ratio), then failover: SIGKILL of a
    /// sync-replicated master KILLS times under producers, time to a new master and to the
    /// first acknowledged send (p50, max), and acknowledged messages lost (must be 0).
    Replication {
        /// Seconds of each throughput run (0 skips the throughput part).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Producers (each with its own connection).
        #[arg(long, default_value_t = 4)]
        producers: usize,
        /// Requests in flight per producer (throughput part).
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// Messages per request (throughput part).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Master kills of the failover part (0 skips it).
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Where the nodes' directories go.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
    },
    /// Many client connections to a `quiver serve` process of its own: time to connect them
    /// all, the broker's memory idle, with them open and after they closed, a burst of one
    /// send per connection, then every connection with one send in flight (a seckill's
    /// producers): msgs/s, p99, failed sends and appends per fsync.
    Connections {
        /// Client connections.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Connections being established at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Seconds of the sustained part (0 skips it).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// The broker's flush mode.
        #[arg(long, default_value = "sync", value_parser = ["sync", "async"])]
        flush: String,
        /// Where the broker's directory goes.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// Also measure raw QUIC (no broker) with the sustained part's shape: the ceiling
        /// of this machine for one request per stream (with --senders 1).
        #[arg(long)]
        baseline: bool,
        /// Producers per connection in the sustained part, each with one send in flight,
        /// sharing the connection (as producers in one application process share a client).
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Figures as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Pull-path scan rate for tag and SQL subscriptions matching 1%, 10% and 100%.
    Filter {
        /// Where to put the benchmark's data.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// Messages in the scanned queue.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
}

#[derive(Args, Clone)]
struct NetBenchArgs {
    /// A running broker, HOST:PORT (default: start an embedded one on 127.0.0.1 with a
    /// temporary dir). `--addr` is an older name for it.
    #[arg(long = "broker", alias = "addr", env = "QUIVER_BROKER", value_name = "ADDR", value_parser = parse_host_addr)]
    addr: Option<std::net::SocketAddr>,
    /// Nodes of a running cluster (comma-separated): `bench produce` sends through the
    /// cluster's routes to every broker set, then measures route lookups on each node.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ADDR,...",
        conflicts_with = "addr"
    )]
    cluster: Vec<std::net::SocketAddr>,
    /// Figures as one JSON object per line on stdout (the lines for people go to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Embedded broker's flush mode: async or sync.
    #[arg(long, default_value = "async")]
    flush: quiver::store::FlushMode,
    /// Where the embedded broker keeps its temporary data.
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Topic (created when missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Queues of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to send (and receive).
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Upper bound on the run, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Requests in flight per producer (concurrent senders); for consume, pulls in flight per
    /// queue while the consumer is behind.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Messages per send request (1 = one message per send).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Consumer connections (queues are spread over them).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// consume: join this consumer group with --consumers push consumers while producing,
    /// and report consumed msgs/s and end-to-end latency.
    #[arg(long)]
    group: Option<String>,
    /// consume/e2e: load this WebAssembly plugin (.wasm or .wat) and run it on every pull.
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// MiB moved each way by the raw-QUIC baseline measured first (0 skips it and the
    /// ratios).
    #[arg(long, default_value_t = 512)]
    baseline_mib: u64,
}

#[derive(Args)]
struct StoreBenchArgs {
    /// Where to put the benchmark's data (same disk as the broker's, for honest figures).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Upper bound in seconds on one run.
    #[arg(long, default_value_t = 20)]
    max_seconds: u64,
    /// Messages in the resident-memory backlog run (0 skips it).
    #[arg(long, default_value_t = 10_000_000)]
    backlog: u64,
    /// In-flight appends per writer in the pipelined sync run.
    #[arg(long, default_value_t = 16)]
    window: usize,
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Appends in SYNC mode forever, printing `ack QUEUE OFFSET ID LEN` after each durable
    /// append (used by the crash test, which kills it with SIGKILL).
    StoreWriter {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Writer threads.
        #[arg(long, default_value_t = 4)]
        threads: u32,
        /// First message id (so successive runs do not reuse ids).
        #[arg(long, default_value_t = 0)]
        first_id: u64,
    },
}

fn main() {
    // One line, as the client commands print theirs (`error: what: why`).
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().version(version_text()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Client commands log warnings only (their output is the point); RUST_LOG overrides.
    let client = matches!(
        cli.command,
        Command::Produce(_) | Command::Consume(_) | Command::Admin(_) | Command::Filter(_)
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if client { "warn" } else { "info" })
    });
    // Colour codes only for a person at a terminal: never in a file or a pipe.
    let ansi = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // A log line that cannot be written (stderr is a closed pipe: `quiver serve 2>&1 |
        // head`) is dropped. By default the subscriber reports that with eprintln!, which
        // panics on the same closed pipe, in whatever task logged: the signal handler's
        // panic would leave SIGTERM ignored.
        .log_internal_errors(false);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Completions { shell } => {
            let mut cmd = Cli::command().version(version_text());
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "quiver", &mut out);
            print_all(&out)
        }
        Command::Man => {
            let cmd = Cli::command().version(version_text());
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the manual page")?;
            print_all(&out)
        }
        Command::Produce(a) => cli::run(cli::produce::run(a)),
        Command::Consume(a) => cli::run(cli::consume::run(a)),
        Command::Admin(a) => cli::run(cli::admin::run(a)),
        Command::Filter(c) => cli::run(async move { cli::filter::run(c) }),
        Command::DevCluster(a) => cli::run(cli::dev_cluster::run(a)),
        Command::Bench(BenchCommand::Store(a)) => {
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("creating {}", a.dir.display()))?;
            store_bench(&StoreBenchOptions {
                dir: a.dir,
                message_size: a.size,
                messages: a.messages,
                max_seconds: a.max_seconds,
                backlog: a.backlog,
                window: a.window,
            })?;
            Ok(())
        }
        Command::Bench(BenchCommand::Produce(a)) => {
            net_bench(cli::bench::net::NetBench::Produce, a)
        }
        Command::Bench(BenchCommand::Consume(a)) => {
            net_bench(cli::bench::net::NetBench::Consume, a)
        }
        Command::Bench(BenchCommand::Filter {
            dir,
            messages,
            size,
        }) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            cli::bench::filter::filter_bench(&dir, messages, size)
        }
        Command::Bench(BenchCommand::Plugin {
            wasm,
            config,
            size,
            messages,
            dir,
        }) => {
            let module = wasm
                .as_ref()
                .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
                .transpose()?;
            let config = config
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .with_context(|| format!("expected KEY=VALUE, got {kv:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            cli::bench::plugin::plugin_bench(&cli::bench::plugin::PluginBenchOptions {
                module,
                config,
                size,
                messages,
                dir,
            })
        }
        Command::Bench(BenchCommand::Schedule {
            messages,
            window,
            pending,
            size,
            inflight,
            dir,
        }) => {
            cli::bench::messaging::schedule_bench(&cli::bench::messaging::MessagingBenchOptions {
                dir,
                messages,
                window: std::time::Duration::from_secs(window),
                pending,
                size,
                inflight,
            })
        }
        Command::Bench(BenchCommand::Tx {
            messages,
            size,
            inflight,
            dir,
        }) => cli::bench::messaging::tx_bench(&cli::bench::messaging::MessagingBenchOptions {
            dir,
            messages,
            window: std::time::Duration::ZERO,
            pending: 0,
            size,
            inflight,
        }),
        Command::Bench(BenchCommand::E2e(a)) => net_bench(cli::bench::net::NetBench::EndToEnd, a),
        Command::Bench(BenchCommand::Replication {
            seconds,
            producers,
            inflight,
            batch,
            size,
            kills,
            dir,
        }) => cli::bench::replication::run(&cli::bench::replication::ReplicationBenchOptions {
            dir,
            seconds,
            producers,
            inflight,
            batch,
            size,
            kills,
        }),
        Command::Bench(BenchCommand::Connections {
            count,
            concurrency,
            seconds,
            size,
            flush,
            dir,
            baseline,
            senders,
            json,
        }) => {
            cli::bench::set_json(json);
            cli::bench::connections::run(&cli::bench::connections::ConnectionsBenchOptions {
                dir,
                count,
                concurrency,
                seconds,
                size,
                flush,
                baseline,
                senders,
            })
        }
        Command::Debug(DebugCommand::StoreWriter {
            dir,
            threads,
            first_id,
        }) => store_writer(dir, threads, first_id),
    }
}

fn net_bench(kind: cli::bench::net::NetBench, a: NetBenchArgs) -> anyhow::Result<()> {
    cli::bench::set_json(a.json);
    let tls = if a.addr.is_some() || !a.cluster.is_empty() {
        a.tls.resolve(std::path::Path::new("quiver-data"))?
    } else {
        None
    };
    cli::bench::net::run(
        kind,
        &cli::bench::net::NetBenchOptions {
            addr: a.addr,
            cluster: a.cluster,
            tls,
            flush: a.flush,
            dir: a.dir,
            topic: a.topic,
            queues: a.queues,
            size: a.size,
            messages: a.messages,
            duration: std::time::Duration::from_secs(a.duration),
            producers: a.producers,
            inflight: a.inflight,
            batch: a.batch,
            consumers: a.consumers,
            group: a.group,
            plugin: a
                .plugin
                .as_ref()
                .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
                .transpose()?
                .map(|module| (module, Vec::new())),
            baseline_bytes: a.baseline_mib << 20,
        },
    )?;
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg =
        quiver::config::Config::load(a.config.as_deref()).context("loading configuration")?;
    if let Some(l) = a.listen {
        cfg.broker.listen = l;
    }
    if let Some(d) = a.data_dir {
        cfg.broker.data_dir = d;
        cfg.store.dir = cfg.broker.data_dir.join("store");
    }
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quiver-worker")
        .build()?;
    rt.block_on(async move {
        // Before anything is printed: whoever reads the banner may signal at once.
        let signal = shutdown_signal();
        let server = quiver::server::Server::start(cfg.clone()).await?;
        let report = server.broker().store().recovery_report().clone();
        // The banner goes to stdout, which may be a pipe its reader closed: a failed write
        // must not stop the broker (println! would panic).
        let mut banner = format!(
            "quiver broker listening on {} (QUIC, ALPN quiver/1)\n",
            server.addr
        );
        banner += &format!("  data directory: {}\n", cfg.broker.data_dir.display());
        banner += &format!("  certificate:    {}\n", server.cert_path.display());
        banner += &format!("  sha256 fingerprint: {}\n", server.fingerprint);
        if let Some(url) = server.admin_url() {
            banner += &format!("  console:        {url}/\n  metrics:        {url}/metrics\n");
        }
        if report.unclean {
            banner += &format!(
                "  recovered after an unclean shutdown in {} ms (scanned {} records{})\n",
                report.took.as_millis(),
                report.records_scanned,
                report
                    .truncated_at
                    .as_ref()
                    .map(|(at, why)| format!(", cut a torn tail at {at}: {why}"))
                    .unwrap_or_default()
            );
        }
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
        }
        let token = server.shutdown_token();
        tokio::spawn(async move {
            signal.await;
            // Cancel first: nothing (not even a failed log write) may stand between the
            // signal and the shutdown.
            token.cancel();
            tracing::info!("shutdown requested");
        });
        server.wait().await
    })
}

/// Registers for SIGINT and SIGTERM now (so a signal that arrives before the returned future is
/// first polled is not lost to the default action) and returns a future that completes on
/// the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Body of message `id` in the crash test: derived from the id so a reader can check it.
fn crash_body(id: u64) -> Vec<u8> {
    let len = 50 + (id % 700) as usize;
    (0..len)
        .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

fn store_writer(dir: PathBuf, threads: u32, first_id: u64) -> anyhow::Result<()> {
    let mut cfg = StoreConfig::new(&dir);
    cfg.flush_mode = FlushMode::Sync;
    cfg.segment_size = 256 << 10;
    cfg.cq_entries_per_file = 1000;
    cfg.index_slots = 1024;
    cfg.index_entries = 4096;
    cfg.max_message_size = 64 << 10;
    cfg.max_properties_size = 4 << 10;
    cfg.disk_high_watermark = 1.0;
    cfg.disk_clean_watermark = 1.0;
    cfg.disk_headroom_bytes = 0;
    let store = Arc::new(Store::open(cfg).context("opening the store")?);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first_id));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, out, next) = (store.clone(), out.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let host = "127.0.0.1:9".parse()?;
                loop {
                    let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let body = crash_body(id);
                    let key = format!("k{id}");
                    let keys = [key.as_str()];
                    // Every fifth append is a batch of three, to exercise batch atomicity.
                    let n = if id % 5 == 0 { 3 } else { 1 };
                    let msgs: Vec<NewMessage<'_>> = (0..n)
                        .map(|_| NewMessage {
                            msg_id: id as u128,
                            flags: 0,
                            born_timestamp: 0,
                            born_host: host,
                            reconsume_times: 0,
                            tag: "crash",
                            keys: &keys,
                            properties: &[],
                            body: &body,
                        })
                        .collect();
                    let appended = store.append("crash", t % 3, &msgs)?.wait()?;
                    let mut o = out.lock().map_err(|_| anyhow::anyhow!("stdout lock"))?;
                    for r in &appended.results {
                        writeln!(o, "ack {} {} {} {}", t % 3, r.queue_offset, id, body.len())?;
                    }
                    o.flush()?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(())
}
