//! Authentication (the password handshake) and the management of users and their access
//! rules (docs/PROTOCOL.md §5.1, §6.35 to §6.37, docs/SECURITY.md).

use bytes::{BufMut, BytesMut};

use super::{call, Done, WireDecode, WireEncode};
use crate::wire::{DecodeError, Reader, WriteExt};

/// Bytes of a salt.
pub const SALT_LEN: usize = 16;
/// Bytes of a client or server nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a key, proof or signature.
pub const KEY_LEN: usize = 32;
/// The only mechanism: SCRAM-SHA-256 with argon2id as its salting function.
pub const MECHANISM_SCRAM_ARGON2ID: u8 = 1;

fn fixed<const N: usize>(r: &mut Reader, field: &'static str) -> Result<[u8; N], DecodeError> {
    let b = r.bytes(N, field)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&b);
    Ok(out)
}

/// Step 1 of the password handshake: who logs in, and the client's fresh random nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStart {
    /// The user name.
    pub user: String,
    /// 32 random bytes, new for every handshake.
    pub client_nonce: [u8; NONCE_LEN],
}

/// The broker's challenge: the user's salt and argon2id costs, and the broker's nonce. An
/// unknown user gets a made-up salt that is always the same for that name, so this answer
/// does not tell whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStartReply {
    /// [`MECHANISM_SCRAM_ARGON2ID`].
    pub mechanism: u8,
    /// The user's salt.
    pub salt: [u8; SALT_LEN],
    /// argon2id memory in KiB.
    pub m_kib: u32,
    /// argon2id passes.
    pub t: u32,
    /// argon2id lanes.
    pub p: u32,
    /// 32 random bytes from the broker, new for every AuthStart.
    pub server_nonce: [u8; NONCE_LEN],
}

/// Step 2: the client's proof that it knows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFinish {
    /// `ClientKey XOR HMAC(StoredKey, AuthMessage)`.
    pub proof: [u8; KEY_LEN],
}

/// The handshake succeeded: the broker's signature, which proves it holds the user's
/// verifier (the client should check it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFinishReply {
    /// `HMAC(ServerKey, AuthMessage)`.
    pub server_signature: [u8; KEY_LEN],
}

call!(AuthStart => AuthStartReply, AuthStart);
call!(AuthFinish => AuthFinishReply, AuthFinish);

impl WireEncode for AuthStart {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.user);
        b.put_slice(&self.client_nonce);
    }
}

impl WireDecode for AuthStart {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuthStart {
            user: r.str16("user")?,
            client_nonce: fixed(r, "client nonce")?,
        })
    }
}

impl WireEncode for AuthStartReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u8(self.mechanism);
        b.put_slice(&self.salt);
        b.put_u32_le(self.m_kib);
        b.put_u32_le(self.t);
        b.put_u32_le(self.p);
        b.put_slice(&self.server_nonce);
    }
}

impl WireDecode for AuthStartReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuthStartReply {
            mechanism: r.u8("mechanism")?,
            salt: fixed(r, "salt")?,
            m_kib: r.u32("argon2 memory")?,
            t: r.u32("argon2 passes")?,
            p: r.u32("argon2 lanes")?,
            server_nonce: fixed(r, "server nonce")?,
        })
    }
}

impl WireEncode for AuthFinish {
    fn encode(&self, b: &mut BytesMut) {
        b.put_slice(&self.proof);
    }
}

impl WireDecode for AuthFinish {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuthFinish {
            proof: fixed(r, "proof")?,
        })
    }
}

impl WireEncode for AuthFinishReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_slice(&self.server_signature);
    }
}

impl WireDecode for AuthFinishReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuthFinishReply {
            server_signature: fixed(r, "server signature")?,
        })
    }
}

