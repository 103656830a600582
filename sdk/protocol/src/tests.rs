//! Property tests: every request and every reply round-trips through its frame; no input makes
//! decoding panic; every command code has its request and reply in the table of `cmd/mod.rs`.

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::TestRunner;

use crate::cmd::{self, Call};
use crate::*;

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((arb_string(), arb_string()), 0..4)
}

fn arb_refs() -> impl Strategy<Value = Vec<QueueRef>> {
    vec((arb_string(), any::<u32>()), 0..4)
}

fn arb_mode() -> impl Strategy<Value = GroupMode> {
    prop_oneof![Just(GroupMode::Clustering), Just(GroupMode::Broadcasting)]
}

fn arb_filter() -> impl Strategy<Value = FilterSpec> {
    prop_oneof![
        Just(FilterSpec::All),
        arb_string().prop_map(FilterSpec::Tag),
        arb_string().prop_map(FilterSpec::Sql),
    ]
}

fn arb_plugin_refs() -> impl Strategy<Value = Vec<PluginRef>> {
    vec(
        (arb_string(), 0u8..3).prop_map(|(name, p)| PluginRef {
            name,
            on_error: PluginFailurePolicy::from_u8(p).unwrap(),
        }),
        0..4,
    )
}

fn arb_message() -> impl Strategy<Value = WireMessage> {
    (
        any::<u128>(),
        any::<i64>(),
        any::<u32>(),
        arb_string(),
        vec(arb_string(), 0..4),
        arb_pairs(),
        arb_bytes(300),
    )
        .prop_map(
            |(id, born_timestamp, flags, tag, keys, properties, body)| WireMessage {
                id,
                born_timestamp,
                flags,
                tag,
                keys,
                properties,
                body,
            },
        )
}

fn arb_messages() -> impl Strategy<Value = Vec<WireMessage>> {
    vec(arb_message(), 0..5)
}

fn arb_send_mode() -> impl Strategy<Value = SendMode> {
    prop_oneof![
        any::<i64>().prop_map(SendMode::DeliverAt),
        any::<i64>().prop_map(SendMode::DelayMs),
        any::<u8>().prop_map(SendMode::DelayLevel),
        arb_string().prop_map(|group| SendMode::Half { group }),
    ]
}

fn arb_transaction_state() -> impl Strategy<Value = TransactionState> {
    (0u8..3).prop_map(|v| TransactionState::from_u8(v).unwrap())
}

fn arb_reset_target() -> impl Strategy<Value = ResetTarget> {
    prop_oneof![
        Just(ResetTarget::First),
        Just(ResetTarget::Last),
        any::<i64>().prop_map(ResetTarget::Timestamp),
        any::<u64>().prop_map(ResetTarget::Offset),
    ]
}

fn arb_subscription() -> impl Strategy<Value = Subscription> {
    (arb_string(), arb_filter(), arb_plugin_refs()).prop_map(|(topic, filter, plugins)| {
        Subscription {
            topic,
            filter,
            plugins,
        }
    })
}

