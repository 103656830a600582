//! The computations of the password handshake (docs/PROTOCOL.md §5.1): SCRAM-SHA-256
//! (RFC 5802, RFC 7677) with argon2id as the salting function instead of PBKDF2.
//!
//! - `SaltedPassword = argon2id(password, salt, m, t, p)`, 32 bytes, version 0x13;
//! - `ClientKey = HMAC(SaltedPassword, "Client Key")`, `StoredKey = SHA-256(ClientKey)`,
//!   `ServerKey = HMAC(SaltedPassword, "Server Key")`;
//! - `AuthMessage = "quiver-scram-1" ‖ AuthStart request body ‖ AuthStart reply body`;
//! - `ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)`;
//! - `ServerSignature = HMAC(ServerKey, AuthMessage)`.
//!
//! The broker keeps only the salt, the argon2 parameters, `StoredKey` and `ServerKey`
//! ([`Verifier`]): neither the password nor anything that lets a reader of the broker's
//! files log in. The password never crosses the wire; a proof is bound to the broker's
//! fresh nonce, so a recorded handshake cannot be replayed.

use ring::{digest, hmac};

pub use crate::cmd::{KEY_LEN, NONCE_LEN, SALT_LEN};
/// The domain-separation prefix of every AuthMessage.
pub const AUTH_MESSAGE_PREFIX: &[u8] = b"quiver-scram-1";

/// argon2id costs: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Memory in KiB (`m`).
    pub m_kib: u32,
    /// Passes (`t`).
    pub t: u32,
    /// Lanes (`p`).
    pub p: u32,
}

impl Params {
    /// OWASP's recommended minimum for argon2id (19 MiB, 2 passes, 1 lane): tens of
    /// milliseconds per login.
    pub const DEFAULT: Params = Params {
        m_kib: 19_456,
        t: 2,
        p: 1,
    };
    /// The largest costs a client computes and a broker stores (a hostile broker must not
    /// make its clients allocate gigabytes): 256 MiB, 16 passes, 16 lanes.
    pub const MAX: Params = Params {
        m_kib: 262_144,
        t: 16,
        p: 16,
    };

    /// Whether argon2 accepts these costs and they are within [`Params::MAX`].
    pub fn check(&self) -> Result<(), String> {
        if self.p == 0 || self.p > Self::MAX.p {
            return Err(format!("argon2 lanes p={} (1 to {})", self.p, Self::MAX.p));
        }
        if self.t == 0 || self.t > Self::MAX.t {
            return Err(format!("argon2 passes t={} (1 to {})", self.t, Self::MAX.t));
        }
        if self.m_kib < 8 * self.p || self.m_kib > Self::MAX.m_kib {
            return Err(format!(
                "argon2 memory m={} KiB (8 x p to {})",
                self.m_kib,
                Self::MAX.m_kib
            ));
        }
        Ok(())
    }
}

/// Why a key could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The argon2 parameters are out of range.
    #[error("unusable password-hash parameters: {0}")]
    Params(String),
}

/// `SaltedPassword`: argon2id of the password (CPU- and memory-hard: run it off async
/// threads).
pub fn salted_password(
    password: &str,
    salt: &[u8],
    params: Params,
) -> Result<[u8; KEY_LEN], ScramError> {
    params.check().map_err(ScramError::Params)?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN))
        .map_err(|e| ScramError::Params(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; KEY_LEN];
    a.hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|e| ScramError::Params(e.to_string()))?;
    Ok(out)
}

/// HMAC-SHA-256.
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(hmac::sign(&k, data).as_ref());
    out
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// `ClientKey` from `SaltedPassword`.
pub fn client_key(salted: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    hmac(salted, b"Client Key")
}

/// `ServerKey` from `SaltedPassword`.
pub fn server_key(salted: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    hmac(salted, b"Server Key")
}

/// `AuthMessage` from the AuthStart request and reply bodies, as they were on the wire.
pub fn auth_message(start_request: &[u8], start_reply: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_MESSAGE_PREFIX.len() + start_request.len() + 64);
    m.extend_from_slice(AUTH_MESSAGE_PREFIX);
    m.extend_from_slice(start_request);
    m.extend_from_slice(start_reply);
    m
}

