//! The console's JSON API (docs/CONSOLE.md lists every route). Each handler turns its input
//! into protocol requests and its replies into JSON.

use std::collections::BTreeMap;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use quiver_protocol::cmd::{self, Records};
use quiver_protocol::{
    names, FilterSpec, GroupMode, RecordView, Request, ResetTarget, Response, WireMessage,
};
use serde::Deserialize;

use crate::auth::perm::Resource;
use quiver_protocol::cmd::actions::{CONSUME, DESCRIBE};
use serde_json::{json, Value};

use super::{ApiError, ConsoleState};

type ApiResult = Result<Json<Value>, ApiError>;

/// Most messages one search or listing returns.
const MAX_LIST: u32 = 1000;

/// The routes under `/api`.
pub(crate) fn api_routes() -> Router<ConsoleState> {
    Router::new()
        .route("/overview", get(overview))
        .route("/login", post(super::login::login))
        .route("/logout", post(super::login::logout))
        .route("/whoami", get(super::login::whoami))
        .route("/topics", get(topics).post(create_topic))
        .route(
            "/topics/{name}",
            get(topic).put(update_topic).delete(delete_topic),
        )
        .route("/topics/{name}/messages", post(send_message))
        .route("/groups", get(groups))
        .route("/groups/{name}", get(group).delete(delete_group))
        .route("/groups/{name}/reset", post(reset_group))
        .route("/messages", get(messages))
        .route("/messages/{id}/resend", post(resend_message))
        .route("/dlq", get(dlqs))
        .route("/dlq/{group}", get(dlq))
        .route("/dlq/{group}/resend", post(dlq_resend))
        .route("/plugins", get(plugins).post(load_plugin))
        .route("/plugins/{name}", axum::routing::delete(unload_plugin))
        .route("/plugins/{name}/reload", post(reload_plugin))
        .route("/plugins/{name}/attach", post(attach_plugin))
        .route("/plugins/{name}/detach", post(detach_plugin))
        .route("/cluster", get(cluster))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NotFound",
                "no such API route (docs/CONSOLE.md lists them)",
            )
        })
}

/// Sends one request through the node, as a QUIC client's would be answered.
async fn call(s: &ConsoleState, req: impl Into<Request>) -> Result<Response, ApiError> {
    let caller = super::login::caller(s.local);
    Ok(crate::net::answer(req.into(), &s.broker, s.member.as_ref(), &caller, &s.stop).await?)
}

/// Refuses (403, `AccessDenied`) a caller without any of `actions` on `resource`: for the
/// pages that read broker state directly instead of through a command.
fn require(
    s: &ConsoleState,
    actions: u16,
    resource: crate::auth::perm::Resource,
) -> Result<(), ApiError> {
    let caller = super::login::caller(s.local);
    let need = crate::auth::perm::Need { actions, resource };
    s.broker
        .auth()
        .check(&caller, std::slice::from_ref(&need))
        .map_err(|e| crate::broker::BrokerError::from(e).into())
}

/// The reply of the command just sent (any other reply is a broker bug).
macro_rules! reply {
    ($resp:expr, $variant:ident) => {
        match $resp {
            Response::$variant(r) => r,
            other => {
                return Err(ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal",
                    format!("unexpected reply to {}", other.command() as u16),
                ))
            }
        }
    };
}

fn mode_name(m: GroupMode) -> &'static str {
    match m {
        GroupMode::Clustering => "clustering",
        GroupMode::Broadcasting => "broadcasting",
    }
}

fn parse_id(id: &str) -> Result<u128, ApiError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "a message id is 32 hex digits, got {id:?}"
        )));
    }
    u128::from_str_radix(id, 16).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A stored message as JSON: every field, the body as base64 (`body_base64`) and, when it
