//! Output for the client commands: a stdout writer that stops quietly on a closed pipe,
//! JSON records (one object per line) and the human renderings of messages and bodies.

use std::io::{self, Write};

use quiver_client::{ReceivedMessage, SendResult};
use serde::Serialize;

/// Buffered stdout. Every `line` is flushed at once so `--follow` output shows up as it
/// arrives and pipes (`| jq`, `| head`) see whole lines.
pub(crate) struct Out {
    out: io::StdoutLock<'static>,
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn new(json: bool) -> Self {
        Self {
            out: io::stdout().lock(),
            json,
        }
    }

    /// Writes one line.
    pub(crate) fn line(&mut self, s: &str) -> io::Result<()> {
        self.out.write_all(s.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// Writes one JSON object as one line.
    pub(crate) fn json<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        let s = serde_json::to_string(v)?;
        self.line(&s)?;
        Ok(())
    }
}

/// True when the error is (caused by) writing to a closed pipe: the reader went away
/// (`quiver consume | head`), which is not a failure of the command.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A sent message, as `quiver produce --json` prints it.
#[derive(Serialize)]
pub(crate) struct SentJson<'a> {
    pub(crate) id: String,
    pub(crate) topic: &'a str,
    pub(crate) queue: u32,
    pub(crate) offset: u64,
    pub(crate) commit_log_offset: u64,
    /// The broker set that stored it (the broker's name outside a cluster).
    pub(crate) set: &'a str,
}

impl<'a> From<&'a SendResult> for SentJson<'a> {
    fn from(r: &'a SendResult) -> Self {
        Self {
            id: r.msg_id.to_string(),
            topic: &r.topic,
            queue: r.queue_id,
            offset: r.queue_offset,
            commit_log_offset: r.commit_log_offset,
            set: &r.broker_set,
        }
    }
}

/// A received message with every field, as `--json` prints it. `body` is the payload as a
/// string when it is valid UTF-8 (`body_encoding: "utf8"`), else standard padded base64
/// (`body_encoding: "base64"`); `body_len` is the payload length in bytes either way.
#[derive(Serialize)]
pub(crate) struct MessageJson<'a> {
    pub(crate) id: String,
    pub(crate) topic: &'a str,
    pub(crate) queue: u32,
    pub(crate) offset: u64,
    pub(crate) commit_log_offset: u64,
    pub(crate) tag: Option<&'a str>,
    pub(crate) keys: &'a [String],
    pub(crate) properties: serde_json::Map<String, serde_json::Value>,
    pub(crate) born_timestamp: i64,
    pub(crate) store_timestamp: i64,
    pub(crate) born_host: String,
    pub(crate) reconsume_times: u32,
    pub(crate) flags: u32,
    pub(crate) body_len: usize,
    pub(crate) body_encoding: &'static str,
    pub(crate) body: String,
}

impl<'a> From<&'a ReceivedMessage> for MessageJson<'a> {
    fn from(m: &'a ReceivedMessage) -> Self {
        let (body_encoding, body) = match std::str::from_utf8(&m.body) {
            Ok(s) => ("utf8", s.to_string()),
            Err(_) => ("base64", base64(&m.body)),
        };
        Self {
            id: m.msg_id.to_string(),
            topic: &m.topic,
            queue: m.queue_id,
            offset: m.queue_offset,
            commit_log_offset: m.commit_log_offset,
            tag: m.tag.as_deref(),
            keys: &m.keys,
            properties: m
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
            born_timestamp: m.born_timestamp,
            store_timestamp: m.store_timestamp,
            born_host: m.born_host.to_string(),
            reconsume_times: m.reconsume_times,
            flags: m.flags,
            body_len: m.body.len(),
            body_encoding,
            body,
        }
    }
}

/// The header of [`message_line`] rows.
pub(crate) fn message_header() -> String {
    format!(
        "{:<12} {:<32}  {:<10} {:<12} {:<12} BODY",
        "QUEUE/OFFSET", "MSG ID", "TAG", "KEYS", "PROPS"
    )
}