/// What a broker stores to check a user's password (computed by the client from the
/// password; the password itself is never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireVerifier {
    /// Random salt.
    pub salt: [u8; SALT_LEN],
    /// argon2id memory in KiB.
    pub m_kib: u32,
    /// argon2id passes.
    pub t: u32,
    /// argon2id lanes.
    pub p: u32,
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl WireVerifier {
    fn put(&self, b: &mut BytesMut) {
        b.put_slice(&self.salt);
        b.put_u32_le(self.m_kib);
        b.put_u32_le(self.t);
        b.put_u32_le(self.p);
        b.put_slice(&self.stored_key);
        b.put_slice(&self.server_key);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireVerifier {
            salt: fixed(r, "salt")?,
            m_kib: r.u32("argon2 memory")?,
            t: r.u32("argon2 passes")?,
            p: r.u32("argon2 lanes")?,
            stored_key: fixed(r, "stored key")?,
            server_key: fixed(r, "server key")?,
        })
    }
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Allowed what its rules allow (nothing by default).
    Normal = 0,
    /// Allowed everything; rules do not apply.
    Super = 1,
}

impl Role {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Role::Normal),
            1 => Ok(Role::Super),
            _ => Err(DecodeError::Invalid {
                field: "role",
                reason: format!("{v} (0 = normal, 1 = super)"),
            }),
        }
    }

    /// The name used in JSON and by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Role::Normal => "normal",
            Role::Super => "super",
        }
    }
}

/// Create a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCreate {
    /// The user name (§9.1's rules for names).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its password verifier.
    pub verifier: WireVerifier,
}

/// Replace a user's password verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPassword {
    /// The user name.
    pub name: String,
    /// The new verifier.
    pub verifier: WireVerifier,
}

/// Delete a user and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDelete {
    /// The user name.
    pub name: String,
}

/// List users (name, role, rule count). No body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserList;

/// A UTF-8 JSON document (u32 length, then the bytes): the replies of UserList and AclList.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonReply {
    /// The JSON text.
    pub json: String,
}

call!(UserCreate => Done, UserCreate);
call!(UserPassword => Done, UserPassword);
call!(UserDelete => Done, UserDelete);
call!(UserList => JsonReply, UserList);

impl WireEncode for UserCreate {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        b.put_u8(self.role as u8);
        self.verifier.put(b);
    }
}

impl WireDecode for UserCreate {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(UserCreate {
            name: r.str16("user")?,
            role: Role::from_u8(r.u8("role")?)?,
            verifier: WireVerifier::get(r)?,
        })
    }
}

impl WireEncode for UserPassword {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
        self.verifier.put(b);
    }
}

impl WireDecode for UserPassword {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(UserPassword {
            name: r.str16("user")?,
            verifier: WireVerifier::get(r)?,
        })
    }
}

impl WireEncode for UserDelete {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.name);
    }
}

impl WireDecode for UserDelete {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(UserDelete {
            name: r.str16("user")?,
        })
    }
}

impl WireEncode for UserList {
    fn encode(&self, _: &mut BytesMut) {}
}

impl WireDecode for UserList {
    fn decode(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(UserList)
    }
}

impl WireEncode for JsonReply {
    fn encode(&self, b: &mut BytesMut) {
        b.put_u32_le(self.json.len() as u32);
        b.put_slice(self.json.as_bytes());
    }
}

impl WireDecode for JsonReply {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("json length")? as usize;
        let bytes = r.bytes(n, "json")?;
        let json = std::str::from_utf8(&bytes)
            .map_err(|_| DecodeError::Utf8("json"))?
            .to_string();
        Ok(JsonReply { json })
    }
}

/// What an access rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allow the actions.
    Allow = 0,
    /// Deny the actions (a matching deny wins over any allow).
    Deny = 1,
}

