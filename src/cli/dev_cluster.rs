//! `quiver dev-cluster`: a local cluster in one command, for trying Quiver's cluster out.
//!
//! It writes one config per node into a directory (kept on exit, so every node can be rerun
//! by hand with `quiver serve --config DIR/node-N.toml`), starts one `quiver serve` child
//! process per node on 127.0.0.1, waits until the controller has a leader and every broker
//! is alive, prints the cluster, and stops every node on Ctrl-C (or as soon as one of them
//! exits on its own).
//!
//! Layout of the directory: `shared/tls/{cert,key}.pem` (one self-signed certificate every
//! node uses: the cluster's trust anchor), and per node `node-N.toml`, `node-N/` (its data
//! directory) and `node-N.log` (its stdout and stderr).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use quiver_client::{Admin, Client, ClientConfig, ClientError, Tls};
use quiver_protocol::cmd::ClusterInfoReply;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::cluster::ClusterCommand;
use super::output::Out;

/// The cluster id every generated config names.
const CLUSTER_ID: &str = "dev";
/// At most this many controller voters: nodes 1..=3 (a majority survives one failure).
const MAX_VOTERS: u32 = 3;
/// How long a node has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(6);

/// Arguments of `quiver dev-cluster`.
#[derive(Args)]
#[command(after_help = "\
Nodes 1 to min(N, 3) are controller voters; every node is also a broker, alone in its own \
broker set (set-1, set-2, ...), or, with --slaves K, in sets of 1 + K brokers (a master and K \
slaves replicating it, --replication async or sync). All nodes share one self-signed certificate, generated into \
DIR/shared/tls/. Each node's config (DIR/node-N.toml), data directory (DIR/node-N/) and log \
(DIR/node-N.log) are kept on exit: after stopping the cluster, rerun a node by hand with \
`quiver serve --config DIR/node-N.toml`. QUIVER_<SECTION>__<KEY> variables are not passed \
to the nodes: their config files say everything.")]
pub(crate) struct DevClusterArgs {
    /// Number of nodes.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    nodes: u32,
    /// Where the configs, data directories and logs go: a new or empty directory (default:
    /// a new directory under the system temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Node N listens on UDP port P+N-1 (default: free ports chosen by the system).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    base_port: Option<u16>,
    /// Also copy the nodes' logs to stderr, each line prefixed with its node.
    #[arg(long)]
    foreground_logs: bool,
    /// Slaves per broker set: nodes are grouped into sets of 1 + K (the first to register is
    /// the set's master, the others replicate its commit log).
    #[arg(long, value_name = "K", default_value_t = 0)]
    slaves: u32,
    /// With --slaves: `async` (a send is answered once the master has it) or `sync` (once
    /// a slave has it too: min_in_sync = 2).
    #[arg(long, value_name = "MODE", default_value = "async", value_parser = ["async", "sync"])]
    replication: String,
    /// Give up (and stop every node) when the cluster is not ready within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    ready_timeout: u64,
}

/// One generated node.
struct NodePlan {
    id: u64,
    addr: SocketAddr,
    voter: bool,
    set: String,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

impl NodePlan {
    fn role(&self) -> &'static str {
        if self.voter {
            "controller voter + broker"
        } else {
            "broker"
        }
    }
}

/// A started node: its pid, and the channel that asks its supervisor to stop it.
struct Running {
    id: u64,
    pid: u32,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<StopOutcome>,
}

/// How a node ended.
enum StopOutcome {
    /// Exited by itself, before being asked to stop.
    Exited(std::io::Result<ExitStatus>),
    /// Stopped after SIGTERM.
    Stopped(std::io::Result<ExitStatus>),
    /// Did not stop within [`STOP_GRACE`] after SIGTERM: killed.
    Killed,
}

