//! Property tests: every request and response round-trips; no input makes decoding panic.

use bytes::Bytes;
use proptest::prelude::*;

use crate::*;

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,20}"
}

fn arb_message() -> impl Strategy<Value = WireMessage> {
    (
        any::<u128>(),
        any::<i64>(),
        any::<u32>(),
        arb_string(),
        proptest::collection::vec(arb_string(), 0..4),
        proptest::collection::vec((arb_string(), arb_string()), 0..4),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(id, born_timestamp, flags, tag, keys, properties, body)| WireMessage {
                id,
                born_timestamp,
                flags,
                tag,
                keys,
                properties,
                body: Bytes::from(body),
            },
        )
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), arb_string())
            .prop_map(|(version, client_id)| Request::Hello { version, client_id }),
        (arb_string(), any::<bool>()).prop_map(|(topic, create)| Request::Route { topic, create }),
        (
            arb_string(),
            any::<u32>(),
            proptest::collection::vec(arb_message(), 0..5)
        )
            .prop_map(|(topic, queue_id, messages)| Request::Send {
                topic,
                queue_id,
                messages
            }),
        (
            arb_string(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            arb_plugin_refs()
        )
            .prop_map(
                |(topic, queue_id, offset, max_messages, max_bytes, long_poll_ms, plugins)| {
                    Request::Pull {
                        topic,
                        queue_id,
                        offset,
                        max_messages,
                        max_bytes,
                        long_poll_ms,
                        filter: FilterSpec::Tag("a || b".into()),
                        plugins,
                    }
                }
            ),
        (
            arb_string(),
            proptest::collection::vec(any::<u8>(), 0..200),
            arb_pairs(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(name, wasm, config, memory_limit_bytes, time_limit_ms)| {
                Request::PluginLoad {
                    name,
                    wasm: Bytes::from(wasm),
                    config,
                    memory_limit_bytes,
                    time_limit_ms,
                }
            }),
        (
            arb_string(),
            proptest::collection::vec(any::<u8>(), 0..50),
            proptest::option::of(arb_pairs()),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(name, wasm, config, memory_limit_bytes, time_limit_ms)| {
                Request::PluginReload {
                    name,
                    wasm: Bytes::from(wasm),
                    config,
                    memory_limit_bytes,
                    time_limit_ms,
                }
            }),
        (arb_string(), any::<bool>())
            .prop_map(|(name, force)| Request::PluginUnload { name, force }),
        Just(Request::PluginList),
        arb_string().prop_map(|name| Request::PluginDescribe { name }),
        (arb_string(), arb_string())
            .prop_map(|(name, topic)| Request::PluginAttach { name, topic }),
        (arb_string(), arb_string())
            .prop_map(|(name, topic)| Request::PluginDetach { name, topic }),
        (arb_string(), arb_string(), any::<u32>(), any::<u64>()).prop_map(
            |(group, topic, queue_id, offset)| Request::CommitOffset {
                group,
                topic,
                queue_id,
                offset
            }
        ),
        (arb_string(), arb_string(), any::<u32>()).prop_map(|(group, topic, queue_id)| {
            Request::FetchOffset {
                group,
                topic,
                queue_id,
            }
        }),
        (arb_string(), any::<u32>(), any::<i64>()).prop_map(|(topic, queue_id, timestamp_ms)| {
            Request::OffsetForTime {
                topic,
                queue_id,
                timestamp_ms,
            }
        }),
        (arb_string(), any::<u32>())
            .prop_map(|(topic, queues)| Request::TopicCreate { topic, queues }),
        (arb_string(), any::<u32>())
            .prop_map(|(topic, queues)| Request::TopicUpdate { topic, queues }),
        arb_string().prop_map(|topic| Request::TopicDelete { topic }),
        Just(Request::TopicList),
        arb_string().prop_map(|topic| Request::TopicDescribe { topic }),
        any::<u128>().prop_map(|id| Request::MessageById { id }),
        (
            arb_string(),
            arb_string(),
            any::<u32>(),
            any::<i64>(),
            any::<i64>()
        )
            .prop_map(
                |(topic, key, max, begin_ms, end_ms)| Request::MessageByKey {
                    topic,
                    key,
                    max,
                    begin_ms,
                    end_ms
                }
            ),
        (
            arb_string(),
            arb_string(),
            any::<bool>(),
            proptest::collection::vec((arb_string(), arb_plugin_refs()), 0..3),
            arb_refs()
        )
            .prop_map(|(group, member_id, b, topics, held)| Request::Heartbeat {
                group,
                member_id,
                mode: if b {
                    GroupMode::Broadcasting
                } else {
                    GroupMode::Clustering
                },
                subscriptions: topics
                    .into_iter()
                    .enumerate()
                    .map(|(i, (topic, plugins))| Subscription {
                        topic: topic.clone(),
                        filter: match i % 3 {
                            0 => FilterSpec::All,
                            1 => FilterSpec::Tag(topic),
                            _ => FilterSpec::Sql(topic),
                        },
                        plugins,
                    })
                    .collect(),
                held
            }),
        (arb_string(), arb_string())
            .prop_map(|(group, member_id)| Request::LeaveGroup { group, member_id }),
        Just(Request::GroupList),
        arb_string().prop_map(|group| Request::GroupDescribe { group }),
        (
            arb_string(),
            arb_string(),
            0u8..4,
            any::<i64>(),
            any::<bool>()
        )
            .prop_map(|(group, topic, k, v, force)| {
                let target = match k {
                    0 => ResetTarget::First,
                    1 => ResetTarget::Last,
                    2 => ResetTarget::Timestamp(v),
                    _ => ResetTarget::Offset(v as u64),
                };
                Request::GroupResetOffset {
                    group,
                    topic,
                    target,
                    force,
                }
            }),
        (arb_string(), any::<bool>())
            .prop_map(|(group, force)| Request::GroupDelete { group, force }),
    ]
}