impl Decision {
    /// `allow` or `deny`.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Action bits of a rule (docs/SECURITY.md §3).
pub mod actions {
    /// Send messages to a topic (Send, SendSpecial, transaction decisions).
    pub const SEND: u16 = 1;
    /// Read a topic or be a member of a group (Pull, Heartbeat, offsets, SendBack).
    pub const CONSUME: u16 = 2;
    /// Create a topic.
    pub const CREATE: u16 = 4;
    /// Change a topic's queue count, move a group's offsets, resend dead letters.
    pub const UPDATE: u16 = 8;
    /// Delete a topic or a group.
    pub const DELETE: u16 = 16;
    /// See a topic or group: describe, list, look up messages; the cluster: status.
    pub const DESCRIBE: u16 = 32;
    /// Load, reload, unload, attach and detach WebAssembly plugins.
    pub const PLUGIN: u16 = 64;
    /// Manage users and rules; controller voters and master elections.
    pub const ADMIN: u16 = 128;
    /// Every action.
    pub const ALL: u16 = 255;
    /// The names, in bit order.
    pub const NAMES: [(&str, u16); 8] = [
        ("send", SEND),
        ("consume", CONSUME),
        ("create", CREATE),
        ("update", UPDATE),
        ("delete", DELETE),
        ("describe", DESCRIBE),
        ("plugin", PLUGIN),
        ("admin", ADMIN),
    ];

    /// Parses `send,consume` (or `all`) into bits.
    pub fn parse(text: &str) -> Result<u16, String> {
        let mut bits = 0;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word.eq_ignore_ascii_case("all") {
                bits |= ALL;
                continue;
            }
            match NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(word)) {
                Some((_, b)) => bits |= b,
                None => {
                    return Err(format!(
                        "unknown action {word:?}; use send, consume, create, update, delete, \
                         describe, plugin, admin or all"
                    ))
                }
            }
        }
        if bits == 0 {
            return Err("no action given".into());
        }
        Ok(bits)
    }

    /// The names of the bits set, comma-separated (`all` for every bit).
    pub fn names(bits: u16) -> String {
        if bits & ALL == ALL {
            return "all".into();
        }
        NAMES
            .iter()
            .filter(|(_, b)| bits & b != 0)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One access rule: on which resources, which actions, allowed or denied, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// `topic:NAME`, `topic:PREFIX*`, `group:NAME`, `group:PREFIX*`, `cluster`, or `*`.
    pub resource: String,
    /// [`actions`] bits.
    pub actions: u16,
    /// Allow or deny.
    pub decision: Decision,
    /// Where requests must come from: an address or CIDR range (`10.0.0.0/8`); empty for
    /// anywhere.
    pub source: String,
}

impl AclRule {
    fn put(&self, b: &mut BytesMut) {
        b.put_str16(&self.resource);
        b.put_u16_le(self.actions);
        b.put_u8(self.decision as u8);
        b.put_str16(&self.source);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let resource = r.str16("resource")?;
        let actions = r.u16("actions")?;
        let decision = match r.u8("decision")? {
            0 => Decision::Allow,
            1 => Decision::Deny,
            v => {
                return Err(DecodeError::Invalid {
                    field: "decision",
                    reason: format!("{v} (0 = allow, 1 = deny)"),
                })
            }
        };
        Ok(AclRule {
            resource,
            actions,
            decision,
            source: r.str16("source")?,
        })
    }
}

/// Add a rule to a user (or widen the actions of its rule with the same resource, decision
/// and source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclGrant {
    /// The user.
    pub user: String,
    /// The rule.
    pub rule: AclRule,
}

/// Remove actions from a user's rule with the same resource, decision and source (the
/// rule goes when no action is left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRevoke {
    /// The user.
    pub user: String,
    /// The rule whose actions are removed.
    pub rule: AclRule,
}

/// A user's rules as JSON (every user's when `user` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclList {
    /// The user, or empty for all.
    pub user: String,
}

call!(AclGrant => Done, AclGrant);
call!(AclRevoke => Done, AclRevoke);
call!(AclList => JsonReply, AclList);

impl WireEncode for AclGrant {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.user);
        self.rule.put(b);
    }
}

impl WireDecode for AclGrant {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AclGrant {
            user: r.str16("user")?,
            rule: AclRule::get(r)?,
        })
    }
}

impl WireEncode for AclRevoke {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.user);
        self.rule.put(b);
    }
}

impl WireDecode for AclRevoke {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AclRevoke {
            user: r.str16("user")?,
            rule: AclRule::get(r)?,
        })
    }
}

impl WireEncode for AclList {
    fn encode(&self, b: &mut BytesMut) {
        b.put_str16(&self.user);
    }
}

impl WireDecode for AclList {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AclList {
            user: r.str16("user")?,
        })
    }
}
