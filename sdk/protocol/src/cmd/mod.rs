//! Commands as values: every request is its own struct that encodes and decodes itself, and
//! names the reply it gets ([`Call`]). One family of commands per file; the table at the
//! bottom of this file turns them into the [`Request`] and [`Response`] enums a broker or a
//! generic client matches on.
//!
//! Adding a command: its code in [`Command`], its request and reply structs with
//! [`WireEncode`], [`WireDecode`] and [`Call`] in a file here, one line in the table, and one
//! handler in the broker.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codes::{Command, Status};
use crate::frame::{finish_frame, FrameError, FrameHeader};
use crate::wire::{DecodeError, Reader};

mod auth;
mod cluster;
mod groups;
mod hello;
mod lookup;
mod offsets;
mod plugins;
mod pull;
mod replies;
mod retry;
mod send;
mod special;
mod status;
mod topics;

pub use auth::{
    actions, AclGrant, AclList, AclRevoke, AclRule, AuthFinish, AuthFinishReply, AuthStart,
    AuthStartReply, Decision, JsonReply, Role, UserCreate, UserDelete, UserList, UserPassword,
    WireVerifier, KEY_LEN, MECHANISM_SCRAM_ARGON2ID, NONCE_LEN, SALT_LEN,
};
pub use cluster::{
    ClusterBroker, ClusterElect, ClusterInfo, ClusterInfoReply, ClusterSet, ClusterVoter,
    ControllerNode, EpochStart, Raft, RaftKind, RaftReply, ReplicaChunk, ReplicaFetch, ReplicaLag,
    ReplicaState, ReplicaStateReply, RouteSet, TopicCreateOn, TopicRoute, TopicRouteReply,
    MAX_EPOCH_ENTRIES, MAX_RAFT_BODY, MAX_REPLICA_CHUNK, MAX_REPLICA_STATE, MAX_WANTED_MODULES,
};
pub use groups::{
    GroupDelete, GroupDescribe, GroupList, GroupListReply, GroupReply, GroupResetOffset, Heartbeat,
    HeartbeatReply, LeaveGroup,
};
pub use hello::{Hello, HelloReply, Route, RouteReply};
pub use lookup::{MessageById, MessageByKey};
pub use offsets::{CommitOffset, FetchOffset, OffsetForTime, OffsetReply};
pub use plugins::{
    PluginAttach, PluginDescribe, PluginDetach, PluginList, PluginLoad, PluginReload, PluginUnload,
    PluginsReply,
};
pub use pull::{Pull, PullReply};
pub use replies::{CountReply, Done, Records};
pub use retry::{DlqResend, SendBack, SentBackReply};
pub use send::{Send, SendReply};
pub use special::{CancelScheduled, EndTransaction, PollTransactionChecks, SendSpecial};
pub use status::{BrokerStatus, BrokerStatusReply};
pub use topics::{
    TopicCreate, TopicDelete, TopicDescribe, TopicList, TopicListReply, TopicReply, TopicUpdate,
};

/// Writes a value's wire layout (a frame body, without the header).
pub trait WireEncode {
    /// Appends the body's bytes.
    fn encode(&self, b: &mut BytesMut);

    /// Shared buffers sent after the body without copying (stored records); part of the body
    /// on the wire.
    fn tail(&self) -> &[Bytes] {
        &[]
    }
}

/// Reads a value's wire layout; every malformed input is a [`DecodeError`], never a panic.
pub trait WireDecode: Sized {
    /// Reads the value from `r` (the caller checks that nothing is left over).
    fn decode(r: &mut Reader) -> Result<Self, DecodeError>;
}

/// A request: its command code and the reply a broker sends when it succeeds.
pub trait Call: WireEncode + WireDecode + Into<Request> {
    /// The command code in the frame header.
    const COMMAND: Command;
    /// The successful reply (errors travel as a status and a message instead).
    type Reply: WireEncode + WireDecode;

    /// How long the broker may park this request before answering (long poll), in ms: a
    /// client waits this much longer than its usual request timeout.
    fn wait_ms(&self) -> u32 {
        0
    }
}

/// The whole request frame (header and body) for one command.
pub fn encode_request<C: Call>(call: &C) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u32_le(0);
    b.put_u16_le(C::COMMAND as u16);
    b.put_u16_le(0);
    call.encode(&mut b);
    finish_frame(b)
}

/// A successful response frame as chunks, header first, so stored records go out without
/// being copied.
pub fn encode_reply<R: WireEncode + ?Sized>(cmd: Command, reply: &R) -> Vec<Bytes> {
    let mut b = BytesMut::with_capacity(64);
    b.put_u32_le(0);
    b.put_u16_le(Status::Ok as u16);
    b.put_u16_le(cmd as u16);
    reply.encode(&mut b);
    let tail = reply.tail();
    let total = b.len() - 4 + tail.iter().map(Bytes::len).sum::<usize>();
    b[0..4].copy_from_slice(&(total as u32).to_le_bytes());
    let mut chunks = Vec::with_capacity(1 + tail.len());
    chunks.push(b.freeze());
    chunks.extend(tail.iter().cloned());
    chunks
}