fn arb_plugin_info() -> impl Strategy<Value = PluginInfo> {
    (
        (
            arb_string(),
            any::<bool>(),
            any::<u32>(),
            "[0-9a-f]{64}",
            any::<u64>(),
        ),
        (
            arb_pairs(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<u32>(),
        ),
        (arb_string(), any::<[u64; 4]>(), any::<i64>()),
        vec(arb_string(), 0..3),
    )
        .prop_map(
            |(
                (name, filter, version, sha256, size),
                (config, memory_limit_bytes, time_limit_ms, healthy, consecutive_failures),
                (last_error, counts, loaded_at_ms),
                topics,
            )| PluginInfo {
                name,
                kind: if filter {
                    PluginKind::Filter
                } else {
                    PluginKind::Transform
                },
                version,
                sha256,
                size,
                config,
                memory_limit_bytes,
                time_limit_ms,
                healthy,
                consecutive_failures,
                last_error,
                batches: counts[0],
                messages_in: counts[1],
                messages_out: counts[2],
                failures: counts[3],
                loaded_at_ms,
                topics,
            },
        )
}

/// A stored record (the layout of record.rs) with `body`.
fn record(body: &[u8]) -> Bytes {
    let m = NewMessage {
        msg_id: 7,
        flags: 0,
        born_timestamp: 1,
        born_host: "127.0.0.1:1".parse().unwrap(),
        reconsume_times: 0,
        tag: "t",
        keys: &["k"],
        properties: &[("a", "b")],
        body,
    };
    let limits = RecordLimits {
        max_body: 1 << 20,
        max_properties: 1 << 15,
    };
    let mut buf = vec![0u8; m.encoded_len("topic", &limits).unwrap()];
    record::encode_into(
        &mut buf,
        "topic",
        &m,
        &record::RecordPlacement {
            queue_id: 1,
            queue_offset: 2,
            phys_offset: 3,
            store_timestamp: 4,
            extra_flags: 0,
        },
    );
    Bytes::from(buf)
}

fn arb_records() -> impl Strategy<Value = Vec<Bytes>> {
    vec(vec(any::<u8>(), 0..100), 0..4)
        .prop_map(|bodies| bodies.iter().map(|b| record(b)).collect())
}

/// One strategy per request struct (each makes one command), in the order of the table.
fn request_strategies() -> Vec<BoxedStrategy<Request>> {
    vec![
        (any::<u16>(), arb_string())
            .prop_map(|(version, client_id)| cmd::Hello { version, client_id }.into())
            .boxed(),
        (arb_string(), any::<bool>())
            .prop_map(|(topic, create)| cmd::Route { topic, create }.into())
            .boxed(),
        (arb_string(), any::<u32>(), arb_messages())
            .prop_map(|(topic, queue_id, messages)| {
                cmd::Send {
                    topic,
                    queue_id,
                    messages,
                }
                .into()
            })
            .boxed(),
        (arb_string(), any::<u32>(), arb_send_mode(), arb_messages())
            .prop_map(|(topic, queue_id, mode, messages)| {
                cmd::SendSpecial {
                    topic,
                    queue_id,
                    mode,
                    messages,
                }
                .into()
            })
            .boxed(),
        any::<u128>()
            .prop_map(|id| cmd::CancelScheduled { id }.into())
            .boxed(),
        (
            arb_string(),
            any::<u128>(),
            any::<u64>(),
            arb_transaction_state(),
            any::<bool>(),
        )
            .prop_map(|(group, id, handle, state, from_check)| {
                cmd::EndTransaction {
                    group,
                    id,
                    handle,
                    state,
                    from_check,
                }
                .into()
            })
            .boxed(),
        (arb_string(), arb_string(), any::<u32>(), any::<u32>())
            .prop_map(|(group, producer_id, max, wait_ms)| {
                cmd::PollTransactionChecks {
                    group,
                    producer_id,
                    max,
                    wait_ms,
                }
                .into()
            })
            .boxed(),
        (
            (arb_string(), any::<u32>(), any::<u64>()),
            (any::<u32>(), any::<u32>(), any::<u32>()),
            (arb_filter(), arb_plugin_refs()),
        )
            .prop_map(
                |(
                    (topic, queue_id, offset),
                    (max_messages, max_bytes, long_poll_ms),
                    (filter, plugins),
                )| {
                    cmd::Pull {
                        topic,
                        queue_id,
                        offset,
                        max_messages,
                        max_bytes,
                        long_poll_ms,
                        filter,
                        plugins,
                    }
                    .into()
                },
            )
            .boxed(),
        (arb_string(), arb_string(), any::<u32>(), any::<u64>())
            .prop_map(|(group, topic, queue_id, offset)| {
                cmd::CommitOffset {
                    group,
                    topic,
                    queue_id,
                    offset,
                }
                .into()
            })
            .boxed(),
        (arb_string(), arb_string(), any::<u32>())
            .prop_map(|(group, topic, queue_id)| {
                cmd::FetchOffset {
                    group,
                    topic,
                    queue_id,
                }
                .into()
            })
            .boxed(),
        (arb_string(), any::<u32>(), any::<i64>())
            .prop_map(|(topic, queue_id, timestamp_ms)| {
                cmd::OffsetForTime {
                    topic,
                    queue_id,
                    timestamp_ms,
                }
                .into()
            })
            .boxed(),
        (
            arb_string(),
            any::<u128>(),
            any::<u64>(),
            any::<u8>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(group, id, handle, delay_level, max_reconsume, to_dlq)| {
                cmd::SendBack {
                    group,
                    id,
                    handle,
                    delay_level,
                    max_reconsume,
                    to_dlq,
                }
                .into()
            })
            .boxed(),
        (
            arb_string(),
            option::of(any::<u128>()),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(group, id, from_offset, max)| {
                cmd::DlqResend {
                    group,
                    id,
                    from_offset,
                    max,
                }
                .into()
            })
            .boxed(),
        (arb_string(), any::<u32>())
            .prop_map(|(topic, queues)| cmd::TopicCreate { topic, queues }.into())
            .boxed(),
        (arb_string(), any::<u32>())
            .prop_map(|(topic, queues)| cmd::TopicUpdate { topic, queues }.into())
            .boxed(),
        arb_string()
            .prop_map(|topic| cmd::TopicDelete { topic }.into())
            .boxed(),
        Just(cmd::TopicList.into()).boxed(),
        Just(cmd::BrokerStatus.into()).boxed(),
        (arb_string(), any::<[u8; 32]>())
            .prop_map(|(user, client_nonce)| cmd::AuthStart { user, client_nonce }.into())
            .boxed(),
        any::<[u8; 32]>()
            .prop_map(|proof| cmd::AuthFinish { proof }.into())
            .boxed(),
        (arb_string(), any::<bool>(), arb_verifier())
            .prop_map(|(name, sup, verifier)| {
                cmd::UserCreate {
                    name,
                    role: if sup {
                        cmd::Role::Super
                    } else {
                        cmd::Role::Normal
                    },
                    verifier,
                }
                .into()
            })
            .boxed(),
        (arb_string(), arb_verifier())
            .prop_map(|(name, verifier)| cmd::UserPassword { name, verifier }.into())
            .boxed(),
        arb_string()
            .prop_map(|name| cmd::UserDelete { name }.into())
            .boxed(),
        Just(cmd::UserList.into()).boxed(),
        (arb_string(), arb_rule())
            .prop_map(|(user, rule)| cmd::AclGrant { user, rule }.into())
            .boxed(),
        (arb_string(), arb_rule())
            .prop_map(|(user, rule)| cmd::AclRevoke { user, rule }.into())
            .boxed(),
        arb_string()
            .prop_map(|user| cmd::AclList { user }.into())
            .boxed(),
        arb_string()
            .prop_map(|topic| cmd::TopicDescribe { topic }.into())
            .boxed(),
        any::<u128>()
            .prop_map(|id| cmd::MessageById { id }.into())
            .boxed(),
        (
            arb_string(),
            arb_string(),
            any::<u32>(),
            any::<i64>(),
            any::<i64>(),
        )
            .prop_map(|(topic, key, max, begin_ms, end_ms)| {
                cmd::MessageByKey {
                    topic,
                    key,
                    max,
                    begin_ms,
                    end_ms,
                }
                .into()
            })
            .boxed(),
        (
            arb_string(),
            arb_string(),
            arb_mode(),
            vec(arb_subscription(), 0..3),
            arb_refs(),
        )
            .prop_map(|(group, member_id, mode, subscriptions, held)| {
                cmd::Heartbeat {
                    group,
                    member_id,
                    mode,
                    subscriptions,
                    held,
                }
                .into()
            })
            .boxed(),
        (arb_string(), arb_string())
            .prop_map(|(group, member_id)| cmd::LeaveGroup { group, member_id }.into())
            .boxed(),
        Just(cmd::GroupList.into()).boxed(),
        arb_string()
            .prop_map(|group| cmd::GroupDescribe { group }.into())
            .boxed(),
        (
            arb_string(),
            arb_string(),
            arb_reset_target(),
            any::<bool>(),
        )
            .prop_map(|(group, topic, target, force)| {
                cmd::GroupResetOffset {
                    group,
                    topic,
                    target,
                    force,
                }
                .into()
            })
            .boxed(),
        (arb_string(), any::<bool>())
            .prop_map(|(group, force)| cmd::GroupDelete { group, force }.into())
            .boxed(),
        (
            arb_string(),
            arb_bytes(200),
            arb_pairs(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(name, wasm, config, memory_limit_bytes, time_limit_ms)| {
                cmd::PluginLoad {
                    name,
                    wasm,
                    config,
                    memory_limit_bytes,
                    time_limit_ms,
                }
                .into()
            })
            .boxed(),
        (
            arb_string(),
            arb_bytes(50),
            option::of(arb_pairs()),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(name, wasm, config, memory_limit_bytes, time_limit_ms)| {
                cmd::PluginReload {
                    name,
                    wasm,
                    config,
                    memory_limit_bytes,
                    time_limit_ms,
                }
                .into()
            })
            .boxed(),
        (arb_string(), any::<bool>())
            .prop_map(|(name, force)| cmd::PluginUnload { name, force }.into())
            .boxed(),
        Just(cmd::PluginList.into()).boxed(),
        arb_string()
            .prop_map(|name| cmd::PluginDescribe { name }.into())
            .boxed(),
        (arb_string(), arb_string())
            .prop_map(|(name, topic)| cmd::PluginAttach { name, topic }.into())
            .boxed(),
        (arb_string(), arb_string())
            .prop_map(|(name, topic)| cmd::PluginDetach { name, topic }.into())
            .boxed(),
        (
            arb_string(),
            prop_oneof![
                Just(cmd::RaftKind::Vote),
                Just(cmd::RaftKind::AppendEntries),
                Just(cmd::RaftKind::InstallSnapshot),
                Just(cmd::RaftKind::Write),
                Just(cmd::RaftKind::ChangeVoters)
            ],
            arb_bytes(64),
        )
            .prop_map(|(cluster_id, kind, body)| {
                cmd::Raft {
                    cluster_id,
                    kind,
                    body,
                }
                .into()
            })
            .boxed(),
        Just(cmd::ClusterInfo {}.into()).boxed(),
        (any::<bool>(), any::<u64>(), arb_string())
            .prop_map(|(add, id, addr)| cmd::ClusterVoter { add, id, addr }.into())
            .boxed(),
        (arb_string(), any::<bool>())
            .prop_map(|(topic, create)| cmd::TopicRoute { topic, create }.into())
            .boxed(),
        (
            arb_string(),
            arb_string(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        )
            .prop_map(
                |(cluster_id, set, node_id, epoch, from, max_bytes, wait_ms, last_epoch)| {
                    cmd::ReplicaFetch {
                        cluster_id,
                        set,
                        node_id,
                        epoch,
                        from,
                        max_bytes,
                        wait_ms,
                        last_epoch,
                    }
                    .into()
                },
            )
            .boxed(),
        (arb_string(), any::<u32>(), vec(arb_string(), 0..4))
            .prop_map(|(topic, queues, sets)| {
                cmd::TopicCreateOn {
                    topic,
                    queues,
                    sets,
                }
                .into()
            })
            .boxed(),
        (
            arb_string(),
            arb_string(),
            any::<u64>(),
            any::<u64>(),
            vec(arb_string(), 0..3),
        )
            .prop_map(|(cluster_id, set, node_id, epoch, want)| {
                cmd::ReplicaState {
                    cluster_id,
                    set,
                    node_id,
                    epoch,
                    want,
                }
                .into()
            })
            .boxed(),
        (arb_string(), any::<u64>())
            .prop_map(|(set, node_id)| cmd::ClusterElect { set, node_id }.into())
            .boxed(),
    ]
}

fn arb_topic_route_reply() -> impl Strategy<Value = cmd::TopicRouteReply> {
    vec(
        (
            arb_string(),
            any::<u32>(),
            any::<u64>(),
            arb_string(),
            any::<bool>(),
        )
            .prop_map(|(set, queues, node_id, addr, alive)| cmd::RouteSet {
                set,
                queues,
                node_id,
                addr,
                alive,
            }),
        0..5,
    )
    .prop_map(|sets| cmd::TopicRouteReply { sets })
}

fn arb_cluster_info_reply() -> impl Strategy<Value = cmd::ClusterInfoReply> {
    (
        arb_string(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec(
            (any::<u64>(), arb_string(), any::<bool>(), any::<u64>()).prop_map(
                |(id, addr, voter, matched)| cmd::ControllerNode {
                    id,
                    addr,
                    voter,
                    matched,
                },
            ),
            0..5,
        ),
        vec(
            (
                any::<u64>(),
                arb_string(),
                arb_string(),
                any::<bool>(),
                any::<i64>(),
            )
                .prop_map(|(id, set, addr, alive, last_seen_ms)| cmd::ClusterBroker {
                    id,
                    set,
                    addr,
                    alive,
                    last_seen_ms,
                }),
            0..5,
        ),
        vec(
            (
                arb_string(),
                any::<u64>(),
                any::<u64>(),
                vec(any::<u64>(), 0..3),
            )
                .prop_map(|(set, master, epoch, in_sync)| cmd::ClusterSet {
                    set,
                    master,
                    epoch,
                    in_sync,
                }),
            0..4,
        ),
        vec(
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                any::<i64>(),
            )
                .prop_map(
                    |(node, acked, master_end, lag_messages, in_sync, last_fetch_ms)| {
                        cmd::ReplicaLag {
                            node,
                            acked,
                            master_end,
                            lag_messages,
                            in_sync,
                            last_fetch_ms,
                        }
                    },
                ),
            0..3,
        ),
    )
        .prop_map(
            |(cluster_id, node_id, leader, term, applied, nodes, brokers, sets, replicas)| {
                cmd::ClusterInfoReply {
                    cluster_id,
                    node_id,
                    leader,
                    term,
                    applied,
                    nodes,
                    brokers,
                    sets,
                    replicas,
                }
            },
        )
}

fn arb_verifier() -> impl Strategy<Value = cmd::WireVerifier> {
    (
        any::<[u8; 16]>(),
        any::<(u32, u32, u32)>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(salt, (m_kib, t, p), stored_key, server_key)| cmd::WireVerifier {
                salt,
                m_kib,
                t,
                p,
                stored_key,
                server_key,
            },
        )
}

fn arb_rule() -> impl Strategy<Value = cmd::AclRule> {
    (arb_string(), any::<u16>(), any::<bool>(), arb_string()).prop_map(
        |(resource, actions, deny, source)| cmd::AclRule {
            resource,
            actions,
            decision: if deny {
                cmd::Decision::Deny
            } else {
                cmd::Decision::Allow
            },
            source,
        },
    )
}

fn arb_request() -> impl Strategy<Value = Request> {
    Union::new(request_strategies())
}

fn arb_done() -> impl Strategy<Value = cmd::Done> {
    Just(cmd::Done)
}

fn arb_hello_reply() -> impl Strategy<Value = cmd::HelloReply> {
    (any::<u16>(), arb_string(), any::<u32>(), any::<u32>()).prop_map(
        |(version, broker, max_message_size, max_frame)| cmd::HelloReply {
            version,
            broker,
            max_message_size,
            max_frame,
        },
    )
}

fn arb_route_reply() -> impl Strategy<Value = cmd::RouteReply> {
    any::<u32>().prop_map(|queues| cmd::RouteReply { queues })
}

fn arb_send_reply() -> impl Strategy<Value = cmd::SendReply> {
    (
        any::<u32>(),
        vec((any::<u128>(), any::<u64>(), any::<u64>()), 0..5),
    )
        .prop_map(|(queue_id, r)| cmd::SendReply {
            queue_id,
            receipts: r
                .into_iter()
                .map(|(id, queue_offset, phys_offset)| SendReceipt {
                    id,
                    queue_offset,
                    phys_offset,
                })
                .collect(),
        })
}

fn arb_records_reply() -> impl Strategy<Value = cmd::Records> {
    arb_records().prop_map(cmd::Records)
}

fn arb_pull_reply() -> impl Strategy<Value = cmd::PullReply> {
    (
        0u8..5,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        arb_records(),
    )
        .prop_map(
            |(s, next_offset, min_offset, max_offset, records)| cmd::PullReply {
                status: PullStatus::from_u8(s).unwrap(),
                next_offset,
                min_offset,
                max_offset,
                records,
            },
        )
}

fn arb_offset_reply() -> impl Strategy<Value = cmd::OffsetReply> {
    option::of(any::<u64>()).prop_map(|offset| cmd::OffsetReply { offset })
}

fn arb_sent_back_reply() -> impl Strategy<Value = cmd::SentBackReply> {
    (any::<bool>(), any::<u32>()).prop_map(|(to_dlq, reconsume_times)| cmd::SentBackReply {
        to_dlq,
        reconsume_times,
    })
}

fn arb_count_reply() -> impl Strategy<Value = cmd::CountReply> {
    any::<u64>().prop_map(cmd::CountReply)
}

fn arb_topic_list_reply() -> impl Strategy<Value = cmd::TopicListReply> {
    vec((arb_string(), any::<u32>()), 0..4).prop_map(|l| cmd::TopicListReply {
        topics: l
            .into_iter()
            .map(|(name, queues)| TopicSummary { name, queues })
            .collect(),
    })
}

fn arb_topic_reply() -> impl Strategy<Value = cmd::TopicReply> {
    (
        arb_string(),
        vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..4),
    )
        .prop_map(|(name, q)| cmd::TopicReply {
            name,
            queues: q
                .into_iter()
                .map(|(queue_id, min_offset, max_offset)| QueueInfo {
                    queue_id,
                    min_offset,
                    max_offset,
                })
                .collect(),
        })
}

fn arb_heartbeat_reply() -> impl Strategy<Value = cmd::HeartbeatReply> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
        arb_refs(),
    )
        .prop_map(
            |(generation, session_timeout_ms, heartbeat_interval_ms, settled, owned)| {
                cmd::HeartbeatReply {
                    generation,
                    session_timeout_ms,
                    heartbeat_interval_ms,
                    settled,
                    owned,
                }
            },
        )
}

