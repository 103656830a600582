//! Who may do what (docs/SECURITY.md): users with password verifiers, their access rules,
//! the broker's side of the password handshake, and the decision whether a caller holds
//! what a request needs ([`perm::needs`]). Stored in `<data_dir>/auth.json`, replaced
//! atomically on every change; rules are read on every request, so a change applies to
//! open connections at once.
//!
//! Knows nothing of QUIC or HTTP: the front doors (src/net, src/console) keep each
//! connection's [`Login`] and pass a [`Caller`].

pub mod audit;
pub mod perm;
mod throttle;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use ipnet::IpNet;
use quiver_protocol::cmd::{self, actions, AclRule, Decision, Role};
use quiver_protocol::scram::{self, Params, Verifier};
use quiver_protocol::text::{hex, unhex};
use quiver_protocol::{Request, Response, Status};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::Clock;
use perm::{Need, Resource};

/// A refusal: the status a client gets and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// The wire status.
    pub status: Status,
    /// What is wrong (never a server path).
    pub message: String,
}

impl Refused {
    /// A refusal with its status.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// `[auth]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `on` (the default): once a user exists every request needs a logged-in user
    /// allowed to make it; before that, only clients on this machine are served. `off`:
    /// no checks at all, from anywhere.
    pub mode: AuthMode,
    /// The name of the super user created at start when no user exists and
    /// `bootstrap_password` is set; default `admin`.
    pub bootstrap_user: String,
    /// The password of that first user (env `QUIVER_AUTH__BOOTSTRAP_PASSWORD`). Used only
    /// while no user exists; only its argon2id verifier is stored.
    #[serde(skip_serializing)]
    pub bootstrap_password: Option<String>,
    /// A PEM file of certificate authorities for applications' TLS client certificates: a
    /// connection presenting a certificate they issued is logged in as the user named by
    /// its subject's common name (the user must exist; its rules apply). None: only cluster
    /// nodes present certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// A PEM file of certificate revocation lists from those authorities: a client
    /// certificate they list fails the TLS handshake. Read at start and again whenever it
    /// changes; needs `client_ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_crl: Option<PathBuf>,
    /// How often `client_crl` is checked for changes, in ms.
    pub client_crl_check_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::On,
            bootstrap_user: "admin".into(),
            bootstrap_password: None,
            client_ca: None,
            client_crl: None,
            client_crl_check_ms: 10_000,
        }
    }
}

/// Whether access is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Checked once a user exists.
    On,
    /// Never checked.
    Off,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Nobody logged in.
    Anonymous,
    /// A cluster node (it presented a certificate of this cluster): allowed everything.
    Member,
    /// The console's admin token: allowed everything.
    AdminToken,
    /// A logged-in user.
    User(Arc<str>),
}

/// A caller: who, and from where (rules may name address ranges).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub who: Who,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// An access rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    resource: String,
    actions: u16,
    decision: Decision,
    source: Option<IpNet>,
}

impl Rule {
    fn parse(r: &AclRule) -> Result<Rule, String> {
        check_pattern(&r.resource)?;
        if r.actions == 0 || r.actions & !actions::ALL != 0 {
            return Err(format!(
                "actions {:#06x}: give at least one of the defined bits (0x01 to 0x80)",
                r.actions
            ));
        }
        let source = match r.source.trim() {
            "" => None,
            s => Some(parse_source(s)?),
        };
        Ok(Rule {
            resource: r.resource.clone(),
            actions: r.actions,
            decision: r.decision,
            source,
        })
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "resource": self.resource,
            "actions": actions::names(self.actions),
            "decision": self.decision.name(),
            "source": self.source.map(|s| s.to_string()),
        })
    }

    fn matches(&self, action: u16, resource: &Resource, from: IpAddr) -> bool {
        self.actions & action != 0
            && pattern_matches(&self.resource, resource)
            && self.source.is_none_or(|net| net.contains(&from))
    }
}

/// `10.0.0.0/8`, `::1/128` or a single address.
fn parse_source(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("source {s:?} is not an address or a CIDR range like 10.0.0.0/8"))
}