/// Decodes a whole body as one value: bytes left over are an error.
pub fn decode_body<T: WireDecode>(body: Bytes) -> Result<T, DecodeError> {
    let mut r = Reader::new(body);
    let value = T::decode(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Implements [`Call`] for a request type.
macro_rules! call {
    ($req:ty => $reply:ty, $cmd:ident) => {
        impl $crate::cmd::Call for $req {
            const COMMAND: $crate::codes::Command = $crate::codes::Command::$cmd;
            type Reply = $reply;
        }
    };
}
pub(crate) use call;

/// Builds [`Request`] and [`Response`] from the table of commands.
macro_rules! commands {
    ($($variant:ident($req:ty),)*) => {
        /// Every request a client can make: one variant per command, holding its struct.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $(
                #[doc = concat!("[`", stringify!($req), "`]")]
                $variant($req),
            )*
        }

        /// Every successful response: one variant per command, holding that command's
        /// reply. Errors travel as a status and a message instead.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Response {
            $(
                #[doc = concat!("The reply to [`", stringify!($req), "`]")]
                $variant(<$req as Call>::Reply),
            )*
        }

        $(
            impl From<$req> for Request {
                fn from(c: $req) -> Self {
                    Request::$variant(c)
                }
            }
        )*

        impl Request {
            /// The command code.
            pub fn command(&self) -> Command {
                match self {
                    $(Request::$variant(_) => <$req as Call>::COMMAND,)*
                }
            }

            /// The whole frame (header and body).
            pub fn encode(&self) -> Bytes {
                match self {
                    $(Request::$variant(c) => encode_request(c),)*
                }
            }

            /// How long the broker may park this request (see [`Call::wait_ms`]).
            pub fn wait_ms(&self) -> u32 {
                match self {
                    $(Request::$variant(c) => c.wait_ms(),)*
                }
            }

            /// Decodes a request body for `header.code`.
            pub fn decode(header: &FrameHeader, body: Bytes) -> Result<Self, FrameError> {
                let cmd = Command::from_u16(header.code)
                    .ok_or(FrameError::UnknownCommand(header.code))?;
                $(
                    if cmd == <$req as Call>::COMMAND {
                        return Ok(Request::$variant(decode_body(body)?));
                    }
                )*
                Err(FrameError::UnknownCommand(header.code))
            }
        }

        impl Response {
            /// The command this answers.
            pub fn command(&self) -> Command {
                match self {
                    $(Response::$variant(_) => <$req as Call>::COMMAND,)*
                }
            }

            /// The response frame as chunks, header first (see [`encode_reply`]).
            pub fn encode_chunks(&self) -> Vec<Bytes> {
                match self {
                    $(Response::$variant(r) => encode_reply(<$req as Call>::COMMAND, r),)*
                }
            }

            /// Decodes a successful response body for `cmd`.
            pub fn decode(cmd: Command, body: Bytes) -> Result<Self, DecodeError> {
                $(
                    if cmd == <$req as Call>::COMMAND {
                        return Ok(Response::$variant(decode_body(body)?));
                    }
                )*
                Err(DecodeError::Invalid {
                    field: "command",
                    reason: format!("no reply layout for command {}", cmd as u16),
                })
            }
        }
    };
}

commands! {
    Hello(Hello),
    AuthStart(AuthStart),
    AuthFinish(AuthFinish),
    Route(Route),
    Send(Send),
    SendSpecial(SendSpecial),
    CancelScheduled(CancelScheduled),
    EndTransaction(EndTransaction),
    PollTransactionChecks(PollTransactionChecks),
    Pull(Pull),
    CommitOffset(CommitOffset),
    FetchOffset(FetchOffset),
    OffsetForTime(OffsetForTime),
    SendBack(SendBack),
    DlqResend(DlqResend),
    TopicCreate(TopicCreate),
    TopicUpdate(TopicUpdate),
    TopicDelete(TopicDelete),
    TopicList(TopicList),
    TopicDescribe(TopicDescribe),
    MessageById(MessageById),
    MessageByKey(MessageByKey),
    Heartbeat(Heartbeat),
    LeaveGroup(LeaveGroup),
    GroupList(GroupList),
    GroupDescribe(GroupDescribe),
    GroupResetOffset(GroupResetOffset),
    GroupDelete(GroupDelete),
    PluginLoad(PluginLoad),
    PluginReload(PluginReload),
    PluginUnload(PluginUnload),
    PluginList(PluginList),
    PluginDescribe(PluginDescribe),
    BrokerStatus(BrokerStatus),
    UserCreate(UserCreate),
    UserPassword(UserPassword),
    UserDelete(UserDelete),
    UserList(UserList),
    AclGrant(AclGrant),
    AclRevoke(AclRevoke),
    AclList(AclList),
    PluginAttach(PluginAttach),
    PluginDetach(PluginDetach),
    Raft(Raft),
    ClusterInfo(ClusterInfo),
    ClusterVoter(ClusterVoter),
    TopicRoute(TopicRoute),
    TopicCreateOn(TopicCreateOn),
    ReplicaFetch(ReplicaFetch),
    ReplicaState(ReplicaState),
    ClusterElect(ClusterElect),
}