fn arb_group_list_reply() -> impl Strategy<Value = cmd::GroupListReply> {
    vec((arb_string(), arb_mode(), any::<u32>()), 0..3).prop_map(|g| cmd::GroupListReply {
        groups: g
            .into_iter()
            .map(|(name, mode, members)| GroupSummary {
                name,
                mode,
                members,
            })
            .collect(),
    })
}

fn arb_group_reply() -> impl Strategy<Value = cmd::GroupReply> {
    let member = (
        arb_string(),
        arb_string(),
        arb_string(),
        vec(arb_string(), 0..3),
        arb_refs(),
    )
        .prop_map(|(member_id, client_id, remote, topics, owned)| MemberInfo {
            member_id,
            client_id,
            remote,
            topics,
            owned,
        });
    let queue = (
        arb_string(),
        any::<u32>(),
        option::of(any::<u64>()),
        any::<u64>(),
        // An empty owner is "no owner" on the wire.
        option::of("[a-z]{1,8}"),
    )
        .prop_map(
            |(topic, queue_id, committed, max_offset, owner)| GroupQueue {
                topic,
                queue_id,
                committed,
                max_offset,
                owner,
            },
        );
    (
        arb_string(),
        arb_mode(),
        vec(member, 0..3),
        vec(queue, 0..3),
    )
        .prop_map(|(name, mode, members, queues)| cmd::GroupReply {
            name,
            mode,
            members,
            queues,
        })
}

