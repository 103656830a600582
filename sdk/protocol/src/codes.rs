//! Stable numeric codes: commands (requests) and statuses (responses). Numbers never change
//! meaning; new ones are only added.

/// A request's command code (u16 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// Version handshake; must be the first request of a connection.
    Hello = 1,
    /// Password handshake, step 1: user name and client nonce; the answer is the challenge.
    AuthStart = 3,
    /// Password handshake, step 2: the client's proof; the answer is the broker's signature.
    AuthFinish = 4,
    /// Queue count of a topic (optionally creating it when auto-creation is on).
    Route = 2,
    /// Append one message or an atomic batch to one queue.
    Send = 10,
    /// Send a scheduled (delayed) message or a transactional half message.
    SendSpecial = 11,
    /// Cancel a scheduled message that is not yet due, by id.
    CancelScheduled = 12,
    /// Commit or roll back a half message (a producer's decision or its answer to a check).
    EndTransaction = 13,
    /// A transactional producer waits for the broker's check-back requests of its group.
    PollTransactionChecks = 14,
    /// Read messages of one queue from an offset, optionally parking until one arrives.
    Pull = 20,
    /// Store a consumer group's offset for a queue.
    CommitOffset = 21,
    /// A consumer hands a message back: it is delivered again later to its group (retry
    /// topic) or moved to the group's dead-letter queue.
    SendBack = 24,
    /// Resend messages of a group's dead-letter queue to its retry topic.
    DlqResend = 25,
    /// Read a consumer group's committed offset for a queue.
    FetchOffset = 22,
    /// First queue offset stored at or after a timestamp.
    OffsetForTime = 23,
    /// Create a topic.
    TopicCreate = 30,
    /// Change a topic's queue count.
    TopicUpdate = 31,
    /// Delete a topic.
    TopicDelete = 32,
    /// List topics.
    TopicList = 33,
    /// A topic's queues with their min/max offsets.
    TopicDescribe = 34,
    /// A message by its producer-assigned id.
    MessageById = 40,
    /// Messages of a topic by key.
    MessageByKey = 41,
    /// Join or stay in a consumer group; the answer says which queues this member owns.
    Heartbeat = 50,
    /// Leave a consumer group at once (its queues move to the others).
    LeaveGroup = 51,
    /// List consumer groups.
    GroupList = 52,
    /// A group's members, assignments, offsets and lag.
    GroupDescribe = 53,
    /// Move a group's committed offsets.
    GroupResetOffset = 54,
    /// Delete a group and its offsets.
    GroupDelete = 55,
    /// Load a WebAssembly plugin under a new name.
    PluginLoad = 60,
    /// Replace a loaded plugin's module and/or configuration atomically.
    PluginReload = 61,
    /// Unload a plugin.
    PluginUnload = 62,
    /// List loaded plugins.
    PluginList = 63,
    /// Describe one plugin.
    PluginDescribe = 64,
    /// Attach a plugin to a topic's ingress chain.
    PluginAttach = 65,
    /// Detach a plugin from a topic's ingress chain.
    PluginDetach = 66,
    /// The broker's status report: version, uptime, role, totals, connections, disk.
    BrokerStatus = 70,
    /// Create a user (name, role, password verifier).
    UserCreate = 80,
    /// Replace a user's password verifier.
    UserPassword = 81,
    /// Delete a user and its rules.
    UserDelete = 82,
    /// List users.
    UserList = 83,
    /// Add an access rule to a user.
    AclGrant = 84,
    /// Remove actions from a user's access rule.
    AclRevoke = 85,
    /// List access rules.
    AclList = 86,
    /// A Raft message between controller nodes (cluster members only).
    Raft = 90,
    /// The controller's leader, term and members as the answering node sees them.
    ClusterInfo = 91,
    /// Add or remove a controller voter.
    ClusterVoter = 92,
    /// A topic's route in a cluster: its broker sets, queue counts and broker addresses.
    TopicRoute = 93,
    /// Create a topic in a cluster on chosen broker sets.
    TopicCreateOn = 94,
    /// A slave reads its master's commit log (cluster members only).
    ReplicaFetch = 95,
    /// A slave reads its master's offsets and other state outside the log (members only).
    ReplicaState = 96,
    /// Make a broker the master of its set (switch-over).
    ClusterElect = 97,
}