/// `*`, `cluster`, `topic:NAME`, `topic:PREFIX*`, `group:NAME`, `group:PREFIX*`.
fn check_pattern(p: &str) -> Result<(), String> {
    if p == "*" || p == "cluster" {
        return Ok(());
    }
    let bad = || {
        format!(
            "resource {p:?}: write topic:NAME, topic:PREFIX*, group:NAME, group:PREFIX*, \
             cluster or *"
        )
    };
    let name = p
        .strip_prefix("topic:")
        .or_else(|| p.strip_prefix("group:"))
        .ok_or_else(bad)?;
    let stem = name.strip_suffix('*').unwrap_or(name);
    if stem.contains('*') || (stem.is_empty() && name.is_empty()) {
        return Err(bad());
    }
    Ok(())
}

fn pattern_matches(pattern: &str, resource: &Resource) -> bool {
    if pattern == "*" {
        return true;
    }
    let (kind, name) = match resource {
        Resource::Topic(t) => ("topic:", t.as_str()),
        Resource::Group(g) => ("group:", g.as_str()),
        Resource::Cluster => return pattern == "cluster",
        Resource::Stored(_) => return false,
    };
    let Some(p) = pattern.strip_prefix(kind) else {
        return false;
    };
    match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    }
}

/// A user as the broker keeps it.
#[derive(Debug, Clone)]
struct User {
    role: Role,
    verifier: Verifier,
    created_ms: i64,
    rules: Vec<Rule>,
}

impl User {
    /// Whether the rules allow any one of `need.actions` on its resource from `from`: per
    /// action, a matching deny wins over any allow.
    fn allows(&self, need: &Need, from: IpAddr) -> bool {
        if self.role == Role::Super {
            return true;
        }
        actions::NAMES.iter().any(|(_, bit)| {
            need.actions & bit != 0 && {
                let hits = self
                    .rules
                    .iter()
                    .filter(|r| r.matches(*bit, &need.resource, from));
                let mut allowed = false;
                for r in hits {
                    match r.decision {
                        Decision::Deny => return false,
                        Decision::Allow => allowed = true,
                    }
                }
                allowed
            }
        })
    }
}

/// Every user, and the secret unknown users' salts are made from.
#[derive(Debug, Clone)]
struct Users {
    secret: [u8; 32],
    users: BTreeMap<String, User>,
    /// The cluster's version of these users (0 outside a cluster).
    version: u64,
}

/// `auth.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    /// The cluster's version of this document (0 outside a cluster).
    #[serde(default)]
    cluster_version: u64,
    secret: String,
    users: BTreeMap<String, FileUser>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    role: String,
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
    stored_key: String,
    server_key: String,
    created_ms: i64,
    rules: Vec<FileRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    resource: String,
    actions: String,
    decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

fn fixed<const N: usize>(text: &str, what: &str) -> anyhow::Result<[u8; N]> {
    unhex(text)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("{what} is not {N} bytes of hex"))
}

impl Users {
    fn from_file(f: File) -> anyhow::Result<Users> {
        anyhow::ensure!(f.version == 1, "unknown version {}", f.version);
        let mut users = BTreeMap::new();
        for (name, u) in f.users {
            let ctx = || format!("user {name:?}");
            let role = match u.role.as_str() {
                "super" => Role::Super,
                "normal" => Role::Normal,
                other => anyhow::bail!("user {name:?}: unknown role {other:?}"),
            };
            let verifier = Verifier {
                salt: fixed(&u.salt, "salt").with_context(ctx)?,
                params: Params {
                    m_kib: u.m_kib,
                    t: u.t,
                    p: u.p,
                },
                stored_key: fixed(&u.stored_key, "stored_key").with_context(ctx)?,
                server_key: fixed(&u.server_key, "server_key").with_context(ctx)?,
            };
            let mut rules = Vec::new();
            for r in u.rules {
                let decision = match r.decision.as_str() {
                    "allow" => Decision::Allow,
                    "deny" => Decision::Deny,
                    other => anyhow::bail!("user {name:?}: unknown decision {other:?}"),
                };
                let wire = AclRule {
                    resource: r.resource,
                    actions: actions::parse(&r.actions)
                        .map_err(anyhow::Error::msg)
                        .with_context(ctx)?,
                    decision,
                    source: r.source.unwrap_or_default(),
                };
                rules.push(
                    Rule::parse(&wire)
                        .map_err(anyhow::Error::msg)
                        .with_context(ctx)?,
                );
            }
            users.insert(
                name,
                User {
                    role,
                    verifier,
                    created_ms: u.created_ms,
                    rules,
                },
            );
        }
        Ok(Users {
            secret: fixed(&f.secret, "secret")?,
            users,
            version: f.cluster_version,
        })
    }