/// Runs `quiver dev-cluster`.
pub(crate) async fn run(a: DevClusterArgs) -> anyhow::Result<()> {
    // First, so that Ctrl-C during startup already stops the nodes instead of killing only us.
    let mut stop_signal = Box::pin(stop_signal()?);
    let dir = prepare_dir(a.dir.as_deref())?;
    let (identity, plans) = plan(&dir, a.nodes, a.base_port, a.slaves, &a.replication)?;
    let cert = identity.cert_path.clone();
    let ignored: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| is_config_var(k))
        .collect();
    if !ignored.is_empty() {
        eprintln!(
            "note: not passing {} to the nodes (their config files say everything)",
            ignored.join(", ")
        );
    }

    // Spawned from this future, which `block_on` polls on the main thread: the nodes' parent
    // death signal fires when the thread that forked them ends (see `spawn_node`).
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut running = Vec::new();
    for p in &plans {
        match spawn_node(p, &ignored, a.foreground_logs, exits_tx.clone()) {
            Ok(r) => running.push(r),
            Err(e) => {
                stop_all(&mut running, &plans).await;
                return Err(e);
            }
        }
    }
    drop(exits_tx);

    say(&format!(
        "quiver dev-cluster: {} node{} of cluster {CLUSTER_ID:?} in {}",
        plans.len(),
        if plans.len() == 1 { "" } else { "s" },
        dir.display()
    ));
    for (p, r) in plans.iter().zip(&running) {
        say(&format!(
            "node {}  {}  {}  broker set {}  (pid {})",
            p.id,
            p.addr,
            p.role(),
            p.set,
            r.pid
        ));
        say(&format!("    config  {}", p.config.display()));
        say(&format!("    data    {}", p.data.display()));
        say(&format!("    log     {}", p.log.display()));
    }
    say(&format!(
        "every node uses one self-signed certificate:\n    CA file      {}\n    fingerprint  {}",
        cert.display(),
        identity.fingerprint
    ));
    say(&format!(
        "waiting (at most {} s) for a controller leader and {} alive broker{}...",
        a.ready_timeout,
        plans.len(),
        if plans.len() == 1 { "" } else { "s" }
    ));

    let started = Instant::now();
    let ready = tokio::select! {
        r = wait_ready(&plans, &cert, Duration::from_secs(a.ready_timeout)) => Some(r),
        Some((id, how)) = exits.recv() => {
            let err = node_exited(id, &how, &mut running, &plans).await;
            return Err(err);
        }
        _ = &mut stop_signal => None,
    };
    match ready {
        None => {
            say(&format!(
                "interrupted: stopping every node (SIGTERM; killed after {} s)",
                STOP_GRACE.as_secs()
            ));
            stop_all(&mut running, &plans).await;
            say(&kept(&dir));
            return Ok(());
        }
        Some(Err(e)) => {
            for p in &plans {
                eprintln!("--- last lines of {}", p.log.display());
                eprint!("{}", tail(&p.log, 8));
            }
            stop_all(&mut running, &plans).await;
            eprintln!("{}", kept(&dir));
            return Err(e);
        }
        Some(Ok(info)) => {
            let alive = info.brokers.iter().filter(|b| b.alive).count();
            say(&format!(
                "cluster ready: leader node {} (term {}), {alive} of {} brokers alive, after {:.1} s",
                info.leader,
                info.term,
                plans.len(),
                started.elapsed().as_secs_f64()
            ));
        }
    }

    // The cluster as `quiver admin cluster list` prints it.
    let first = &plans[0];
    if let Err(e) = print_cluster(first.addr, &cert).await {
        eprintln!("warning: could not print the cluster: {e:#}");
    }
    let ca = shell_word(&cert.display().to_string());
    say(&format!(
        "\ntry it (on node 1; every node is a broker, so any node's address works for \
         produce and consume):\n    \
         quiver admin cluster list --broker {addr} --ca {ca}\n    \
         quiver admin topic create demo --broker {addr} --ca {ca}\n    \
         quiver produce --broker {addr} --ca {ca} -t demo hello\n    \
         quiver consume --broker {addr} --ca {ca} -t demo --from first\n\
         or set the connection once:\n    \
         export QUIVER_BROKER={addr} QUIVER_CA={ca}\n\
         (--fingerprint {fp} works instead of --ca)",
        addr = first.addr,
        fp = identity.fingerprint,
    ));
    say("Ctrl-C stops every node.");

    tokio::select! {
        _ = &mut stop_signal => {
            say(&format!(
                "\nstopping every node (SIGTERM; killed after {} s)",
                STOP_GRACE.as_secs()
            ));
            stop_all(&mut running, &plans).await;
            say(&kept(&dir));
            Ok(())
        }
        Some((id, how)) = exits.recv() => Err(node_exited(id, &how, &mut running, &plans).await),
    }
}