impl Command {
    /// The command for a wire code, if known.
    pub fn from_u16(v: u16) -> Option<Self> {
        use Command::*;
        Some(match v {
            1 => Hello,
            3 => AuthStart,
            4 => AuthFinish,
            2 => Route,
            10 => Send,
            11 => SendSpecial,
            12 => CancelScheduled,
            13 => EndTransaction,
            14 => PollTransactionChecks,
            20 => Pull,
            21 => CommitOffset,
            22 => FetchOffset,
            23 => OffsetForTime,
            24 => SendBack,
            25 => DlqResend,
            30 => TopicCreate,
            31 => TopicUpdate,
            32 => TopicDelete,
            33 => TopicList,
            34 => TopicDescribe,
            40 => MessageById,
            41 => MessageByKey,
            50 => Heartbeat,
            51 => LeaveGroup,
            52 => GroupList,
            53 => GroupDescribe,
            54 => GroupResetOffset,
            55 => GroupDelete,
            60 => PluginLoad,
            61 => PluginReload,
            62 => PluginUnload,
            63 => PluginList,
            64 => PluginDescribe,
            65 => PluginAttach,
            66 => PluginDetach,
            70 => BrokerStatus,
            80 => UserCreate,
            81 => UserPassword,
            82 => UserDelete,
            83 => UserList,
            84 => AclGrant,
            85 => AclRevoke,
            86 => AclList,
            90 => Raft,
            91 => ClusterInfo,
            92 => ClusterVoter,
            93 => TopicRoute,
            94 => TopicCreateOn,
            95 => ReplicaFetch,
            96 => ReplicaState,
            97 => ClusterElect,
            _ => return None,
        })
    }
}

/// A response status (u16 on the wire). 0 is success; everything else carries a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The frame or its body is malformed.
    BadRequest = 1,
    /// The command code is unknown to this broker.
    UnknownCommand = 2,
    /// The client's protocol version is not supported.
    UnsupportedVersion = 3,
    /// A request other than Hello arrived before the handshake.
    HandshakeRequired = 4,
    /// The frame is larger than the broker accepts.
    FrameTooLarge = 5,
    /// The topic does not exist (and auto-creation is off or was not asked for).
    TopicNotFound = 10,
    /// A topic or group name breaks the naming rules.
    InvalidName = 11,
    /// The queue id is not below the topic's queue count.
    QueueNotFound = 12,
    /// A message body exceeds the broker's maximum.
    MessageTooLarge = 13,
    /// Tag, keys and properties exceed the broker's maximum.
    PropertiesTooLarge = 14,
    /// A user property uses a reserved name.
    ReservedProperty = 15,
    /// The message is malformed in another way (empty key, empty batch...).
    InvalidMessage = 16,
    /// The topic already exists.
    TopicExists = 17,
    /// The consumer group does not exist.
    GroupNotFound = 18,
    /// The group has live members; the operation needs `force`.
    GroupOnline = 19,
    /// A filter expression is malformed; the message says what and where (column).
    InvalidFilter = 24,
    /// A member subscribes differently from the rest of its group.
    SubscriptionConflict = 25,
    /// The broker is overloaded; retry after a back-off.
    Busy = 20,
    /// The broker's disk is above its high watermark; retry later.
    DiskFull = 21,
    /// The store cannot accept writes (a flush failed); the broker needs attention.
    StoreUnavailable = 22,
    /// The broker is shutting down; retry on another broker or later.
    ShuttingDown = 23,
    /// The requested message or offset does not exist.
    NotFound = 30,
    /// The scheduled message is already due or delivered: it can no longer be cancelled.
    AlreadyDue = 31,
    /// The transaction was already committed or rolled back (the other decision is refused).
    TransactionResolved = 32,
    /// A delay, delay level or deliver-at time is out of the allowed range.
    InvalidDelay = 33,
    /// No plugin is loaded under that name.
    PluginNotFound = 40,
    /// A plugin with that name is already loaded (use reload).
    PluginExists = 41,
    /// The module is not a valid plugin (bad WebAssembly, wrong exports or imports, refused
    /// configuration); the message says what.
    InvalidPlugin = 42,
    /// The plugin trapped, ran out of time or memory, or returned malformed output on this
    /// batch; nothing was appended (ingress) or the pull can be retried (subscription).
    PluginFailed = 43,
    /// An ingress plugin rejected a message; nothing of the send was stored.
    PluginRejected = 44,
    /// The plugin failed too many times in a row and is disabled until reloaded.
    PluginUnhealthy = 45,
    /// The plugin is attached to topics; detach it first or unload with force.
    PluginInUse = 46,
    /// A cluster command from a peer that did not authenticate as a member of this cluster
    /// (no or an untrusted TLS client certificate, or another cluster id).
    NotClusterMember = 50,
    /// The node has no controller (no cluster configured, or the controller is not running).
    NoController = 51,
    /// The controller cannot take or answer the request right now (no leader is known, or
    /// no voter could be reached); retry after a back-off.
    ControllerUnavailable = 52,
    /// The broker is a slave of its broker set: writes (sends, transaction decisions,
    /// hand-backs) go to the set's master; read the topic's route again. Replication requests
    /// that name a stale master epoch get it too.
    NotMaster = 53,
    /// Sync replication: too few copies of the log are in sync (nothing was stored), or the
    /// slaves did not acknowledge a stored send in time (not acknowledged: a retry may store
    /// it twice). Retry after a back-off.
    NotEnoughReplicas = 54,
    /// The password handshake failed: unknown user, wrong password, a proof without a
    /// fresh AuthStart, or too many attempts. The message never says which.
    AuthenticationFailed = 60,
    /// The connection's user (or an unauthenticated connection) may not do this; the
    /// message names the action and the resource.
    AccessDenied = 61,
    /// No user of that name exists (user and rule management).
    UserNotFound = 62,
    /// A user of that name already exists.
    UserExists = 63,
    /// An unexpected broker error.
    Internal = 99,
}

