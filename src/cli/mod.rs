//! The client commands of the `quiver` binary: `produce`, `consume` and `admin`. Each one
//! connects to a broker with the SDK (`quiver-client`), prints for people by default and one
//! JSON object per line with `--json`, and exits non-zero with the error on stderr on failure.
//! [`bench`] holds the `quiver bench` measurements. These rooms live in the binary, not in the
//! `quiver` library: they are the only code that uses the client SDK, so the broker library
//! does not depend on it.

pub(crate) mod admin;
pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod consume;
pub(crate) mod dev_cluster;
pub(crate) mod filter;
pub(crate) mod group;
pub(crate) mod output;
pub(crate) mod plugin;
pub(crate) mod produce;
pub(crate) mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use quiver_client::{Client, ClientConfig};

/// How the client verifies the broker's certificate.
#[derive(Args, Clone, Default)]
pub(crate) struct TlsArgs {
    /// Pin the broker certificate's SHA-256 fingerprint (printed by `quiver serve`).
    #[arg(long, env = "QUIVER_FINGERPRINT", global = true)]
    pub(crate) fingerprint: Option<String>,
    /// Trust this CA (or self-signed certificate) file, PEM or DER.
    #[arg(long, env = "QUIVER_CA", global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// Accept any certificate. Local development only: anyone on the path can read and change
    /// your messages.
    #[arg(long, global = true)]
    pub(crate) insecure: bool,
}

impl TlsArgs {
    /// The chosen verification; without a choice, the local broker's certificate file.
    pub(crate) fn resolve(&self, data_dir: &Path) -> anyhow::Result<Option<quiver_client::Tls>> {
        if let Some(fp) = &self.fingerprint {
            return Ok(Some(quiver_client::Tls::fingerprint_from_hex(fp)?));
        }
        if let Some(ca) = &self.ca {
            return Ok(Some(quiver_client::Tls::CaFile(ca.clone())));
        }
        if self.insecure {
            tracing::warn!("--insecure: the broker's certificate is not verified");
            return Ok(Some(quiver_client::Tls::Insecure));
        }
        let local = data_dir.join("tls").join("cert.pem");
        Ok(local.exists().then_some(quiver_client::Tls::CaFile(local)))
    }
}

/// Where the broker is, how to trust it, and how to print.
#[derive(Args, Clone)]
#[command(next_help_heading = "Connection and output")]
pub(crate) struct ClientArgs {
    /// Broker address, HOST:PORT (UDP); the port defaults to 10911. In a cluster, several
    /// comma-separated addresses of its nodes (any node answers routes): `a:10911,b:10911`.
    #[arg(
        long,
        env = "QUIVER_BROKER",
        default_value = "127.0.0.1:10911",
        value_name = "ADDR[,ADDR...]",
        global = true
    )]
    pub(crate) broker: String,
    /// The local broker's data directory: only used to find its certificate
    /// (DIR/tls/cert.pem) when no --fingerprint, --ca or --insecure is given.
    #[arg(long, default_value = "quiver-data", value_name = "DIR", global = true)]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// Log in as this user (password from QUIVER_PASSWORD); needed once the broker has
    /// users (docs/SECURITY.md).
    #[arg(long, env = "QUIVER_USER", value_name = "NAME", global = true)]
    pub(crate) user: Option<String>,
    /// Read the user and password from this file (lines `user = "NAME"` and
    /// `password = "SECRET"`); default ~/.config/quiver/credentials when it exists.
    #[arg(long, env = "QUIVER_CREDENTIALS", value_name = "FILE", global = true)]
    pub(crate) credentials: Option<PathBuf>,
    /// Present this TLS client certificate (PEM; with --client-key): a broker with
    /// auth.client_ca logs in as the user it names, without a password.
    #[arg(
        long,
        env = "QUIVER_CLIENT_CERT",
        value_name = "FILE",
        global = true,
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(
        long,
        env = "QUIVER_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,
    /// Print one JSON object per line (for scripts) instead of text for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl ClientArgs {
    /// The credentials to log in with: --user with QUIVER_PASSWORD, --credentials FILE, or
    /// ~/.config/quiver/credentials; none when nothing is given.
    fn login(&self) -> anyhow::Result<Option<quiver_client::Credentials>> {
        if let Some(user) = &self.user {
            let password = std::env::var("QUIVER_PASSWORD").map_err(|_| {
                anyhow::anyhow!(
                    "--user {user} needs its password in QUIVER_PASSWORD (or use --credentials FILE)"
                )
            })?;
            return Ok(Some(quiver_client::Credentials::new(
                user.clone(),
                password,
            )));
        }
        if let Some(file) = &self.credentials {
            return Ok(Some(quiver_client::Credentials::from_file(file)?));
        }
        let default = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config/quiver/credentials"))
            .filter(|p| p.exists());
        match default {
            Some(file) => Ok(Some(quiver_client::Credentials::from_file(&file)?)),
            None => Ok(None),
        }
    }
}