/// is UTF-8, as text (`body_text`).
fn message_json(rec: &Bytes) -> Result<Value, ApiError> {
    let v = RecordView::parse_unchecked_crc(rec).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("a stored record did not parse: {e}"),
        )
    })?;
    let properties: serde_json::Map<String, Value> = v
        .properties()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let body = v.body();
    Ok(json!({
        "id": format!("{:032x}", v.msg_id()),
        "topic": v.topic(),
        "queue": v.queue_id(),
        "offset": v.queue_offset(),
        "commit_log_offset": v.phys_offset(),
        "tag": if v.tag().is_empty() { None } else { Some(v.tag()) },
        "keys": v.keys().collect::<Vec<_>>(),
        "properties": properties,
        "born_timestamp": v.born_timestamp(),
        "store_timestamp": v.store_timestamp(),
        "born_host": v.born_host().to_string(),
        "reconsume_times": v.reconsume_times(),
        "flags": v.flags(),
        "body_len": body.len(),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
        "body_text": std::str::from_utf8(body).ok(),
    }))
}

fn messages_json(records: &[Bytes]) -> Result<Value, ApiError> {
    Ok(Value::Array(
        records
            .iter()
            .map(message_json)
            .collect::<Result<Vec<_>, _>>()?,
    ))
}

async fn overview(State(s): State<ConsoleState>) -> ApiResult {
    // What BrokerStatus needs over QUIC.
    require(&s, DESCRIBE, Resource::Cluster)?;
    Ok(Json(super::status(&s.broker, s.member.as_ref()).await?))
}