fn arb_plugins_reply() -> impl Strategy<Value = cmd::PluginsReply> {
    vec(arb_plugin_info(), 0..3).prop_map(|plugins| cmd::PluginsReply { plugins })
}

/// One strategy per command's reply (every reply struct appears at least once), in the
/// order of the table.
fn response_strategies() -> Vec<BoxedStrategy<Response>> {
    vec![
        arb_hello_reply().prop_map(Response::Hello).boxed(),
        arb_route_reply().prop_map(Response::Route).boxed(),
        arb_send_reply().prop_map(Response::Send).boxed(),
        arb_send_reply().prop_map(Response::SendSpecial).boxed(),
        arb_done().prop_map(Response::CancelScheduled).boxed(),
        arb_done().prop_map(Response::EndTransaction).boxed(),
        arb_records_reply()
            .prop_map(Response::PollTransactionChecks)
            .boxed(),
        arb_pull_reply().prop_map(Response::Pull).boxed(),
        arb_done().prop_map(Response::CommitOffset).boxed(),
        arb_offset_reply().prop_map(Response::FetchOffset).boxed(),
        arb_offset_reply().prop_map(Response::OffsetForTime).boxed(),
        arb_sent_back_reply().prop_map(Response::SendBack).boxed(),
        arb_count_reply().prop_map(Response::DlqResend).boxed(),
        arb_done().prop_map(Response::TopicCreate).boxed(),
        arb_done().prop_map(Response::TopicUpdate).boxed(),
        arb_done().prop_map(Response::TopicDelete).boxed(),
        arb_topic_list_reply().prop_map(Response::TopicList).boxed(),
        arb_string()
            .prop_map(|json| Response::BrokerStatus(cmd::BrokerStatusReply { json }))
            .boxed(),
        arb_topic_reply().prop_map(Response::TopicDescribe).boxed(),
        arb_records_reply().prop_map(Response::MessageById).boxed(),
        arb_records_reply().prop_map(Response::MessageByKey).boxed(),
        arb_heartbeat_reply().prop_map(Response::Heartbeat).boxed(),
        arb_done().prop_map(Response::LeaveGroup).boxed(),
        arb_group_list_reply().prop_map(Response::GroupList).boxed(),
        arb_group_reply().prop_map(Response::GroupDescribe).boxed(),
        arb_done().prop_map(Response::GroupResetOffset).boxed(),
        arb_done().prop_map(Response::GroupDelete).boxed(),
        arb_plugins_reply().prop_map(Response::PluginLoad).boxed(),
        arb_plugins_reply().prop_map(Response::PluginReload).boxed(),
        arb_done().prop_map(Response::PluginUnload).boxed(),
        arb_plugins_reply().prop_map(Response::PluginList).boxed(),
        arb_plugins_reply()
            .prop_map(Response::PluginDescribe)
            .boxed(),
        arb_done().prop_map(Response::PluginAttach).boxed(),
        arb_done().prop_map(Response::PluginDetach).boxed(),
        arb_bytes(64)
            .prop_map(|body| Response::Raft(cmd::RaftReply { body }))
            .boxed(),
        arb_cluster_info_reply()
            .prop_map(Response::ClusterInfo)
            .boxed(),
        arb_cluster_info_reply()
            .prop_map(Response::ClusterVoter)
            .boxed(),
        arb_topic_route_reply()
            .prop_map(Response::TopicRoute)
            .boxed(),
        arb_topic_route_reply()
            .prop_map(Response::TopicCreateOn)
            .boxed(),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            arb_bytes(64),
            (
                any::<u64>(),
                any::<u64>(),
                vec((any::<u64>(), any::<u64>()), 0..4),
            ),
        )
            .prop_map(|(epoch, start, next, end, bytes, (he, hend, eps))| {
                Response::ReplicaFetch(cmd::ReplicaChunk {
                    epoch,
                    start,
                    next,
                    end,
                    bytes,
                    history_epoch: he,
                    history_end: hend,
                    epochs: eps
                        .into_iter()
                        .map(|(epoch, start)| cmd::EpochStart { epoch, start })
                        .collect(),
                })
            })
            .boxed(),
        (arb_bytes(64), vec((arb_string(), arb_bytes(32)), 0..3))
            .prop_map(|(json, modules)| {
                Response::ReplicaState(cmd::ReplicaStateReply { json, modules })
            })
            .boxed(),
        arb_cluster_info_reply()
            .prop_map(Response::ClusterElect)
            .boxed(),
        (
            any::<u8>(),
            any::<[u8; 16]>(),
            any::<(u32, u32, u32)>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(mechanism, salt, (m_kib, t, p), server_nonce)| {
                Response::AuthStart(cmd::AuthStartReply {
                    mechanism,
                    salt,
                    m_kib,
                    t,
                    p,
                    server_nonce,
                })
            })
            .boxed(),
        any::<[u8; 32]>()
            .prop_map(|server_signature| {
                Response::AuthFinish(cmd::AuthFinishReply { server_signature })
            })
            .boxed(),
        arb_done().prop_map(Response::UserCreate).boxed(),
        arb_done().prop_map(Response::UserPassword).boxed(),
        arb_done().prop_map(Response::UserDelete).boxed(),
        arb_string()
            .prop_map(|json| Response::UserList(cmd::JsonReply { json }))
            .boxed(),
        arb_done().prop_map(Response::AclGrant).boxed(),
        arb_done().prop_map(Response::AclRevoke).boxed(),
        arb_string()
            .prop_map(|json| Response::AclList(cmd::JsonReply { json }))
            .boxed(),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    Union::new(response_strategies())
}

