//! Transactional messages: half message, local transaction, decision, and the check-back
//! loop that answers the broker for a producer group (docs/SEMANTICS.md).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use quiver_protocol::cmd::{encode_request, EndTransaction, PollTransactionChecks, Records};
use quiver_protocol::names;
pub use quiver_protocol::TransactionState;
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::message::{Message, MessageId, ReceivedMessage};
use crate::producer::{Producer, SendResult, Target};

/// How long one check-back poll waits at the broker.
const POLL_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed poll.
const POLL_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The result of [`Producer::send_in_transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// Where the half message was stored (`commit_log_offset` is its handle).
    pub send: SendResult,
    /// What the local transaction decided.
    pub state: TransactionState,
    /// Whether the decision was written to the connection (it is sent one-way, as in
    /// RocketMQ). When false, when it is lost on the way, or when the state is `Unknown`, the
    /// broker asks the group's checker later.
    pub reported: bool,
}

impl Producer {
    /// Stores `message` as a half message of this producer's group: durable, invisible to
    /// consumers until [`Producer::end_transaction`] commits it.
    pub async fn send_half(&self, message: Message) -> Result<SendResult, ClientError> {
        if message.delivery().is_some() {
            return Err(ClientError::invalid(
                "a transactional message cannot also be scheduled",
            ));
        }
        let group = self.options().group.clone();
        names::check_name("producer group", &group).map_err(ClientError::InvalidArgument)?;
        let mut r = self
            .send_many(vec![message], Target::Select, Some(&group))
            .await?;
        r.pop()
            .ok_or_else(|| ClientError::Protocol("no receipt for the half message".into()))
    }

    /// Commits or rolls back a half message (`Unknown` leaves it to the check-back).
    /// Deciding twice the same way is fine; the other way fails with
    /// `Status::TransactionResolved`.
    pub async fn end_transaction(
        &self,
        half: &SendResult,
        state: TransactionState,
    ) -> Result<(), ClientError> {
        let client = self.client_of(&half.broker_set);
        end(
            self,
            &client,
            half.msg_id,
            half.commit_log_offset,
            state,
            false,
        )
        .await
    }

    /// Sends `message` as a half message, runs `local` (your local transaction, e.g. a
    /// database update) and commits or rolls back by its answer, one-way (use
    /// [`Producer::send_half`] and [`Producer::end_transaction`] to wait for the broker's
    /// acknowledgement of the decision). A panic in `local` counts as
    /// `Unknown`. If the decision is lost, the broker checks back with the group's checker
    /// ([`Producer::start_transaction_checker`]).
    ///
    /// ```no_run
    /// # use quiver_client::{Message, Producer, TransactionState};
    /// # async fn demo(producer: Producer) -> Result<(), quiver_client::ClientError> {
    /// let r = producer
    ///     .send_in_transaction(Message::new("orders", "paid"), |_msg, _id| {
    ///         // ... update the local database in one transaction ...
    ///         TransactionState::Commit
    ///     })
    ///     .await?;
    /// assert_eq!(r.state, TransactionState::Commit);
    /// # Ok(()) }
    /// ```
    pub async fn send_in_transaction<F>(
        &self,
        message: Message,
        local: F,
    ) -> Result<TransactionSendResult, ClientError>
    where
        F: FnOnce(&Message, MessageId) -> TransactionState,
    {
        let send = self.send_half(message.clone()).await?;
        let state =
            catch_unwind(AssertUnwindSafe(|| local(&message, send.msg_id))).unwrap_or_else(|_| {
                tracing::error!(msg_id = %send.msg_id, "local transaction panicked; state unknown");
                TransactionState::Unknown
            });
        // One-way, as RocketMQ does: a decision that gets lost is recovered by the check-back,
        // and the send does not wait for a second round trip.
        let request = EndTransaction {
            group: self.options().group.clone(),
            id: send.msg_id.0,
            handle: send.commit_log_offset,
            state,
            from_check: false,
        };
        let reported = match self
            .client_of(&send.broker_set)
            .send_oneway_frame(encode_request(&request))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(msg_id = %send.msg_id, error = %e, "transaction decision not delivered; the broker will check back");
                false
            }
        };
        Ok(TransactionSendResult {
            send,
            state,
            reported,
        })
    }

    /// Starts answering the broker's check-backs for this producer's group: `checker` gets
    /// each unresolved half message (its `topic` is the real topic, `commit_log_offset` its
    /// handle) and returns the local transaction's state. Runs until the handle is stopped or
    /// dropped. Any live producer of the group may answer, so a restarted process answers for
    /// its predecessor.
    pub fn start_transaction_checker<F, Fut>(&self, checker: F) -> TransactionChecker
    where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TransactionState> + Send + 'static,
    {
        let producer = self.clone();
        let checker = Arc::new(checker);
        let producer_id = format!(
            "{}-{}",
            producer.client().config().client_id,
            MessageId::new()
        );
        let task = tokio::spawn(async move {
            let Some(cluster) = producer.cluster().cloned() else {
                let client = producer.client().clone();
                return poll_checks(producer, client, producer_id, checker).await;
            };
            // Over a cluster: a poll loop per broker this producer reaches (half messages are
            // on the set that stored them), started as routes name new ones.
            let mut polled = std::collections::HashSet::new();
            let mut loops = tokio::task::JoinSet::new();
            loop {
                for client in cluster.clients() {
                    if polled.insert(client.config().addr) {
                        loops.spawn(poll_checks(
                            producer.clone(),
                            client,
                            producer_id.clone(),
                            checker.clone(),
                        ));
                    }
                }
                tokio::time::sleep(POLL_WAIT).await;
            }
        });
        TransactionChecker { task }
    }
}

