//! The one error type of the SDK.

use std::net::SocketAddr;
use std::time::Duration;

use quiver_protocol::{DecodeError, FrameError, Status};

/// Everything that can go wrong in a client call.
///
/// [`ClientError::is_retryable`] tells whether the same call may succeed after a back-off;
/// [`crate::Producer`] uses it for its automatic retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The QUIC/TLS connection to the broker could not be established for a reason that
    /// retrying will not fix (certificate rejected, wrong ALPN, no local UDP socket...). A
    /// broker that does not answer at all is [`ClientError::Unreachable`].
    #[error("cannot connect to the broker at {addr}: {reason}")]
    Connect {
        /// Broker address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The broker did not answer a connection attempt: it is down, restarting, or the
    /// network is cut. Retryable; a [`crate::Client`] keeps trying (with back-off) on later
    /// requests.
    #[error("the broker at {addr} is unreachable: {reason}")]
    Unreachable {
        /// Broker address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The TLS or client configuration is unusable (unreadable CA file, bad fingerprint...).
    #[error("TLS/configuration error: {0}")]
    Tls(String),
    /// The broker did not answer in time.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection dropped while the request was in flight (broker restart, idle timeout,
    /// network failure). The next request reconnects. The request may or may not have been
    /// processed by the broker.
    #[error("connection to the broker lost: {0}")]
    ConnectionLost(String),
    /// The broker answered with an error status.
    #[error("broker error {status:?}: {message}")]
    Broker {
        /// The status code.
        status: Status,
        /// The broker's explanation.
        message: String,
    },
    /// The broker sent something this client cannot decode (a frame, a response body or a
    /// record that fails its CRC check).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The caller passed an invalid argument (bad topic name, reserved property...); nothing
    /// was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`crate::Client::close`] was called; this client cannot be used any more.
    #[error("the client is closed")]
    Closed,
    /// A background task of the SDK panicked or was cancelled (for example by a runtime
    /// shutdown).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// True when the same request may succeed if retried after a back-off: the broker said
    /// `Busy`, `DiskFull` or `ShuttingDown`, the request timed out, the connection was lost,
    /// or the broker was unreachable.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Broker { status, .. } => status.is_retryable(),
            ClientError::Timeout(_)
            | ClientError::ConnectionLost(_)
            | ClientError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// The broker status, when this is a [`ClientError::Broker`] error.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Broker { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ClientError::InvalidArgument(msg.into())
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(status: Status) -> ClientError {
        ClientError::Broker {
            status,
            message: "x".into(),
        }
    }

    #[test]
    fn retryability() {
        assert!(broker(Status::Busy).is_retryable());
        assert!(broker(Status::DiskFull).is_retryable());
        assert!(broker(Status::ShuttingDown).is_retryable());
        assert!(!broker(Status::TopicNotFound).is_retryable());
        assert!(!broker(Status::MessageTooLarge).is_retryable());
        assert!(!broker(Status::Internal).is_retryable());
        assert!(ClientError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(ClientError::ConnectionLost("gone".into()).is_retryable());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(ClientError::Unreachable {
            addr,
            reason: "down".into()
        }
        .is_retryable());
        assert!(!ClientError::Connect {
            addr,
            reason: "bad certificate".into()
        }
        .is_retryable());
        assert!(!ClientError::Protocol("bad".into()).is_retryable());
        assert!(!ClientError::InvalidArgument("bad".into()).is_retryable());
        assert!(!ClientError::Tls("bad".into()).is_retryable());
        assert!(!ClientError::Closed.is_retryable());
        assert_eq!(broker(Status::Busy).status(), Some(Status::Busy));
        assert_eq!(ClientError::Closed.status(), None);
    }
}