/// Generates the shared certificate and every node's config in `dir`: nodes 1..=3 are
/// voters; sets of `1 + slaves` brokers.
fn plan(
    dir: &Path,
    nodes: u32,
    base_port: Option<u16>,
    slaves: u32,
    replication: &str,
) -> anyhow::Result<(quiver::net::tls::Identity, Vec<NodePlan>)> {
    let ports = ports(nodes, base_port)?;
    let identity = {
        let mut cfg = quiver::config::Config::default();
        cfg.broker.data_dir = dir.join("shared");
        quiver::net::tls::load_or_generate(&cfg).context("generating the shared certificate")?
    };
    let cert = identity.cert_path.clone();
    let key = cert.with_file_name("key.pem");
    let voters: Vec<(u64, SocketAddr)> = (1..=nodes.min(MAX_VOTERS))
        .map(|i| {
            (
                u64::from(i),
                SocketAddr::from(([127, 0, 0, 1], ports[i as usize - 1])),
            )
        })
        .collect();
    let plans: Vec<NodePlan> = (1..=nodes)
        .map(|i| {
            let id = u64::from(i);
            let plan = NodePlan {
                id,
                addr: SocketAddr::from(([127, 0, 0, 1], ports[i as usize - 1])),
                voter: voters.iter().any(|(v, _)| *v == id),
                set: format!("set-{}", (i - 1) / (slaves + 1) + 1),
                config: dir.join(format!("node-{i}.toml")),
                data: dir.join(format!("node-{i}")),
                log: dir.join(format!("node-{i}.log")),
            };
            write_config(&plan, nodes, &voters, &cert, &key, replication)?;
            Ok(plan)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((identity, plans))
}

/// A local cluster of `quiver serve` processes that its owner starts and kills one by one
/// (`quiver bench replication`). Every node is killed when this is dropped.
pub(crate) struct LocalNodes {
    /// The shared certificate (the CA file clients trust).
    pub(crate) cert: PathBuf,
    plans: Vec<NodePlan>,
    children: Vec<Option<Child>>,
}

impl LocalNodes {
    /// Writes the layout of `quiver dev-cluster --nodes N --slaves K --replication R` into
    /// `dir` (a new or empty directory) and starts every node.
    pub(crate) fn start(
        dir: &Path,
        nodes: u32,
        slaves: u32,
        replication: &str,
    ) -> anyhow::Result<LocalNodes> {
        let dir = prepare_dir(Some(dir))?;
        let (identity, plans) = plan(&dir, nodes, None, slaves, replication)?;
        let mut me = LocalNodes {
            cert: identity.cert_path,
            children: plans.iter().map(|_| None).collect(),
            plans,
        };
        for i in 0..me.plans.len() {
            me.spawn(i)?;
        }
        Ok(me)
    }

    /// Every node's address, by index (node id − 1).
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.plans.iter().map(|p| p.addr).collect()
    }

    /// Starts node `i` (again).
    pub(crate) fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let child = command_for(&self.plans[i], &[], false)?
            .spawn()
            .with_context(|| format!("starting node {}", self.plans[i].id))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// `kill -9` of node `i`, waiting until it is gone.
    pub(crate) async fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill().await;
        }
    }

    /// Waits until the voters agree on a leader and every broker is alive.
    pub(crate) async fn ready(&self, limit: Duration) -> anyhow::Result<ClusterInfoReply> {
        wait_ready(&self.plans, &self.cert, limit).await
    }

    /// The last lines of node `i`'s log.
    pub(crate) fn tail(&self, i: usize, n: usize) -> String {
        tail(&self.plans[i].log, n)
    }
}