impl ClientArgs {
    /// The client settings for the first `--broker` address, and every address.
    async fn client_config(&self) -> anyhow::Result<(ClientConfig, Vec<SocketAddr>)> {
        let tls = self.tls.resolve(&self.data_dir)?.with_context(|| {
            format!(
                "no way to verify the broker's certificate: pass --fingerprint HEX (printed by \
                 `quiver serve`), --ca FILE, or --insecure (local development only); \
                 no local broker certificate at {}",
                self.data_dir.join("tls").join("cert.pem").display()
            )
        })?;
        let mut addrs = Vec::new();
        let mut host = None;
        for b in self
            .broker
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            let (addr, h) = resolve_broker(b).await?;
            addrs.push(addr);
            host = host.or(h);
        }
        let first = *addrs.first().context("--broker names no address")?;
        let mut cfg = ClientConfig::new(first, tls);
        cfg.credentials = self.login()?;
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            cfg.certificate = Some(quiver_client::ClientCertificate {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        if let Some(host) = host {
            // A CA-verified certificate must be valid for the name we dialled.
            cfg.server_name = host;
        }
        Ok((cfg, addrs))
    }

    /// Connects to the broker (QUIC + TLS + Hello): the first `--broker` address that
    /// answers.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let (cfg, addrs) = self.client_config().await?;
        let mut last = None;
        for addr in addrs {
            match Client::connect(ClientConfig {
                addr,
                ..cfg.clone()
            })
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        match last {
            // Already says where and why.
            Some(
                e @ (quiver_client::ClientError::Connect { .. }
                | quiver_client::ClientError::Unreachable { .. }),
            ) => Err(e.into()),
            Some(e) => Err(anyhow::Error::new(e)
                .context(format!("connecting to the broker at {}", self.broker))),
            None => anyhow::bail!("--broker names no address"),
        }
    }

    /// The cluster behind the `--broker` addresses (a single broker is a cluster of one set).
    pub(crate) async fn cluster(&self) -> anyhow::Result<quiver_client::Cluster> {
        let (cfg, addrs) = self.client_config().await?;
        quiver_client::Cluster::connect(&addrs, cfg)
            .await
            .with_context(|| format!("connecting to {}", self.broker))
    }
}

/// The socket address of `--broker`, and its host name when it is not an IP address.
async fn resolve_broker(s: &str) -> anyhow::Result<(SocketAddr, Option<String>)> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a, None));
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok((SocketAddr::new(ip, 10911), None));
    }
    let (host, with_port) = match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), s.to_string()),
        _ => (s.to_string(), format!("{s}:10911")),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving the broker address {s:?}"))?
        .next()
        .with_context(|| format!("the broker address {s:?} resolves to nothing"))?;
    Ok((addr, Some(host)))
}

/// Runs a client command on a small runtime, then exits: status 0 on success (or when the
/// reader of our output went away), 1 with `error: ...` on stderr otherwise.
pub(crate) fn run<F>(fut: F) -> !
where
    F: Future<Output = anyhow::Result<()>>,
{
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("quiver-cli")
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(fut));
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) if output::is_broken_pipe(&e) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

/// Fails early, before connecting, on a name the broker would refuse.
pub(crate) fn check_name(kind: &str, name: &str) -> anyhow::Result<()> {
    quiver_client::quiver_protocol::names::check_name(kind, name).map_err(anyhow::Error::msg)
}
