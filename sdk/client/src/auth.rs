//! Logging in with a user and password: the password handshake (docs/PROTOCOL.md §5.1) the
//! client runs after Hello on every new connection, and where credentials come from.

use std::path::Path;

use quiver_protocol::cmd::{AuthFinish, AuthFinishReply, AuthStart, AuthStartReply};
use quiver_protocol::scram::{self, Params, Verifier};

use crate::error::ClientError;

/// A user name and password. The password stays in this process: only a proof derived
/// from it (argon2id, then SCRAM-SHA-256) is sent. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `QUIVER_USER` and `QUIVER_PASSWORD` from the environment, when both are set.
    pub fn from_env() -> Option<Self> {
        let user = std::env::var("QUIVER_USER")
            .ok()
            .filter(|u| !u.is_empty())?;
        let password = std::env::var("QUIVER_PASSWORD").ok()?;
        Some(Self::new(user, password))
    }

    /// A credentials file: two lines `user = "NAME"` and `password = "SECRET"` (TOML;
    /// `#` starts a comment). Keep it readable by its owner only.
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "cannot read the credentials file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| {
            ClientError::InvalidArgument(format!("credentials file {}: {e}", path.display()))
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let (mut user, mut password) = (None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected key = \"value\"", n + 1))?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            if value.contains(['"', '\\']) {
                return Err(format!(
                    "line {}: quotes and backslashes inside a value are not supported",
                    n + 1
                ));
            }
            match key.trim() {
                "user" => user = Some(value.to_string()),
                "password" => password = Some(value.to_string()),
                other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
            }
        }
        match (user, password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Self::new(u, p)),
            _ => Err("needs both user and password".into()),
        }
    }

    /// The verifier a broker stores for this password (`quiver admin user create`): a new
    /// random salt, argon2id with `params`. CPU- and memory-hard: run it off async threads.
    pub fn verifier(&self, params: Params) -> Result<Verifier, ClientError> {
        Verifier::new(&self.password, params)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))
    }
}

/// The client's side of one handshake: the AuthStart to send, then the proof for the
/// broker's challenge, then the check of the broker's signature.
pub(crate) struct Handshake {
    start: AuthStart,
}

/// A proof ready to send, and what the broker's answer must be.
pub(crate) struct Proof {
    pub(crate) finish: AuthFinish,
    expected: [u8; scram::KEY_LEN],
}

impl Handshake {
    pub(crate) fn new(user: &str) -> Self {
        Self {
            start: AuthStart {
                user: user.to_string(),
                client_nonce: scram::random(),
            },
        }
    }

    pub(crate) fn start(&self) -> &AuthStart {
        &self.start
    }

    /// The proof for the broker's challenge, from the salted password (`salted` computes
    /// it for a salt and costs; the caller caches it across reconnections).
    pub(crate) fn prove(&self, reply: &AuthStartReply, salted: [u8; scram::KEY_LEN]) -> Proof {
        let am = scram::auth_message_of(&self.start, reply);
        Proof {
            finish: AuthFinish {
                proof: scram::client_proof(&salted, &am),
            },
            expected: scram::hmac(&scram::server_key(&salted), &am),
        }
    }
}

impl Proof {
    /// Checks the broker's signature: only a broker holding this user's verifier can make it.
    pub(crate) fn check(&self, reply: &AuthFinishReply) -> Result<(), ClientError> {
        if reply.server_signature == self.expected {
            Ok(())
        } else {
            Err(ClientError::Protocol(
                "the broker's authentication signature is wrong: it does not hold this user's \
                 verifier (a wrong or impersonated broker)"
                    .into(),
            ))
        }
    }
}

/// The argon2id costs of a challenge, refused when outside [`Params::MAX`] (a hostile
/// broker must not make the client allocate gigabytes).
pub(crate) fn challenge_params(reply: &AuthStartReply) -> Result<Params, ClientError> {
    let p = Params {
        m_kib: reply.m_kib,
        t: reply.t,
        p: reply.p,
    };
    if reply.mechanism != quiver_protocol::cmd::MECHANISM_SCRAM_ARGON2ID {
        return Err(ClientError::Protocol(format!(
            "the broker asks for authentication mechanism {}, which this client does not know",
            reply.mechanism
        )));
    }
    p.check()
        .map_err(|e| ClientError::Protocol(format!("the broker's challenge: {e}")))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_and_debug() {
        let c = Credentials::parse("# mine\nuser = \"alice\"\npassword = 's3 cret'\n").unwrap();
        assert_eq!(c, Credentials::new("alice", "s3 cret"));
        assert!(!format!("{c:?}").contains("s3"));
        assert!(Credentials::parse("user = alice\n").is_err());
        assert!(Credentials::parse("user = alice\npassword = x\ncolour = red\n").is_err());
    }
}