/// The directory to use: `dir` (created when missing; it must be empty), or a new one under
/// the system temporary directory. Returned absolute, so the configs work from anywhere.
fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            let mut entries =
                std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: pick a new or empty --dir (a previous cluster's nodes \
                     can be rerun one by one with `quiver serve --config {}/node-N.toml`)",
                    d.display(),
                    d.display()
                );
            }
            d.to_path_buf()
        }
        None => {
            let base = std::env::temp_dir();
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let mut n = 0u32;
            loop {
                let d = base.join(format!(
                    "quiver-dev-cluster-{stamp}-{}{}",
                    std::process::id(),
                    if n == 0 {
                        String::new()
                    } else {
                        format!("-{n}")
                    }
                ));
                match std::fs::create_dir(&d) {
                    Ok(()) => break d,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                    Err(e) => {
                        return Err(
                            anyhow::Error::new(e).context(format!("creating {}", d.display()))
                        )
                    }
                }
            }
        }
    };
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// The nodes' ports: `base..base+n`, or free ones chosen by the system. Each is checked free
/// (for UDP on 127.0.0.1) now.
fn ports(n: u32, base: Option<u16>) -> anyhow::Result<Vec<u16>> {
    if let Some(base) = base {
        let last = u32::from(base) + n - 1;
        if last > u32::from(u16::MAX) {
            bail!(
                "--base-port {base} leaves no room for {n} nodes (the last port would be {last})"
            );
        }
        for p in base..=last as u16 {
            UdpSocket::bind(("127.0.0.1", p))
                .with_context(|| format!("UDP port 127.0.0.1:{p} is not free (--base-port)"))?;
        }
        return Ok((base..=last as u16).collect());
    }
    // All bound at once, so the system hands out distinct ports.
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free UDP ports on 127.0.0.1")?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// A TOML string literal (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Writes the node's config file, after checking that the broker would accept it.
fn write_config(
    p: &NodePlan,
    nodes: u32,
    voters: &[(u64, SocketAddr)],
    cert: &Path,
    key: &Path,
    replication: &str,
) -> anyhow::Result<()> {
    let voters: Vec<String> = voters
        .iter()
        .map(|(id, addr)| format!("  {{ id = {id}, addr = \"{addr}\" }},"))
        .collect();
    let text = format!(
        "# Node {id} of {nodes}, written by `quiver dev-cluster`.\n\
         # Run it by hand (with the cluster's other nodes): quiver serve --config {config}\n\
         \n\
         [broker]\n\
         name = {name}\n\
         listen = \"{addr}\"\n\
         data_dir = {data}\n\
         \n\
         [store]\n\
         # Smaller commit log files than the default 1GiB: a local trial.\n\
         segment_size = \"64MiB\"\n\
         \n\
         [tls]\n\
         # One self-signed certificate shared by every node: the cluster's trust anchor.\n\
         cert = {cert}\n\
         key = {key}\n\
         \n\
         [admin]\n\
         # /metrics over HTTP on any free port (its log says which).\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         [cluster]\n\
         cluster_id = {cluster}\n\
         node_id = {id}\n\
         controller = {voter}\n\
         broker_set = {set}\n\
         replication = {replication}\n\
         {min_in_sync}\
         voters = [\n{voters}\n]\n",
        replication = toml_str(replication),
        min_in_sync = if replication == "sync" {
            "min_in_sync = 2\n"
        } else {
            ""
        },
        id = p.id,
        config = p.config.display(),
        name = toml_str(&format!("node-{}", p.id)),
        addr = p.addr,
        data = toml_str(&p.data.display().to_string()),
        cert = toml_str(&cert.display().to_string()),
        key = toml_str(&key.display().to_string()),
        cluster = toml_str(CLUSTER_ID),
        voter = p.voter,
        set = toml_str(&p.set),
        voters = voters.join("\n"),
    );
    // The file alone, as `quiver serve --config` reads it (environment variables aside).
    let mut cfg: quiver::config::Config =
        toml::from_str(&text).context("the generated config does not parse (a bug)")?;
    cfg.store.dir = cfg.broker.data_dir.join("store");
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("the generated config for node {} is refused: {e}", p.id))?;
    std::fs::write(&p.config, text).with_context(|| format!("writing {}", p.config.display()))
}

/// `QUIVER_<SECTION>__<KEY>`: a broker configuration variable (src/config.rs).
fn is_config_var(k: &str) -> bool {
    k.starts_with("QUIVER_") && k.contains("__")
}

