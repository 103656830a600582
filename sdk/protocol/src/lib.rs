//! The Quiver wire protocol, shared by the broker and every client: frame layout, stable
//! command and status codes, commands as typed values (one struct per request and reply), the message record layout, and the
//! naming rules. No async runtime and no I/O: feed it bytes, get values (docs/PROTOCOL.md).

pub mod cmd;
pub mod codes;
pub mod frame;
pub mod names;
pub mod plugins;
pub mod record;
#[cfg(feature = "auth")]
pub mod scram;
pub mod text;
#[cfg(feature = "quic")]
pub mod transport;
pub mod wire;

pub use cmd::{Call, Request, Response, WireDecode, WireEncode};
pub use codes::{Command, PullStatus, Status};
pub use frame::{
    decode_error, encode_error, split_frame, FilterSpec, FrameError, FrameHeader, GroupMode,
    GroupQueue, GroupSummary, MemberInfo, QueueInfo, QueueRef, ResetTarget, SendMode, SendReceipt,
    Subscription, TopicSummary, TransactionState, WireMessage, ALPN, FRAME_HEADER,
    PROTOCOL_VERSION,
};
pub use plugins::{PluginFailurePolicy, PluginInfo, PluginKind, PluginRef};
pub use record::{tag_hash, NewMessage, RecordError, RecordLimits, RecordView};
pub use wire::DecodeError;

#[cfg(test)]
mod tests;