/// Answers the check-backs one broker asks of this producer's group, forever.
async fn poll_checks<F, Fut>(
    producer: Producer,
    client: crate::client::Client,
    producer_id: String,
    checker: Arc<F>,
) where
    F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TransactionState> + Send + 'static,
{
    let group = producer.options().group.clone();
    loop {
        // The request timeout is extended by the poll's wait (`Call::wait_ms`).
        let req = PollTransactionChecks {
            group: group.clone(),
            producer_id: producer_id.clone(),
            max: 32,
            wait_ms: POLL_WAIT.as_millis() as u32,
        };
        let records = match client.call(req).await {
            Ok(Records(r)) => r,
            Err(e) => {
                tracing::debug!(error = %e, "check-back poll failed; retrying");
                tokio::time::sleep(POLL_ERROR_PAUSE).await;
                continue;
            }
        };
        for rec in records {
            let msg = match ReceivedMessage::parse(rec) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "bad check-back record");
                    continue;
                }
            };
            let (id, handle) = (msg.msg_id, msg.commit_log_offset);
            let fut = checker(msg);
            let state = match tokio::spawn(fut).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(msg_id = %id, error = %e, "transaction checker failed; state unknown");
                    TransactionState::Unknown
                }
            };
            if let Err(e) = end(&producer, &client, id, handle, state, true).await {
                tracing::warn!(msg_id = %id, error = %e, "check-back answer not delivered");
            }
        }
    }
}

async fn end(
    producer: &Producer,
    client: &crate::client::Client,
    id: MessageId,
    handle: u64,
    state: TransactionState,
    from_check: bool,
) -> Result<(), ClientError> {
    let req = EndTransaction {
        group: producer.options().group.clone(),
        id: id.0,
        handle,
        state,
        from_check,
    };
    client.call(req).await?;
    Ok(())
}

/// The running check-back loop of [`Producer::start_transaction_checker`]; stops when
/// dropped.
#[derive(Debug)]
pub struct TransactionChecker {
    task: JoinHandle<()>,
}

impl TransactionChecker {
    /// Stops answering check-backs.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for TransactionChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