async fn topics(State(s): State<ConsoleState>) -> ApiResult {
    let list = reply!(call(&s, cmd::TopicList).await?, TopicList).topics;
    let store = s.broker.store();
    let rows: Vec<Value> = list
        .iter()
        .map(|t| {
            let messages: u64 = (0..t.queues)
                .map(|q| {
                    let (min, max) = store.queue_bounds(&t.name, q);
                    max.saturating_sub(min)
                })
                .sum();
            json!({
                "topic": t.name,
                "queues": t.queues,
                "messages": messages,
                "system": names::is_system_topic(&t.name),
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

async fn describe(s: &ConsoleState, name: &str) -> Result<cmd::TopicReply, ApiError> {
    let r = call(
        s,
        cmd::TopicDescribe {
            topic: name.to_string(),
        },
    )
    .await?;
    Ok(reply!(r, TopicDescribe))
}

async fn topic(State(s): State<ConsoleState>, Path(name): Path<String>) -> ApiResult {
    let d = describe(&s, &name).await?;
    let queues: Vec<Value> = d
        .queues
        .iter()
        .map(|q| {
            json!({
                "queue": q.queue_id,
                "min_offset": q.min_offset,
                "max_offset": q.max_offset,
                "messages": q.max_offset.saturating_sub(q.min_offset),
            })
        })
        .collect();
    Ok(Json(json!({ "topic": d.name, "queues": queues })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    topic: String,
    queues: Option<u32>,
}

async fn create_topic(State(s): State<ConsoleState>, Json(t): Json<NewTopic>) -> ApiResult {
    let queues = t.queues.unwrap_or(s.broker.config().broker.default_queues);
    call(
        &s,
        cmd::TopicCreate {
            topic: t.topic.clone(),
            queues,
        },
    )
    .await?;
    Ok(Json(json!({ "topic": t.topic, "queues": queues })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicChange {
    queues: u32,
    #[serde(default)]
    force: bool,
}

async fn update_topic(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Json(c): Json<TopicChange>,
) -> ApiResult {
    let d = describe(&s, &name).await?;
    let now = d.queues.len() as u32;
    if c.queues < now && !c.force {
        let left: u64 = d
            .queues
            .iter()
            .filter(|q| q.queue_id >= c.queues)
            .map(|q| q.max_offset.saturating_sub(q.min_offset))
            .sum();
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "NeedsForce",
            format!(
                "shrinking {name} from {now} to {} queues leaves {left} message(s) in queues \
                 {}..{} unread by new consumers; confirm with force",
                c.queues,
                c.queues,
                now - 1
            ),
        ));
    }
    call(
        &s,
        cmd::TopicUpdate {
            topic: name.clone(),
            queues: c.queues,
        },
    )
    .await?;
    Ok(Json(json!({ "topic": name, "queues": c.queues })))
}

async fn delete_topic(State(s): State<ConsoleState>, Path(name): Path<String>) -> ApiResult {
    call(
        &s,
        cmd::TopicDelete {
            topic: name.clone(),
        },
    )
    .await?;
    Ok(Json(json!({ "topic": name, "deleted": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestMessage {
    #[serde(default)]
    body: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    queue: Option<u32>,
}

/// A new message id: the time in the top 48 bits, then this process's random bits and a
/// counter (the SDK's layout, docs/PROTOCOL.md §4).
fn new_id(now_ms: i64) -> u128 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static BITS: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let bits = *BITS.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() & ((1 << 48) - 1)
    });
    let ms = (now_ms.max(0) as u128) & ((1 << 48) - 1);
    ms << 80 | (bits as u128) << 32 | COUNTER.fetch_add(1, Ordering::Relaxed) as u128
}

async fn send_message(
    State(s): State<ConsoleState>,
    ConnectInfo(crate::admin_http::Peer(remote)): ConnectInfo<crate::admin_http::Peer>,
    Path(name): Path<String>,
    Json(m): Json<TestMessage>,
) -> ApiResult {
    let d = describe(&s, &name).await?;
    let n = (d.queues.len() as u32).max(1);
    let queue = match (m.queue, m.keys.first()) {
        (Some(q), _) => q,
        (None, Some(k)) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() % u64::from(n)) as u32
        }
        (None, None) => 0,
    };
    let now = s.broker.clock().now_ms();
    let msg = WireMessage {
        id: new_id(now),
        born_timestamp: now,
        flags: 0,
        tag: m.tag,
        keys: m.keys.into_iter().filter(|k| !k.is_empty()).collect(),
        properties: m.properties.into_iter().collect(),
        body: Bytes::from(m.body.into_bytes()),
    };
    let sent = crate::net::answer(
        cmd::Send {
            topic: name.clone(),
            queue_id: queue,
            messages: vec![msg],
        }
        .into(),
        &s.broker,
        s.member.as_ref(),
        &super::login::caller(remote),
        &s.stop,
    )
    .await?;
    let sent = reply!(sent, Send);
    let r = sent.receipts.first().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            "the broker stored no message",
        )
    })?;
    Ok(Json(json!({
        "id": format!("{:032x}", r.id),
        "topic": name,
        "queue": sent.queue_id,
        "offset": r.queue_offset,
    })))
}

async fn groups(State(s): State<ConsoleState>) -> ApiResult {
    let list = reply!(call(&s, cmd::GroupList).await?, GroupList).groups;
    let lag = s.broker.gauges().await.lag;
    let rows: Vec<Value> = list
        .iter()
        .map(|g| {
            let total: u64 = lag
                .iter()
                .filter(|l| l.group == g.name)
                .map(|l| l.lag)
                .sum();
            json!({
                "group": g.name,
                "mode": mode_name(g.mode),
                "members": g.members,
                "lag": total,
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

async fn group(State(s): State<ConsoleState>, Path(name): Path<String>) -> ApiResult {
    let d = reply!(
        call(
            &s,
            cmd::GroupDescribe {
                group: name.clone()
            }
        )
        .await?,
        GroupDescribe
    );
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "remote": m.remote,
                "topics": m.topics,
                "owned": m.owned.iter().map(|(t, q)| json!({"topic": t, "queue": q})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let queues: Vec<Value> = d
        .queues
        .iter()
        .map(|q| {
            json!({
                "topic": q.topic,
                "queue": q.queue_id,
                "committed": q.committed,
                "max_offset": q.max_offset,
                "lag": q.max_offset.saturating_sub(q.committed.unwrap_or(0)),
                "owner": q.owner,
            })
        })
        .collect();
    Ok(Json(json!({
        "group": d.name,
        "mode": mode_name(d.mode),
        "members": members,
        "queues": queues,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reset {
    topic: String,
    /// `first`, `last`, `timestamp` (ms since the epoch in `value`) or `offset` (`value`).
    to: String,
    value: Option<i64>,
    #[serde(default)]
    force: bool,
}

async fn reset_group(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Json(r): Json<Reset>,
) -> ApiResult {
    let value = |what: &str| {
        r.value
            .ok_or_else(|| ApiError::bad_request(format!("a reset to {what} needs a value")))
    };
    let target = match r.to.as_str() {
        "first" | "earliest" => ResetTarget::First,
        "last" | "latest" => ResetTarget::Last,
        "timestamp" => ResetTarget::Timestamp(value("a timestamp")?),
        "offset" => {
            let v = value("an offset")?;
            ResetTarget::Offset(
                u64::try_from(v)
                    .map_err(|_| ApiError::bad_request("an offset cannot be negative"))?,
            )
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "reset to {other:?}: use first, last, timestamp or offset"
            )))
        }
    };
    call(
        &s,
        cmd::GroupResetOffset {
            group: name.clone(),
            topic: r.topic.clone(),
            target,
            force: r.force,
        },
    )
    .await?;
    Ok(Json(
        json!({ "group": name, "topic": r.topic, "reset": r.to }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn delete_group(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Query(f): Query<Force>,
) -> ApiResult {
    call(
        &s,
        cmd::GroupDelete {
            group: name.clone(),
            force: f.force,
        },
    )
    .await?;
    Ok(Json(json!({ "group": name, "deleted": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    id: Option<String>,
    topic: Option<String>,
    key: Option<String>,
    /// ms since the epoch, inclusive.
    begin: Option<i64>,
    /// ms since the epoch, inclusive.
    end: Option<i64>,
    max: Option<u32>,
}

/// A pull of every message of one queue from `offset` (at most `max`, about 4 MiB), without
/// waiting.
fn read_from(topic: &str, queue_id: u32, offset: u64, max: u32) -> cmd::Pull {
    cmd::Pull {
        topic: topic.to_string(),
        queue_id,
        offset,
        max_messages: max,
        max_bytes: 4 << 20,
        long_poll_ms: 0,
        filter: FilterSpec::All,
        plugins: Vec::new(),
    }
}

/// A message by id, the messages of a topic with a key, or those stored in a time range.
async fn messages(State(s): State<ConsoleState>, Query(q): Query<Search>) -> ApiResult {
    let max = q.max.unwrap_or(64).clamp(1, MAX_LIST);
    if let Some(id) = q.id.as_deref().filter(|i| !i.is_empty()) {
        let id = parse_id(id)?;
        return match call(&s, cmd::MessageById { id }).await {
            Ok(r) => Ok(Json(messages_json(&reply!(r, MessageById).0)?)),
            Err(e) if e.code == axum::http::StatusCode::NOT_FOUND => Ok(Json(json!([]))),
            Err(e) => Err(e),
        };
    }
    let topic = q
        .topic
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("search by id, or give a topic"))?;
    let begin = q.begin.unwrap_or(0);
    let end = q.end.unwrap_or(i64::MAX);
    if let Some(key) = q.key.filter(|k| !k.is_empty()) {
        let r = call(
            &s,
            cmd::MessageByKey {
                topic,
                key,
                max,
                begin_ms: begin,
                end_ms: end,
            },
        )
        .await;
        return match r {
            Ok(r) => Ok(Json(messages_json(&reply!(r, MessageByKey).0)?)),
            Err(e) if e.status == "NotFound" => Ok(Json(json!([]))),
            Err(e) => Err(e),
        };
    }
    if q.begin.is_none() && q.end.is_none() {
        return Err(ApiError::bad_request(
            "with a topic, give a key or a time range (begin, end)",
        ));
    }
    let d = describe(&s, &topic).await?;
    let mut found: Vec<Bytes> = Vec::new();
    for queue in &d.queues {
        let start = reply!(
            call(
                &s,
                cmd::OffsetForTime {
                    topic: topic.clone(),
                    queue_id: queue.queue_id,
                    timestamp_ms: begin,
                },
            )
            .await?,
            OffsetForTime
        );
        let Some(mut offset) = start.offset else {
            continue;
        };
        'queue: while offset < queue.max_offset && (found.len() as u32) < max {
            let r = reply!(
                call(&s, read_from(&topic, queue.queue_id, offset, 256)).await?,
                Pull
            );
            if r.records.is_empty() || r.next_offset <= offset {
                break;
            }
            for rec in r.records {
                let stored = RecordView::parse_unchecked_crc(&rec)
                    .map(|v| v.store_timestamp())
                    .unwrap_or(i64::MAX);
                if stored > end {
                    break 'queue;
                }
                if stored >= begin {
                    found.push(rec);
                    if found.len() as u32 >= max {
                        break 'queue;
                    }
                }
            }
            offset = r.next_offset;
        }
    }
    found.sort_by_key(|r| {
        RecordView::parse_unchecked_crc(r).map_or(i64::MAX, |v| v.store_timestamp())
    });
    Ok(Json(messages_json(&found)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resend {
    group: String,
}

/// Delivers a stored message again to one group (through its retry topic, after the
/// broker's delay level 1, 1 s by default), whatever its offsets say: RocketMQ Dashboard's
/// "resend message".
async fn resend_message(
    State(s): State<ConsoleState>,
    Path(id): Path<String>,
    Json(r): Json<Resend>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let Records(found) = reply!(call(&s, cmd::MessageById { id }).await?, MessageById);
    let rec = found.first().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "NotFound",
            "message not found",
        )
    })?;
    let handle = RecordView::parse_unchecked_crc(rec)
        .map(|v| v.phys_offset())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let sent = reply!(
        call(
            &s,
            cmd::SendBack {
                group: r.group.clone(),
                id,
                handle,
                // Delay level 1 (1 s by default): at once, not after the group's back-off.
                delay_level: 1,
                max_reconsume: u32::MAX,
                to_dlq: false,
            },
        )
        .await?,
        SendBack
    );
    Ok(Json(json!({
        "id": format!("{id:032x}"),
        "group": r.group,
        "retry_topic": names::retry_topic(&r.group),
        "reconsume_times": sent.reconsume_times,
    })))
}

async fn dlqs(State(s): State<ConsoleState>) -> ApiResult {
    let g = s.broker.gauges().await;
    // Only the groups the caller may see, as GroupList filters them.
    let caller = super::login::caller(s.local);
    let auth = s.broker.auth();
    Ok(Json(Value::Array(
        g.dlq
            .iter()
            .filter(|(group, _)| {
                !auth.enforced()
                    || auth.may(
                        &caller,
                        DESCRIBE | CONSUME,
                        Resource::Group(group.to_string()),
                    )
            })
            .map(|(group, n)| json!({ "group": group, "messages": n }))
            .collect(),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    from: Option<u64>,
    max: Option<u32>,
}

async fn dlq(
    State(s): State<ConsoleState>,
    Path(group): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult {
    let topic = names::dlq_topic(&group);
    let max = p.max.unwrap_or(64).clamp(1, MAX_LIST);
    let r = call(&s, read_from(&topic, 0, p.from.unwrap_or(0), max)).await;
    match r {
        Ok(r) => Ok(Json(messages_json(&reply!(r, Pull).records)?)),
        Err(e) if e.status == "TopicNotFound" => Ok(Json(json!([]))),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqResend {
    id: Option<String>,
    from: Option<u64>,
    max: Option<u32>,
}

async fn dlq_resend(
    State(s): State<ConsoleState>,
    Path(group): Path<String>,
    Json(r): Json<DlqResend>,
) -> ApiResult {
    let id = match r.id.as_deref().filter(|i| !i.is_empty()) {
        Some(i) => Some(parse_id(i)?),
        None => None,
    };
    let n = reply!(
        call(
            &s,
            cmd::DlqResend {
                group: group.clone(),
                id,
                from_offset: r.from.unwrap_or(0),
                max: r.max.unwrap_or(MAX_LIST),
            },
        )
        .await?,
        DlqResend
    );
    Ok(Json(json!({ "group": group, "resent": n.0 })))
}

async fn plugins(State(s): State<ConsoleState>) -> ApiResult {
    let list = reply!(call(&s, cmd::PluginList).await?, PluginList).plugins;
    let views: Vec<crate::plugin::PluginView<'_>> =
        list.iter().map(crate::plugin::PluginView::from).collect();
    Ok(Json(serde_json::to_value(views).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            e.to_string(),
        )
    })?))
}

/// A module given as base64 (`wasm_base64`) or as WebAssembly text (`wat`).
fn module(wasm_base64: Option<String>, wat: Option<String>) -> Result<Bytes, ApiError> {
    match (wasm_base64, wat) {
        (Some(b), None) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("wasm_base64 is not base64: {e}"))),
        (None, Some(t)) => Ok(Bytes::from(t.into_bytes())),
        (None, None) => Ok(Bytes::new()),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give the module as wasm_base64 or as wat, not both",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPlugin {
    name: String,
    wasm_base64: Option<String>,
    wat: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    memory_limit_bytes: u64,
    #[serde(default)]
    time_limit_ms: u32,
}

async fn load_plugin(State(s): State<ConsoleState>, Json(p): Json<NewPlugin>) -> ApiResult {
    let wasm = module(p.wasm_base64, p.wat)?;
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "a plugin needs a module (wasm_base64 or wat)",
        ));
    }
    call(
        &s,
        cmd::PluginLoad {
            name: p.name.clone(),
            wasm,
            config: p.config.into_iter().collect(),
            memory_limit_bytes: p.memory_limit_bytes,
            time_limit_ms: p.time_limit_ms,
        },
    )
    .await?;
    Ok(Json(json!({ "plugin": p.name, "loaded": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadPlugin {
    wasm_base64: Option<String>,
    wat: Option<String>,
    config: Option<BTreeMap<String, String>>,
    #[serde(default)]
    memory_limit_bytes: u64,
    #[serde(default)]
    time_limit_ms: u32,
}

async fn reload_plugin(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Json(p): Json<ReloadPlugin>,
) -> ApiResult {
    call(
        &s,
        cmd::PluginReload {
            name: name.clone(),
            wasm: module(p.wasm_base64, p.wat)?,
            config: p.config.map(|c| c.into_iter().collect()),
            memory_limit_bytes: p.memory_limit_bytes,
            time_limit_ms: p.time_limit_ms,
        },
    )
    .await?;
    Ok(Json(json!({ "plugin": name, "reloaded": true })))
}

async fn unload_plugin(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Query(f): Query<Force>,
) -> ApiResult {
    call(
        &s,
        cmd::PluginUnload {
            name: name.clone(),
            force: f.force,
        },
    )
    .await?;
    Ok(Json(json!({ "plugin": name, "unloaded": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attachment {
    topic: String,
}

async fn attach_plugin(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Json(a): Json<Attachment>,
) -> ApiResult {
    call(
        &s,
        cmd::PluginAttach {
            name: name.clone(),
            topic: a.topic.clone(),
        },
    )
    .await?;
    Ok(Json(
        json!({ "plugin": name, "topic": a.topic, "attached": true }),
    ))
}

async fn detach_plugin(
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
    Json(a): Json<Attachment>,
) -> ApiResult {
    call(
        &s,
        cmd::PluginDetach {
            name: name.clone(),
            topic: a.topic.clone(),
        },
    )
    .await?;
    Ok(Json(
        json!({ "plugin": name, "topic": a.topic, "attached": false }),
    ))
}

/// The cluster as this node's controller (or a voter's metadata) has it; `null` outside a
/// cluster.
async fn cluster(State(s): State<ConsoleState>) -> ApiResult {
    // What ClusterInfo needs over QUIC.
    require(&s, DESCRIBE, Resource::Cluster)?;
    let Some(node) = &s.member else {
        return Ok(Json(Value::Null));
    };
    let info = match node.controller() {
        Some(c) => c.info(),
        None => node.info_without_controller().await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "ControllerUnavailable",
                e.to_string(),
            )
        })?,
    };
    let brokers: Vec<Value> = info
        .brokers
        .iter()
        .map(|b| {
            let set = info.sets.iter().find(|s| s.set == b.set);
            json!({
                "node": b.id,
                "set": b.set,
                "addr": b.addr,
                "alive": b.alive,
                "last_seen_ms": b.last_seen_ms,
                "master": set.is_some_and(|s| s.master == b.id),
                "in_sync": set.is_some_and(|s| s.in_sync.contains(&b.id)),
            })
        })
        .collect();
    let sets: Vec<Value> = info
        .sets
        .iter()
        .map(
            |s| json!({ "set": s.set, "master": s.master, "epoch": s.epoch, "in_sync": s.in_sync }),
        )
        .collect();
    Ok(Json(json!({
        "cluster": info.cluster_id,
        "node": info.node_id,
        "term": info.term,
        "leader": info.leader,
        "brokers": brokers,
        "sets": sets,
    })))
}