/// Equality in time that does not depend on where the keys differ.
fn same(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `AuthMessage` of an AuthStart and the broker's reply to it (their bodies as the wire
/// carries them).
pub fn auth_message_of(
    start: &crate::cmd::AuthStart,
    reply: &crate::cmd::AuthStartReply,
) -> Vec<u8> {
    use crate::WireEncode;
    let (mut a, mut b) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    start.encode(&mut a);
    reply.encode(&mut b);
    auth_message(&a, &b)
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// The client's proof for `auth_message`, from its `SaltedPassword`.
pub fn client_proof(salted: &[u8; KEY_LEN], auth_message: &[u8]) -> [u8; KEY_LEN] {
    let ck = client_key(salted);
    let stored = sha256(&ck);
    xor(&ck, &hmac(&stored, auth_message))
}

/// What the broker stores for a user: enough to check a proof and to sign its answer,
/// not enough to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// The user's random salt.
    pub salt: [u8; SALT_LEN],
    /// The argon2id costs.
    pub params: Params,
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl Verifier {
    /// The verifier of `password` with a given salt (argon2id: run it off async threads).
    pub fn derive(
        password: &str,
        salt: [u8; SALT_LEN],
        params: Params,
    ) -> Result<Verifier, ScramError> {
        let salted = salted_password(password, &salt, params)?;
        Ok(Verifier {
            salt,
            params,
            stored_key: sha256(&client_key(&salted)),
            server_key: server_key(&salted),
        })
    }

    /// The verifier of `password` with a fresh random salt.
    pub fn new(password: &str, params: Params) -> Result<Verifier, ScramError> {
        Self::derive(password, random(), params)
    }

    /// Checks a client's proof in constant time.
    pub fn check_proof(&self, auth_message: &[u8], proof: &[u8; KEY_LEN]) -> bool {
        let signature = hmac(&self.stored_key, auth_message);
        let client_key = xor(proof, &signature);
        same(&sha256(&client_key), &self.stored_key)
    }

    /// Checks a password directly (the web console's login form): argon2id again, then
    /// the same comparison a proof gets.
    pub fn check_password(&self, password: &str) -> bool {
        match salted_password(password, &self.salt, self.params) {
            Ok(salted) => same(&sha256(&client_key(&salted)), &self.stored_key),
            Err(_) => false,
        }
    }

    /// The broker's signature for `auth_message` (proves to the client that the broker
    /// holds this user's verifier).
    pub fn server_signature(&self, auth_message: &[u8]) -> [u8; KEY_LEN] {
        hmac(&self.server_key, auth_message)
    }
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // SystemRandom fails only when the OS has no randomness at all; then nothing here is safe.
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Params = Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn a_proof_from_the_right_password_is_accepted_and_nothing_else_is() {
        let v = Verifier::derive("s3cret", [7; SALT_LEN], CHEAP).unwrap();
        let am = auth_message(b"request", b"reply");
        let salted = salted_password("s3cret", &v.salt, CHEAP).unwrap();
        let proof = client_proof(&salted, &am);
        assert!(v.check_proof(&am, &proof));
        // Another handshake (another nonce in the reply): the recorded proof fails.
        assert!(!v.check_proof(&auth_message(b"request", b"reply2"), &proof));
        let wrong = salted_password("s3creT", &v.salt, CHEAP).unwrap();
        assert!(!v.check_proof(&am, &client_proof(&wrong, &am)));
        assert!(v.check_password("s3cret"));
        assert!(!v.check_password("s3cret "));
        // The client checks the broker's signature with its own ServerKey.
        assert_eq!(
            v.server_signature(&am),
            hmac(&server_key(&salted), &am),
            "server signature"
        );
    }

    #[test]
    fn costs_outside_the_limits_are_refused_before_any_work() {
        for bad in [
            Params { m_kib: 7, ..CHEAP },
            Params { t: 0, ..CHEAP },
            Params { p: 0, ..CHEAP },
            Params {
                m_kib: Params::MAX.m_kib + 1,
                ..CHEAP
            },
            Params { t: 17, ..CHEAP },
        ] {
            assert!(
                salted_password("x", &[0; SALT_LEN], bad).is_err(),
                "{bad:?}"
            );
        }
        Params::DEFAULT.check().unwrap();
    }
}