/// The `quiver serve --config` command of a node: its output to its log (or piped, for
/// `foreground_logs`), its own process group, and SIGTERM when we die.
fn command_for(
    p: &NodePlan,
    ignored_env: &[String],
    foreground_logs: bool,
) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding the quiver executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .with_context(|| format!("opening {}", p.log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg("--config").arg(&p.config);
    cmd.env_remove("QUIVER_CONFIG");
    for k in ignored_env {
        cmd.env_remove(k);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,openraft=warn");
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    if foreground_logs {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(log.try_clone()?).stderr(log.try_clone()?);
    }
    // Its own process group: Ctrl-C in the terminal reaches only us, and we stop the nodes
    // in order (a node stopped by the terminal would look like a node that failed).
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid), allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                // If we die without stopping it (kill -9), the node gets SIGTERM instead of
                // running on orphaned. The signal is tied to the thread that forked: the
                // caller spawns from the main thread, which lives as long as we do.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    Ok(cmd)
}

/// Starts `quiver serve --config` for the node, and a task that watches it: it reports an exit
/// on `exits` (with the node id) unless asked to stop first, and stops the node when asked.
fn spawn_node(
    p: &NodePlan,
    ignored_env: &[String],
    foreground_logs: bool,
    exits: mpsc::UnboundedSender<(u64, String)>,
) -> anyhow::Result<Running> {
    let mut cmd = command_for(p, ignored_env, foreground_logs)?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting node {} (quiver serve)", p.id))?;
    let pid = child.id().context("the node exited at once")?;
    if foreground_logs {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("opening {}", p.log.display()))?;
        let log = Arc::new(Mutex::new(log));
        let prefix = format!("[node-{}] ", p.id);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(tee(out, log.clone(), prefix.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(tee(err, log, prefix));
        }
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let id = p.id;
    let done = tokio::spawn(supervise(child, id, stop_rx, exits));
    Ok(Running {
        id,
        pid,
        stop: Some(stop_tx),
        done,
    })
}

/// Copies a node's output, line by line, to its log file and (prefixed) to our stderr.
async fn tee(from: impl AsyncRead + Unpin, log: Arc<Mutex<std::fs::File>>, prefix: String) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
        let _ = writeln!(std::io::stderr().lock(), "{prefix}{line}");
    }
}

async fn supervise(
    mut child: Child,
    id: u64,
    stop: oneshot::Receiver<()>,
    exits: mpsc::UnboundedSender<(u64, String)>,
) -> StopOutcome {
    tokio::select! {
        status = child.wait() => {
            let how = match &status {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot be waited for: {e}"),
            };
            let _ = exits.send((id, how));
            return StopOutcome::Exited(status);
        }
        _ = stop => {}
    }
    // Gracefully, as `quiver serve` expects (it handles SIGTERM like Ctrl-C).
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, not yet reaped (`id` is Some).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => StopOutcome::Stopped(status),
        Err(_) => {
            let _ = child.kill().await;
            StopOutcome::Killed
        }
    }
}

/// Asks every node still running to stop, waits for them all, and says how each ended.
async fn stop_all(running: &mut [Running], plans: &[NodePlan]) {
    for r in running.iter_mut() {
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
    }
    for r in running.iter_mut() {
        let outcome = (&mut r.done).await;
        let log = plans
            .iter()
            .find(|p| p.id == r.id)
            .map(|p| p.log.display().to_string())
            .unwrap_or_default();
        let what = match outcome {
            Ok(StopOutcome::Stopped(Ok(s))) if s.success() => "stopped".to_string(),
            Ok(StopOutcome::Stopped(Ok(s))) => format!("stopped with {s} (see {log})"),
            Ok(StopOutcome::Exited(Ok(s))) => format!("had already exited with {s} (see {log})"),
            Ok(StopOutcome::Stopped(Err(e)) | StopOutcome::Exited(Err(e))) => {
                format!("could not be waited for: {e}")
            }
            Ok(StopOutcome::Killed) => format!(
                "did not stop within {} s of SIGTERM: killed",
                STOP_GRACE.as_secs()
            ),
            Err(e) => format!("supervisor failed: {e}"),
        };
        say(&format!("node {} (pid {}) {what}", r.id, r.pid));
    }
}