/// One message on one line: `queue/offset id tag keys props body` (`-` for an absent field).
pub(crate) fn message_line(m: &ReceivedMessage) -> String {
    let keys = if m.keys.is_empty() {
        "-".to_string()
    } else {
        m.keys.join(",")
    };
    let props = if m.properties.is_empty() {
        "-".to_string()
    } else {
        m.properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{:<12} {}  {:<10} {:<12} {:<12} {}",
        format!("{}/{}", m.queue_id, m.queue_offset),
        m.msg_id,
        m.tag.as_deref().unwrap_or("-"),
        keys,
        props,
        human_body(&m.body, 256)
    )
}

/// All fields of one message, one per line (`quiver admin message get`).
pub(crate) fn message_block(m: &ReceivedMessage) -> Vec<String> {
    let mut lines = vec![
        format!("id:           {}", m.msg_id),
        format!("topic:        {}", m.topic),
        format!("queue:        {}", m.queue_id),
        format!("offset:       {}", m.queue_offset),
        format!("commit log:   {}", m.commit_log_offset),
        format!("tag:          {}", m.tag.as_deref().unwrap_or("-")),
        format!(
            "keys:         {}",
            if m.keys.is_empty() {
                "-".to_string()
            } else {
                m.keys.join(", ")
            }
        ),
    ];
    if m.properties.is_empty() {
        lines.push("properties:   -".to_string());
    }
    for (i, (k, v)) in m.properties.iter().enumerate() {
        let label = if i == 0 { "properties:" } else { "" };
        lines.push(format!("{label:<13} {k}={v}"));
    }
    lines.extend([
        format!(
            "born:         {} ({} ms) by {}",
            rfc3339_ms(m.born_timestamp),
            m.born_timestamp,
            m.born_host
        ),
        format!(
            "stored:       {} ({} ms)",
            rfc3339_ms(m.store_timestamp),
            m.store_timestamp
        ),
        format!("reconsumed:   {}", m.reconsume_times),
        format!("flags:        {:#x}", m.flags),
        format!(
            "body:         {} bytes, {}",
            m.body.len(),
            if std::str::from_utf8(&m.body).is_ok() {
                "UTF-8"
            } else {
                "binary"
            }
        ),
        human_body(&m.body, usize::MAX),
    ]);
    lines
}

/// A body for people: UTF-8 text with control characters escaped (one message stays on one
/// line), or `0x<hex> (N bytes)` when it is not UTF-8. Longer than `max` bytes is cut with
/// `...`.
pub(crate) fn human_body(body: &[u8], max: usize) -> String {
    let cut = body.len() > max;
    let shown = &body[..body.len().min(max)];
    match std::str::from_utf8(body) {
        Ok(s) => {
            let mut end = shown.len();
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = String::with_capacity(end + 8);
            for c in s[..end].chars() {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            if cut {
                out.push_str(&format!("... ({} bytes)", body.len()));
            }
            out
        }
        Err(_) => {
            let shown = &body[..body.len().min(max / 2)];
            format!(
                "0x{}{} ({} bytes)",
                hex(shown),
                if shown.len() < body.len() { "..." } else { "" },
                body.len()
            )
        }
    }
}

use quiver_protocol::text::hex;

/// Standard base64 (RFC 4648, `+/`, padded).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn bodies_for_people() {
        assert_eq!(human_body(b"hello", 256), "hello");
        assert_eq!(human_body(b"a\nb\tc", 256), "a\\nb\\tc");
        assert_eq!(human_body(&[0xff, 0x00, 0x10], 256), "0xff0010 (3 bytes)");
        assert_eq!(human_body(b"abcdef", 3), "abc... (6 bytes)");
        assert_eq!(human_body("é".as_bytes(), 1), "... (2 bytes)");
        assert_eq!(human_body(&[0xff; 10], 4), "0xffff... (10 bytes)");
    }
}