    fn to_file(&self) -> File {
        File {
            version: 1,
            cluster_version: self.version,
            secret: hex(&self.secret),
            users: self
                .users
                .iter()
                .map(|(name, u)| {
                    let v = &u.verifier;
                    let rules = u
                        .rules
                        .iter()
                        .map(|r| FileRule {
                            resource: r.resource.clone(),
                            actions: actions::names(r.actions),
                            decision: r.decision.name().into(),
                            source: r.source.map(|s| s.to_string()),
                        })
                        .collect();
                    let fu = FileUser {
                        role: u.role.name().into(),
                        salt: hex(&v.salt),
                        m_kib: v.params.m_kib,
                        t: v.params.t,
                        p: v.params.p,
                        stored_key: hex(&v.stored_key),
                        server_key: hex(&v.server_key),
                        created_ms: u.created_ms,
                        rules,
                    };
                    (name.clone(), fu)
                })
                .collect(),
        }
    }

    fn supers(&self) -> usize {
        self.users
            .values()
            .filter(|u| u.role == Role::Super)
            .count()
    }
}

/// One connection's state in the password handshake.
#[derive(Debug, Default)]
pub struct Login {
    pending: Option<Pending>,
    user: Option<Arc<str>>,
    failures: u32,
}

#[derive(Debug)]
struct Pending {
    user: String,
    verifier: Option<Verifier>,
    auth_message: Vec<u8>,
}

impl Login {
    /// A connection logged in by its TLS client certificate (`auth.client_ca`).
    pub fn by_certificate(user: &str) -> Login {
        Login {
            user: Some(Arc::from(user)),
            ..Login::default()
        }
    }

    /// The user this connection logged in as.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }
}

/// Failed proofs a connection may send before its AuthStarts are refused.
const MAX_FAILURES: u32 = 5;

/// The one answer to every failed handshake: it never says whether the user exists.
const FAILED: &str = "authentication failed: unknown user or wrong password";

fn denied(msg: impl Into<String>) -> Refused {
    Refused::new(Status::AccessDenied, msg)
}

fn bad(msg: impl Into<String>) -> Refused {
    Refused::new(Status::BadRequest, msg)
}

/// Users, rules and the checks.
pub struct Auth {
    mode: AuthMode,
    path: PathBuf,
    users: RwLock<Arc<Users>>,
    /// One change at a time: read, change, write the file, then publish.
    writer: tokio::sync::Mutex<()>,
    clock: Clock,
    /// On a cluster node: stores a change through the controller (every node adopts it).
    publish: std::sync::OnceLock<Publish>,
    /// Failed logins per source address.
    throttle: throttle::Throttle,
    /// The audit log's line budget.
    audit: audit::Audit,
}

/// Stores a new document (`json`) through the cluster's controller, made on version
/// `expect`: `Ok(None)` once stored; `Ok(Some((version, json)))` when the cluster's document
/// moved on meanwhile, with the newest one the node could read (which may still lag), so the
/// change is made again on it.
pub type Publish = Arc<
    dyn Fn(
            u64,
            String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Option<(u64, String)>, Refused>> + Send>,
        > + Send
        + Sync,
>;

/// How often a change refused because another node's came first is made again on the newer
/// document before the client is told to retry.
const PUBLISH_ATTEMPTS: u32 = 8;

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("users", &self.snapshot().users.len())
            .finish()
    }
}