fn arb_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((arb_string(), arb_string()), 0..4)
}

fn arb_plugin_refs() -> impl Strategy<Value = Vec<PluginRef>> {
    proptest::collection::vec(
        (arb_string(), 0u8..3).prop_map(|(name, p)| PluginRef {
            name,
            on_error: PluginFailurePolicy::from_u8(p).unwrap(),
        }),
        0..4,
    )
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
        proptest::collection::vec(arb_string(), 0..3),
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

fn arb_refs() -> impl Strategy<Value = Vec<QueueRef>> {
    proptest::collection::vec((arb_string(), any::<u32>()), 0..4)
}

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

fn arb_response() -> impl Strategy<Value = (Command, Response)> {
    prop_oneof![
        (any::<u16>(), arb_string(), any::<u32>(), any::<u32>()).prop_map(
            |(version, broker, max_message_size, max_frame)| (
                Command::Hello,
                Response::Hello {
                    version,
                    broker,
                    max_message_size,
                    max_frame
                }
            )
        ),
        any::<u32>().prop_map(|queues| (Command::Route, Response::Route { queues })),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u128>(), any::<u64>(), any::<u64>()), 0..5)
        )
            .prop_map(|(queue_id, r)| (
                Command::Send,
                Response::Send {
                    queue_id,
                    receipts: r
                        .into_iter()
                        .map(|(id, queue_offset, phys_offset)| SendReceipt {
                            id,
                            queue_offset,
                            phys_offset
                        })
                        .collect()
                }
            )),
        (
            0u8..5,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..4)
        )
            .prop_map(|(s, next_offset, min_offset, max_offset, bodies)| (
                Command::Pull,
                Response::Pull {
                    status: PullStatus::from_u8(s).unwrap(),
                    next_offset,
                    min_offset,
                    max_offset,
                    records: bodies.iter().map(|b| record(b)).collect()
                }
            )),
        proptest::option::of(any::<u64>())
            .prop_map(|offset| (Command::FetchOffset, Response::Offset { offset })),
        Just((Command::TopicDelete, Response::Done)),
        Just((Command::PluginAttach, Response::Done)),
        proptest::collection::vec(arb_plugin_info(), 0..3)
            .prop_map(|l| (Command::PluginList, Response::Plugins(l))),
        proptest::collection::vec((arb_string(), any::<u32>()), 0..4).prop_map(|l| (
            Command::TopicList,
            Response::Topics(
                l.into_iter()
                    .map(|(name, queues)| TopicSummary { name, queues })
                    .collect()
            )
        )),
        (
            arb_string(),
            proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..4)
        )
            .prop_map(|(name, q)| (
                Command::TopicDescribe,
                Response::Topic {
                    name,
                    queues: q
                        .into_iter()
                        .map(|(queue_id, min_offset, max_offset)| QueueInfo {
                            queue_id,
                            min_offset,
                            max_offset
                        })
                        .collect()
                }
            )),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            arb_refs()
        )
            .prop_map(
                |(generation, session_timeout_ms, heartbeat_interval_ms, settled, owned)| (
                    Command::Heartbeat,
                    Response::Heartbeat {
                        generation,
                        session_timeout_ms,
                        heartbeat_interval_ms,
                        settled,
                        owned
                    }
                )
            ),
        proptest::collection::vec((arb_string(), any::<u32>()), 0..3).prop_map(|g| (
            Command::GroupList,
            Response::Groups(
                g.into_iter()
                    .map(|(name, members)| GroupSummary {
                        name,
                        mode: GroupMode::Clustering,
                        members
                    })
                    .collect()
            )
        )),
        (
            arb_string(),
            arb_string(),
            arb_refs(),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
            proptest::option::of("[a-z]{1,8}")
        )
            .prop_map(|(name, member_id, owned, committed, max_offset, owner)| (
                Command::GroupDescribe,
                Response::Group {
                    name,
                    mode: GroupMode::Broadcasting,
                    members: vec![MemberInfo {
                        member_id,
                        client_id: "c".into(),
                        remote: "127.0.0.1:1".into(),
                        topics: vec!["t".into()],
                        owned
                    }],
                    queues: vec![GroupQueue {
                        topic: "t".into(),
                        queue_id: 1,
                        committed,
                        max_offset,
                        owner
                    }],
                }
            )),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in arb_request()) {
        let frame = req.encode();
        let (header, body) = split_frame(&frame, u32::MAX).unwrap();
        prop_assert_eq!(Request::decode(&header, body).unwrap(), req);
    }

    #[test]
    fn responses_round_trip((cmd, resp) in arb_response()) {
        let chunks = resp.encode_chunks(cmd);
        let frame: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let (header, body) = split_frame(&Bytes::from(frame), u32::MAX).unwrap();
        prop_assert_eq!(Status::from_u16(header.code), Status::Ok);
        prop_assert_eq!(header.aux, cmd as u16);
        prop_assert_eq!(Response::decode(cmd, body).unwrap(), resp);
    }

    #[test]
    fn arbitrary_bytes_never_panic(code in 0u16..50, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let header = FrameHeader { length: body.len() as u32 + 4, code, aux: 0 };
        let _ = Request::decode(&header, Bytes::from(body.clone()));
        if let Some(cmd) = Command::from_u16(code) {
            let _ = Response::decode(cmd, Bytes::from(body));
        }
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