/// A whole response frame (its chunks concatenated).
fn response_frame(resp: &Response) -> Bytes {
    let chunks = resp.encode_chunks();
    Bytes::from(chunks.concat())
}

/// `body` with the bytes at some positions replaced.
fn corrupt(body: &Bytes, flips: &[(prop::sample::Index, u8)]) -> Bytes {
    let mut bad = body.to_vec();
    if !bad.is_empty() {
        for (i, v) in flips {
            let at = i.index(bad.len());
            bad[at] = *v;
        }
    }
    Bytes::from(bad)
}

/// Every command code the protocol knows.
fn all_commands() -> Vec<Command> {
    (0..=u16::MAX).filter_map(Command::from_u16).collect()
}

/// One value drawn from each strategy.
fn one_of_each<T: std::fmt::Debug>(strategies: Vec<BoxedStrategy<T>>) -> Vec<T> {
    let mut runner = TestRunner::deterministic();
    strategies
        .into_iter()
        .map(|s| s.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// Round trip of one typed reply through its own body layout.
fn typed_reply_round_trip<C: Call>(reply: &C::Reply) -> C::Reply {
    let chunks = cmd::encode_reply(C::COMMAND, reply);
    let frame = Bytes::from(chunks.concat());
    let (header, body) = split_frame(&frame, u32::MAX).unwrap();
    assert_eq!(header.aux, C::COMMAND as u16);
    cmd::decode_body::<C::Reply>(body).unwrap()
}

proptest! {
    #[test]
    fn requests_round_trip(req in arb_request()) {
        let frame = req.encode();
        let (header, body) = split_frame(&frame, u32::MAX).unwrap();
        prop_assert_eq!(header.code, req.command() as u16);
        prop_assert_eq!(header.aux, 0);
        let back = Request::decode(&header, body).unwrap();
        prop_assert_eq!(back.command(), req.command());
        prop_assert_eq!(back, req);
    }

    #[test]
    fn responses_round_trip(resp in arb_response()) {
        let cmd = resp.command();
        let (header, body) = split_frame(&response_frame(&resp), u32::MAX).unwrap();
        prop_assert_eq!(Status::from_u16(header.code), Status::Ok);
        prop_assert_eq!(header.aux, cmd as u16);
        prop_assert_eq!(Response::decode(cmd, body).unwrap(), resp);
    }

    #[test]
    fn typed_replies_round_trip(
        pull in arb_pull_reply(),
        records in arb_records_reply(),
        group in arb_group_reply(),
        plugins in arb_plugins_reply(),
    ) {
        // The typed path (`encode_reply` / `decode_body`) a client's `call` takes.
        prop_assert_eq!(typed_reply_round_trip::<cmd::Pull>(&pull), pull);
        prop_assert_eq!(typed_reply_round_trip::<cmd::MessageById>(&records), records);
        prop_assert_eq!(typed_reply_round_trip::<cmd::GroupDescribe>(&group), group);
        prop_assert_eq!(typed_reply_round_trip::<cmd::PluginList>(&plugins), plugins);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        code in prop_oneof![0u16..80, any::<u16>()],
        body in vec(any::<u8>(), 0..200),
    ) {
        let header = FrameHeader { length: body.len() as u32 + 4, code, aux: 0 };
        let _ = Request::decode(&header, Bytes::from(body.clone()));
        if let Some(cmd) = Command::from_u16(code) {
            let _ = Response::decode(cmd, Bytes::from(body));
        }
    }

    #[test]
    fn corrupted_frames_never_panic(
        req in arb_request(),
        resp in arb_response(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Valid bodies with a few bytes changed reach deeper into the decoders than noise.
        let frame = req.encode();
        let (header, body) = split_frame(&frame, u32::MAX).unwrap();
        let _ = Request::decode(&header, corrupt(&body, &flips));
        let (_, body) = split_frame(&response_frame(&resp), u32::MAX).unwrap();
        let _ = Response::decode(resp.command(), corrupt(&body, &flips));
    }

    #[test]
    fn truncated_requests_are_errors(req in arb_request(), cut in 1usize..40) {
        let frame = req.encode();
        let (header, body) = split_frame(&frame, u32::MAX).unwrap();
        if body.len() >= cut {
            let short = body.slice(..body.len() - cut);
            prop_assert!(Request::decode(&header, short).is_err());
        }
    }

    #[test]
    fn requests_with_trailing_bytes_are_errors(req in arb_request(), extra in vec(any::<u8>(), 1..8)) {
        let frame = req.encode();
        let (header, body) = split_frame(&frame, u32::MAX).unwrap();
        let long = Bytes::from([&body[..], &extra[..]].concat());
        prop_assert!(Request::decode(&header, long).is_err());
    }
}

#[test]
fn one_strategy_per_command() {
    let all: BTreeSet<u16> = all_commands().iter().map(|c| *c as u16).collect();
    let requests: Vec<u16> = one_of_each(request_strategies())
        .iter()
        .map(|r| r.command() as u16)
        .collect();
    let responses: Vec<u16> = one_of_each(response_strategies())
        .iter()
        .map(|r| r.command() as u16)
        .collect();
    for (what, got) in [("request", requests), ("response", responses)] {
        let set: BTreeSet<u16> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "a command has two {what} strategies");
        assert_eq!(
            set, all,
            "every command needs exactly one {what} strategy in tests.rs"
        );
    }
}

#[test]
fn every_command_code_decodes_to_its_own_request() {
    let samples = one_of_each(request_strategies());
    for code in 0..=u16::MAX {
        let empty = FrameHeader {
            length: 4,
            code,
            aux: 0,
        };
        let Some(cmd) = Command::from_u16(code) else {
            assert_eq!(
                Request::decode(&empty, Bytes::new()),
                Err(FrameError::UnknownCommand(code)),
                "code {code}"
            );
            continue;
        };
        // Whatever the body, a known code is never an unknown command.
        match Request::decode(&empty, Bytes::new()) {
            Ok(r) => assert_eq!(r.command(), cmd),
            Err(e) => assert!(
                !matches!(e, FrameError::UnknownCommand(_)),
                "{cmd:?} is missing from the table in cmd/mod.rs: {e}"
            ),
        }
        let sample = samples
            .iter()
            .find(|r| r.command() == cmd)
            .unwrap_or_else(|| panic!("no Request variant for {cmd:?} (table in cmd/mod.rs)"));
        let frame = sample.encode();
        let (header, body) = split_frame(&frame, u32::MAX).unwrap();
        assert_eq!(header.code, code);
        let req = Request::decode(&header, body).unwrap();
        assert_eq!(req.command(), cmd);
        assert_eq!(&req, sample);
    }
}

#[test]
fn every_command_has_a_reply_layout() {
    for cmd in all_commands() {
        // An empty body is a valid `Done` or a truncated reply, never a missing layout.
        match Response::decode(cmd, Bytes::new()) {
            Ok(r) => assert_eq!(r.command(), cmd),
            Err(e) => assert!(
                !matches!(
                    e,
                    DecodeError::Invalid {
                        field: "command",
                        ..
                    }
                ),
                "{cmd:?}: {e}"
            ),
        }
    }
}

#[test]
fn long_polls_announce_their_wait() {
    let pull = cmd::Pull {
        topic: "t".into(),
        queue_id: 0,
        offset: 0,
        max_messages: 1,
        max_bytes: 1,
        long_poll_ms: 1500,
        filter: FilterSpec::All,
        plugins: Vec::new(),
    };
    assert_eq!(pull.wait_ms(), 1500);
    assert_eq!(Request::from(pull).wait_ms(), 1500);
    let poll = cmd::PollTransactionChecks {
        group: "g".into(),
        producer_id: "p".into(),
        max: 1,
        wait_ms: 250,
    };
    assert_eq!(Request::from(poll).wait_ms(), 250);
    assert_eq!(Request::from(cmd::TopicList).wait_ms(), 0);
    assert_eq!(
        cmd::encode_request(&cmd::TopicList),
        Request::from(cmd::TopicList).encode()
    );
}

#[test]
fn oversized_and_undersized_frame_headers_are_refused() {
    let mut h = [0u8; FRAME_HEADER];
    h[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    assert_eq!(
        FrameHeader::parse(&h, 1 << 20).unwrap_err().status(),
        Status::FrameTooLarge
    );
    h[0..4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        FrameHeader::parse(&h, 1 << 20).unwrap_err().status(),
        Status::BadRequest
    );
    let header = FrameHeader {
        length: 4,
        code: 999,
        aux: 0,
    };
    assert_eq!(
        Request::decode(&header, Bytes::new()).unwrap_err().status(),
        Status::UnknownCommand
    );
}

#[test]
fn error_frames_carry_status_and_message() {
    let f = encode_error(
        Status::TopicNotFound,
        Command::Send as u16,
        "topic \"x\" does not exist",
    );
    let (h, body) = split_frame(&f, 1 << 20).unwrap();
    assert_eq!(
        (Status::from_u16(h.code), h.aux),
        (Status::TopicNotFound, 10)
    );
    assert_eq!(decode_error(body), "topic \"x\" does not exist");
}

/// docs/PROTOCOL.md §10.16: the ClusterInfo worked example decodes to what the text says.
#[test]
fn cluster_info_worked_example_matches_the_document() {
    let hex = "7300000000005b000200633101000000 00000000020000000000000003000000 00000000070000000000000001000200 0000000000000f003132372e302e302e 313a3130393132010700000000000000 010002000000000000000100610f0031 32372e302e302e313a31303931320100 98a8e69a010000";
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .collect::<String>()
        .as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect();
    let (header, body) = split_frame(&Bytes::from(bytes), u32::MAX).unwrap();
    assert_eq!((header.code, header.aux), (0, Command::ClusterInfo as u16));
    let reply: cmd::ClusterInfoReply = cmd::decode_body(body).unwrap();
    assert_eq!(
        reply,
        cmd::ClusterInfoReply {
            cluster_id: "c1".into(),
            node_id: 1,
            leader: 2,
            term: 3,
            applied: 7,
            nodes: vec![cmd::ControllerNode {
                id: 2,
                addr: "127.0.0.1:10912".into(),
                voter: true,
                matched: 7,
            }],
            brokers: vec![cmd::ClusterBroker {
                id: 2,
                set: "a".into(),
                addr: "127.0.0.1:10912".into(),
                alive: true,
                last_seen_ms: 1_764_806_400_000,
            }],
            // The example ends after the brokers: no sets section (an older reply).
            sets: vec![],
            replicas: vec![],
        }
    );
    let request = cmd::encode_request(&cmd::ClusterInfo {});
    assert_eq!(&request[..], &[0x04, 0, 0, 0, 0x5b, 0, 0, 0]);
}

/// The password handshake of docs/PROTOCOL.md §10.23, byte for byte: user "alice",
/// password "pencil-42", small argon2id costs so the example is quick to recompute.
#[test]
fn auth_worked_example_matches_the_document() {
    use crate::scram;
    let unhex = |s: &str| crate::text::unhex(&s.split_whitespace().collect::<String>()).unwrap();
    let start = cmd::AuthStart {
        user: "alice".into(),
        client_nonce: std::array::from_fn(|i| i as u8 + 1),
    };
    let reply = cmd::AuthStartReply {
        mechanism: cmd::MECHANISM_SCRAM_ARGON2ID,
        salt: std::array::from_fn(|i| 0x10 + i as u8),
        m_kib: 64,
        t: 1,
        p: 1,
        server_nonce: std::array::from_fn(|i| 0xa0 + i as u8),
    };
    let params = scram::Params {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    let salted = scram::salted_password("pencil-42", &reply.salt, params).unwrap();
    let mut a = bytes::BytesMut::new();
    start.encode(&mut a);
    let mut b = bytes::BytesMut::new();
    reply.encode(&mut b);
    let am = scram::auth_message(&a, &b);
    assert_eq!(am.len(), 114, "the document's AuthMessage length");
    assert_eq!(am, scram::auth_message_of(&start, &reply));
    let proof = scram::client_proof(&salted, &am);
    let client_key = scram::client_key(&salted);
    let stored = scram::sha256(&client_key);
    let server_key = scram::server_key(&salted);
    let signature = scram::hmac(&server_key, &am);
    let hex = |v: &[u8]| crate::text::hex(v);
    assert_eq!(
        hex(&cmd::encode_request(&start)),
        "2b000000030000000500616c6963650102030405060708090a0b0c0d0e0f10\
         1112131415161718191a1b1c1d1e1f20"
    );
    assert_eq!(
        hex(&Response::AuthStart(reply).encode_chunks().concat()),
        "410000000000030001101112131415161718191a1b1c1d1e1f4000000001000000\
         01000000a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    );
    assert_eq!(
        hex(&client_key),
        "af9656af877fef628b91986cf67b56d73a92c7752e964ea3db4ef90e84ef60cc"
    );
    assert_eq!(
        hex(&stored),
        "8d18c3b6044916a5d3ffcddd75c43fcfb01b81cbb2ad3be3bcc0918ac404b13d"
    );
    assert_eq!(
        hex(&server_key),
        "b7212060021f2268b28de6fde1fa24a1f40041666b8d33023807e60b49d26654"
    );
    assert_eq!(salted.to_vec(), unhex(EXAMPLE_SALTED));
    assert_eq!(proof.to_vec(), unhex(EXAMPLE_PROOF));
    assert_eq!(signature.to_vec(), unhex(EXAMPLE_SIGNATURE));
}

// Also computed independently with Python's argon2-cffi, hmac and hashlib from the
// document's description (§10.23).
const EXAMPLE_SALTED: &str = "aa43272fe468aa62806870761afe20132c078718dcf46c817b6bee9d7c88043b";
const EXAMPLE_PROOF: &str = "e18ed160db89ab9def9e2d34f46307503378660aaeec60bb3a83b816a418fb35";
const EXAMPLE_SIGNATURE: &str = "61131167a72ae6f1f6bc655f197d63eee29e8d9ba220f15d3315619f596d4745";