/// A node exited by itself: stop the others and describe what happened.
async fn node_exited(
    id: u64,
    how: &str,
    running: &mut [Running],
    plans: &[NodePlan],
) -> anyhow::Error {
    let log = plans.iter().find(|p| p.id == id).map(|p| p.log.clone());
    eprintln!("node {id} exited unexpectedly ({how}); stopping every node");
    if let Some(log) = &log {
        eprintln!("--- last lines of {}", log.display());
        eprint!("{}", tail(log, 12));
    }
    stop_all(running, plans).await;
    let dir = log
        .as_deref()
        .and_then(Path::parent)
        .map(kept)
        .unwrap_or_default();
    anyhow::anyhow!(
        "node {id} exited unexpectedly ({how}; see {}); {dir}",
        log.map(|l| l.display().to_string()).unwrap_or_default()
    )
}

/// Registers for SIGINT, SIGTERM and SIGHUP now; the future completes on the first of them.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    })
}

/// Asks one node for the cluster.
async fn cluster_info(addr: SocketAddr, ca: &Path) -> Result<ClusterInfoReply, ClientError> {
    let mut cfg = ClientConfig::new(addr, Tls::CaFile(ca.to_path_buf()));
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(2);
    let client = Client::connect(cfg).await?;
    let r = Admin::new(client.clone()).cluster_info().await;
    client.close().await;
    r
}

/// Polls the controller voters until they all name the same leader in the same term and each
/// sees every node's broker alive in its set; returns the first voter's view. Fails after
/// `limit` with the last views.
async fn wait_ready(
    plans: &[NodePlan],
    ca: &Path,
    limit: Duration,
) -> anyhow::Result<ClusterInfoReply> {
    let deadline = Instant::now() + limit;
    let voters: Vec<&NodePlan> = plans.iter().filter(|p| p.voter).collect();
    let mut views: Vec<(u64, Result<ClusterInfoReply, ClientError>)> = Vec::new();
    loop {
        // The voters at once, and never past the deadline (a node that does not answer costs
        // a connect timeout).
        let round = futures::future::join_all(
            voters
                .iter()
                .map(|p| async move { (p.id, cluster_info(p.addr, ca).await) }),
        );
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(v) = tokio::time::timeout(left, round).await {
            views = v;
        }
        let ready = |i: &ClusterInfoReply| {
            i.leader != 0
                && plans.iter().all(|p| {
                    i.brokers
                        .iter()
                        .any(|b| b.id == p.id && b.set == p.set && b.alive)
                })
        };
        if let Some((_, Ok(first))) = views.first() {
            let agreed = views.iter().all(|(_, v)| {
                v.as_ref()
                    .is_ok_and(|v| v.leader == first.leader && v.term == first.term && ready(v))
            });
            if agreed {
                return Ok(first.clone());
            }
        }
        if Instant::now() >= deadline {
            let described: Vec<String> = views
                .iter()
                .map(|(id, v)| match v {
                    Ok(i) => format!(
                        "node {id}: leader {}, term {}, {} of {} brokers alive",
                        if i.leader == 0 {
                            "none".to_string()
                        } else {
                            i.leader.to_string()
                        },
                        i.term,
                        i.brokers.iter().filter(|b| b.alive).count(),
                        plans.len()
                    ),
                    Err(e) => format!("node {id}: {e}"),
                })
                .collect();
            bail!(
                "the cluster was not ready within {} s ({})",
                limit.as_secs(),
                if described.is_empty() {
                    "no node answered in time".to_string()
                } else {
                    described.join("; ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints the cluster as `quiver admin cluster list` does.
async fn print_cluster(addr: SocketAddr, ca: &Path) -> anyhow::Result<()> {
    let client = Client::connect(ClientConfig::new(addr, Tls::CaFile(ca.to_path_buf()))).await?;
    let admin = Admin::new(client.clone());
    say("");
    let r = {
        let mut out = Out::new(false);
        super::cluster::run(&admin, &mut out, ClusterCommand::List).await
    };
    client.close().await;
    r
}

/// The last `n` lines of a file (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(n)..] {
        out += l;
        out += "\n";
    }
    out
}

fn kept(dir: &Path) -> String {
    format!(
        "configs, data and logs are kept in {} (remove it when done)",
        dir.display()
    )
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-:+=,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One line to stdout; a closed stdout (`| head`) does not stop the cluster.
fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}").and_then(|()| out.flush());
}