impl Auth {
    /// Opens `<data_dir>/auth.json`, creating it (with a new secret) when missing, and the
    /// bootstrap user when no user exists and a bootstrap password is configured. Blocking.
    pub fn open(cfg: &AuthConfig, data_dir: &Path, clock: Clock) -> anyhow::Result<Auth> {
        let path = data_dir.join("auth.json");
        let mut users = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<File>(&bytes)
                .map_err(anyhow::Error::from)
                .and_then(Users::from_file)
                .with_context(|| {
                    format!(
                        "{} is damaged; restore it from a backup, or move it away to start \
                         without users",
                        path.display()
                    )
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Users {
                secret: scram::random(),
                users: BTreeMap::new(),
                version: 0,
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut changed = !path.exists();
        if users.users.is_empty() {
            if let Some(pw) = &cfg.bootstrap_password {
                quiver_protocol::names::check_name("user", &cfg.bootstrap_user)
                    .map_err(anyhow::Error::msg)?;
                let verifier = Verifier::new(pw, Params::DEFAULT)?;
                users.users.insert(
                    cfg.bootstrap_user.clone(),
                    User {
                        role: Role::Super,
                        verifier,
                        created_ms: clock.now_ms(),
                        rules: Vec::new(),
                    },
                );
                tracing::info!(user = %cfg.bootstrap_user, "created the bootstrap super user");
                changed = true;
            }
        }
        if changed {
            write(&path, &users)?;
        }
        Ok(Auth {
            mode: cfg.mode,
            path,
            users: RwLock::new(Arc::new(users)),
            writer: tokio::sync::Mutex::new(()),
            clock,
            publish: std::sync::OnceLock::new(),
            throttle: throttle::Throttle::default(),
            audit: audit::Audit::default(),
        })
    }

    fn snapshot(&self) -> Arc<Users> {
        match self.users.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Makes every later change go through the cluster (see [`Publish`]).
    pub fn attach_cluster(&self, publish: Publish) {
        let _ = self.publish.set(publish);
    }

    /// The cluster's version of the users this node applies (0 before the first).
    pub fn cluster_version(&self) -> u64 {
        self.snapshot().version
    }

    /// Applies the cluster's document when it is newer than this node's: replaces the
    /// users and rules, and `auth.json`. Returns whether it changed anything.
    pub async fn adopt(&self, version: u64, json: &str) -> anyhow::Result<bool> {
        let _one = self.writer.lock().await;
        self.install(version, json).await
    }

    /// [`Auth::adopt`] under the writer lock the caller holds.
    async fn install(&self, version: u64, json: &str) -> anyhow::Result<bool> {
        if version <= self.snapshot().version {
            return Ok(false);
        }
        let mut next = serde_json::from_str::<File>(json)
            .map_err(anyhow::Error::from)
            .and_then(Users::from_file)
            .context("the cluster's users and rules do not parse")?;
        next.version = version;
        let next = Arc::new(next);
        let (path, to_write) = (self.path.clone(), next.clone());
        tokio::task::spawn_blocking(move || write(&path, &to_write)).await??;
        match self.users.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        tracing::info!(version, "applied the cluster's users and rules");
        Ok(true)
    }

    /// The configured mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// What identifies a user's current credentials (their `StoredKey`, new with every
    /// password and every fresh salt); None for no such user. Console sessions end when it
    /// changes.
    pub fn credential_stamp(&self, user: &str) -> Option<[u8; 32]> {
        self.snapshot()
            .users
            .get(user)
            .map(|u| u.verifier.stored_key)
    }

    /// How many users exist.
    pub fn user_count(&self) -> usize {
        self.snapshot().users.len()
    }

    /// Whether requests are checked: mode `on` and at least one user.
    pub fn enforced(&self) -> bool {
        self.mode == AuthMode::On && !self.snapshot().users.is_empty()
    }

    /// Refuses logins from `from` after too many failures from there (any connection).
    fn throttled(&self, from: IpAddr) -> Result<(), Refused> {
        if self.throttle.blocked(from, self.clock.now_ms()) {
            return Err(Refused::new(
                Status::AuthenticationFailed,
                format!(
                    "authentication failed: more than {} failed logins from this address in a \
                     minute; wait",
                    throttle::LIMIT
                ),
            ));
        }
        Ok(())
    }

    /// Step 1 of the handshake: the user's salt and costs (made up, the same every time,
    /// for an unknown user) and a fresh broker nonce. `from` is the peer's address.
    pub fn start(
        &self,
        login: &mut Login,
        req: &cmd::AuthStart,
        from: IpAddr,
    ) -> Result<cmd::AuthStartReply, Refused> {
        if login.failures >= MAX_FAILURES {
            return Err(Refused::new(
                Status::AuthenticationFailed,
                "authentication failed: too many failed attempts on this connection",
            ));
        }
        self.throttled(from)?;
        if req.user.len() > quiver_protocol::names::MAX_NAME_LEN {
            // No user has such a name; not kept for the connection either.
            login.failures += 1;
            return Err(Refused::new(Status::AuthenticationFailed, FAILED));
        }
        let users = self.snapshot();
        let verifier = users.users.get(&req.user).map(|u| u.verifier.clone());
        let (salt, params) = match &verifier {
            Some(v) => (v.salt, v.params),
            None => {
                let mac = scram::hmac(&users.secret, format!("salt:{}", req.user).as_bytes());
                let mut salt = [0u8; cmd::SALT_LEN];
                salt.copy_from_slice(&mac[..cmd::SALT_LEN]);
                (salt, Params::DEFAULT)
            }
        };
        let reply = cmd::AuthStartReply {
            mechanism: cmd::MECHANISM_SCRAM_ARGON2ID,
            salt,
            m_kib: params.m_kib,
            t: params.t,
            p: params.p,
            server_nonce: scram::random(),
        };
        let auth_message = scram::auth_message_of(req, &reply);
        login.pending = Some(Pending {
            user: req.user.clone(),
            verifier,
            auth_message,
        });
        Ok(reply)
    }

    /// Step 2: checks the proof against the AuthStart just answered (once: a proof is
    /// never checked twice) and logs the connection in.
    pub fn finish(
        &self,
        login: &mut Login,
        req: &cmd::AuthFinish,
        from: IpAddr,
    ) -> Result<cmd::AuthFinishReply, Refused> {
        let failed = || {
            self.throttle.failed(from, self.clock.now_ms());
            Refused::new(Status::AuthenticationFailed, FAILED)
        };
        let Some(p) = login.pending.take() else {
            login.failures += 1;
            return Err(failed());
        };
        // Checked again here: AuthStarts made on many connections before the failures
        // began must not each get their guess checked once the address is over its limit.
        if let Err(e) = self.throttled(from) {
            login.failures += 1;
            return Err(e);
        }
        match p.verifier {
            Some(v) if v.check_proof(&p.auth_message, &req.proof) => {
                self.audit_login(true, &p.user, from, "AuthFinish");
                login.user = Some(Arc::from(p.user.as_str()));
                Ok(cmd::AuthFinishReply {
                    server_signature: v.server_signature(&p.auth_message),
                })
            }
            _ => {
                login.failures += 1;
                self.audit_login(false, &p.user, from, "AuthFinish");
                Err(failed())
            }
        }
    }

    /// Checks a user name and password directly (the console's login form), from `from`.
    /// Runs argon2id: call it off async threads. Unknown users cost the same work. Counts
    /// toward, and obeys, the per-address limit on failed logins. Returns the credential
    /// stamp of the verifier the password matched ([`Auth::credential_stamp`]), so a
    /// password changed during the check ends the session it opens.
    pub fn check_password(
        &self,
        user: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<[u8; 32], Refused> {
        self.throttled(from)?;
        let matched = self.password_matches(user, password);
        self.audit_login(matched.is_some(), user, from, "console-login");
        if let Some(stamp) = matched {
            return Ok(stamp);
        }
        self.throttle.failed(from, self.clock.now_ms());
        Err(Refused::new(Status::AuthenticationFailed, FAILED))
    }

    /// The credential stamp of the verifier `password` matched, if it did.
    fn password_matches(&self, user: &str, password: &str) -> Option<[u8; 32]> {
        let users = self.snapshot();
        match users.users.get(user) {
            Some(u) => u
                .verifier
                .check_password(password)
                .then_some(u.verifier.stored_key),
            None => {
                let fake = Verifier {
                    salt: [0; cmd::SALT_LEN],
                    params: Params::DEFAULT,
                    stored_key: [0; cmd::KEY_LEN],
                    server_key: [0; cmd::KEY_LEN],
                };
                let _ = fake.check_password(password);
                None
            }
        }
    }

    /// Whether `caller` may do anything without a look at what it asks: checks off, a
    /// cluster node or the admin token, or no user yet and a caller on this machine. Lets
    /// the hot path skip working out what a request needs.
    pub fn unchecked(&self, caller: &Caller) -> bool {
        self.mode == AuthMode::Off
            || matches!(caller.who, Who::Member | Who::AdminToken)
            || (caller.remote.ip().is_loopback() && self.snapshot().users.is_empty())
    }

    /// Whether `caller` holds `need` (resolved: no [`Resource::Stored`]).
    pub fn check(&self, caller: &Caller, needs: &[Need]) -> Result<(), Refused> {
        if self.mode == AuthMode::Off || matches!(caller.who, Who::Member | Who::AdminToken) {
            return Ok(());
        }
        let users = self.snapshot();
        if users.users.is_empty() {
            if caller.remote.ip().is_loopback() {
                return Ok(());
            }
            return Err(denied(
                "this broker has no users yet and serves only its own machine: create the \
                 first user, a super user, from there (quiver admin user create NAME --super)",
            ));
        }
        let name = match &caller.who {
            Who::User(name) => name,
            _ => {
                return Err(denied(
                    "this broker requires a user: log in (AuthStart, command 3) before any \
                     other request",
                ))
            }
        };
        let Some(user) = users.users.get(&**name) else {
            return Err(denied(format!("user {name:?} does not exist (any more)")));
        };
        for need in needs {
            if !user.allows(need, caller.remote.ip()) {
                let what = actions::NAMES
                    .iter()
                    .filter(|(_, b)| need.actions & b != 0)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" or ");
                return Err(denied(format!(
                    "user {name:?} may not {what} on {}",
                    need.resource.label()
                )));
            }
        }
        Ok(())
    }

    /// Whether `caller` may do `action` on `resource` (filters lists and lookups).
    pub fn may(&self, caller: &Caller, action: u16, resource: Resource) -> bool {
        self.check(
            caller,
            &[Need {
                actions: action,
                resource,
            }],
        )
        .is_ok()
    }

    /// Writes a login to the audit log (`how`: the command or `console-login`).
    pub fn audit_login(&self, ok: bool, user: &str, from: IpAddr, how: &str) {
        let outcome = if ok {
            audit::Outcome::LoggedIn
        } else {
            audit::Outcome::LoginFailed
        };
        self.audit.record(
            self.clock.now_ms(),
            &audit::Event {
                outcome,
                who: user,
                from,
                command: how,
                resources: "",
                reason: "",
            },
        );
    }

    /// Writes a request to the audit log when it was refused (`refused` says why) or is an
    /// allowed change ([`perm::is_change`]). Cluster nodes' requests are not written.
    pub fn audit_request(
        &self,
        caller: &Caller,
        command: quiver_protocol::Command,
        needs: &[Need],
        change: bool,
        refused: Option<&str>,
    ) {
        if caller.who == Who::Member || (refused.is_none() && !change) {
            return;
        }
        let resources = needs
            .iter()
            .map(|n| n.resource.label())
            .collect::<Vec<_>>()
            .join(", ");
        let outcome = if refused.is_some() {
            audit::Outcome::Denied
        } else {
            audit::Outcome::Allowed
        };
        self.audit.record(
            self.clock.now_ms(),
            &audit::Event {
                outcome,
                who: audit::who(caller),
                from: caller.remote.ip(),
                command: &format!("{command:?}"),
                resources: &resources,
                reason: refused.unwrap_or(""),
            },
        );
    }

    /// Answers the user and rule commands (the caller has been checked for `admin`).
    pub async fn manage(&self, req: Request) -> Result<Response, Refused> {
        match req {
            Request::UserList(_) => {
                let users = self.snapshot();
                let list: Vec<_> = users
                    .users
                    .iter()
                    .map(|(name, u)| {
                        json!({
                            "name": name,
                            "role": u.role.name(),
                            "rules": u.rules.len(),
                            "created_ms": u.created_ms,
                        })
                    })
                    .collect();
                Ok(Response::UserList(cmd::JsonReply {
                    json: json!({ "users": list }).to_string(),
                }))
            }
            Request::AclList(l) => {
                let users = self.snapshot();
                if !l.user.is_empty() && !users.users.contains_key(&l.user) {
                    return Err(no_user(&l.user));
                }
                let list: Vec<_> = users
                    .users
                    .iter()
                    .filter(|(name, _)| l.user.is_empty() || **name == l.user)
                    .map(|(name, u)| {
                        json!({
                            "user": name,
                            "role": u.role.name(),
                            "rules": u.rules.iter().map(Rule::json).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                Ok(Response::AclList(cmd::JsonReply {
                    json: json!({ "users": list }).to_string(),
                }))
            }
            Request::UserCreate(c) => {
                quiver_protocol::names::check_name("user", &c.name)
                    .map_err(|e| Refused::new(Status::InvalidName, e))?;
                let verifier = verifier(&c.verifier)?;
                let now = self.clock.now_ms();
                self.change(|u| {
                    if u.users.contains_key(&c.name) {
                        return Err(Refused::new(
                            Status::UserExists,
                            format!("user {:?} already exists", c.name),
                        ));
                    }
                    if u.users.is_empty() && c.role != Role::Super {
                        return Err(bad(
                            "the first user must be a super user (--super): once a user \
                             exists, every request needs one",
                        ));
                    }
                    u.users.insert(
                        c.name.clone(),
                        User {
                            role: c.role,
                            verifier: verifier.clone(),
                            created_ms: now,
                            rules: Vec::new(),
                        },
                    );
                    Ok(())
                })
                .await?;
                tracing::info!(user = %c.name, role = c.role.name(), "user created");
                Ok(Response::UserCreate(cmd::Done))
            }
            Request::UserPassword(p) => {
                let verifier = verifier(&p.verifier)?;
                self.change(|u| {
                    let user = u.users.get_mut(&p.name).ok_or_else(|| no_user(&p.name))?;
                    user.verifier = verifier.clone();
                    Ok(())
                })
                .await?;
                tracing::info!(user = %p.name, "password changed");
                Ok(Response::UserPassword(cmd::Done))
            }
            Request::UserDelete(d) => {
                self.change(|u| {
                    let user = u.users.get(&d.name).ok_or_else(|| no_user(&d.name))?;
                    if user.role == Role::Super && u.supers() == 1 && u.users.len() > 1 {
                        return Err(bad(format!(
                            "{:?} is the last super user: create another one first",
                            d.name
                        )));
                    }
                    u.users.remove(&d.name);
                    Ok(())
                })
                .await?;
                tracing::info!(user = %d.name, "user deleted");
                Ok(Response::UserDelete(cmd::Done))
            }
            Request::AclGrant(g) => {
                let rule = Rule::parse(&g.rule).map_err(bad)?;
                self.change(|u| {
                    let user = u.users.get_mut(&g.user).ok_or_else(|| no_user(&g.user))?;
                    match user.rules.iter_mut().find(|r| same_rule(r, &rule)) {
                        Some(r) => r.actions |= rule.actions,
                        None => user.rules.push(rule.clone()),
                    }
                    Ok(())
                })
                .await?;
                tracing::info!(user = ?g.user, resource = ?g.rule.resource,
                    actions = %actions::names(g.rule.actions), decision = g.rule.decision.name(), "rule granted");
                Ok(Response::AclGrant(cmd::Done))
            }
            Request::AclRevoke(g) => {
                let rule = Rule::parse(&g.rule).map_err(bad)?;
                self.change(|u| {
                    let user = u.users.get_mut(&g.user).ok_or_else(|| no_user(&g.user))?;
                    let Some(i) = user.rules.iter().position(|r| same_rule(r, &rule)) else {
                        return Err(Refused::new(
                            Status::NotFound,
                            format!(
                                "user {:?} has no {} rule on {}{}",
                                g.user,
                                rule.decision.name(),
                                rule.resource,
                                rule.source
                                    .map(|s| format!(" from {s}"))
                                    .unwrap_or_default()
                            ),
                        ));
                    };
                    user.rules[i].actions &= !rule.actions;
                    if user.rules[i].actions == 0 {
                        user.rules.remove(i);
                    }
                    Ok(())
                })
                .await?;
                Ok(Response::AclRevoke(cmd::Done))
            }
            other => Err(bad(format!("{:?} is not a user command", other.command()))),
        }
    }

    /// Applies `f` to a copy of the users, writes the file, then publishes the copy.
    /// Applies `f` to the users and stores the result: in a cluster through the controller,
    /// where a change another node made first makes this one be made again on the newer
    /// document (so `f` may run more than once, and its checks see the newest users).
    async fn change(&self, f: impl Fn(&mut Users) -> Result<(), Refused>) -> Result<(), Refused> {
        let _one = self.writer.lock().await;
        let mut attempts = 0;
        let next = loop {
            let mut next = (*self.snapshot()).clone();
            f(&mut next)?;
            let Some(publish) = self.publish.get() else {
                break next;
            };
            let expect = next.version;
            next.version = expect + 1;
            let json = serde_json::to_string(&next.to_file())
                .map_err(|e| Refused::new(Status::Internal, e.to_string()))?;
            let Some((version, newer)) = publish(expect, json).await? else {
                break next;
            };
            attempts += 1;
            if attempts >= PUBLISH_ATTEMPTS {
                return Err(Refused::new(
                    Status::Busy,
                    "users and rules keep changing on other nodes meanwhile; retry",
                ));
            }
            let installed = self.install(version, &newer).await.map_err(|e| {
                Refused::new(
                    Status::Internal,
                    format!("the cluster's users and rules: {e:#}"),
                )
            })?;
            if !installed {
                // The node read a document no newer than its own: its controller's copy
                // lags the leader's for a moment.
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempts.min(4))).await;
            }
        };
        let path = self.path.clone();
        let next = Arc::new(next);
        let to_write = next.clone();
        tokio::task::spawn_blocking(move || write(&path, &to_write))
            .await
            .map_err(|e| Refused::new(Status::Internal, format!("auth write task: {e}")))?
            .map_err(|e| Refused::new(Status::Internal, format!("{e:#}")))?;
        match self.users.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        Ok(())
    }
}

fn same_rule(a: &Rule, b: &Rule) -> bool {
    a.resource == b.resource && a.decision == b.decision && a.source == b.source
}

fn no_user(name: &str) -> Refused {
    Refused::new(Status::UserNotFound, format!("no user {name:?}"))
}

fn verifier(v: &cmd::WireVerifier) -> Result<Verifier, Refused> {
    let params = Params {
        m_kib: v.m_kib,
        t: v.t,
        p: v.p,
    };
    params.check().map_err(bad)?;
    Ok(Verifier {
        salt: v.salt,
        params,
        stored_key: v.stored_key,
        server_key: v.server_key,
    })
}

/// Writes `auth.json` atomically and durably (owner-only permissions).
fn write(path: &Path, users: &Users) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(&users.to_file())?;
    crate::store::durable::write_file(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