impl Status {
    /// The status for a wire code; unknown codes map to `Internal`.
    pub fn from_u16(v: u16) -> Self {
        use Status::*;
        match v {
            0 => Ok,
            1 => BadRequest,
            2 => UnknownCommand,
            3 => UnsupportedVersion,
            4 => HandshakeRequired,
            5 => FrameTooLarge,
            10 => TopicNotFound,
            11 => InvalidName,
            12 => QueueNotFound,
            13 => MessageTooLarge,
            14 => PropertiesTooLarge,
            15 => ReservedProperty,
            16 => InvalidMessage,
            17 => TopicExists,
            18 => GroupNotFound,
            19 => GroupOnline,
            24 => InvalidFilter,
            25 => SubscriptionConflict,
            20 => Busy,
            21 => DiskFull,
            22 => StoreUnavailable,
            23 => ShuttingDown,
            30 => NotFound,
            31 => AlreadyDue,
            32 => TransactionResolved,
            33 => InvalidDelay,
            40 => PluginNotFound,
            41 => PluginExists,
            42 => InvalidPlugin,
            43 => PluginFailed,
            44 => PluginRejected,
            45 => PluginUnhealthy,
            46 => PluginInUse,
            50 => NotClusterMember,
            51 => NoController,
            52 => ControllerUnavailable,
            53 => NotMaster,
            54 => NotEnoughReplicas,
            60 => AuthenticationFailed,
            61 => AccessDenied,
            62 => UserNotFound,
            63 => UserExists,
            _ => Internal,
        }
    }

    /// True when the same request may succeed if retried after a back-off.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::Busy
                | Status::DiskFull
                | Status::ShuttingDown
                | Status::ControllerUnavailable
                | Status::NotMaster
                | Status::NotEnoughReplicas
        )
    }
}

/// Status of a pull response (u8 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PullStatus {
    /// Messages are returned.
    Found = 0,
    /// Nothing new before the long-poll timeout.
    NoNewMessages = 1,
    /// Entries were scanned but none matched the filter; continue at `next_offset`.
    NoMatch = 2,
    /// The offset is below the queue's minimum; `next_offset` is the minimum.
    OffsetTooSmall = 3,
    /// The offset is past the queue's end; `next_offset` is the end.
    OffsetOverflow = 4,
}

impl PullStatus {
    /// The status for a wire code.
    pub fn from_u8(v: u8) -> Option<Self> {
        use PullStatus::*;
        Some(match v {
            0 => Found,
            1 => NoNewMessages,
            2 => NoMatch,
            3 => OffsetTooSmall,
            4 => OffsetOverflow,
            _ => return None,
        })
    }
}
