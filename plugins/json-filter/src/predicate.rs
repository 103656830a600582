//! The predicate: a dotted path into the JSON body, a comparison, a value.

use std::cmp::Ordering;
use std::fmt;

use quiver_plugin::Config;
use serde_json::Value;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// The field is present (any value, `null` included).
    Exists,
}

impl Op {
    fn parse(text: &str) -> Result<Op, String> {
        Ok(match text {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "exists" => Op::Exists,
            other => {
                return Err(format!(
                    "unknown op {other:?}: use eq, ne, gt, ge, lt, le or exists"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Lt => "lt",
            Op::Le => "le",
            Op::Exists => "exists",
        }
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Exists => true,
        }
    }

    fn is_equality(self) -> bool {
        matches!(self, Op::Eq | Op::Ne)
    }
}

/// The configured value, parsed once in every form a JSON value can be compared with.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    text: String,
    int: Option<i128>,
    float: Option<f64>,
    boolean: Option<bool>,
}

impl Expected {
    fn new(text: &str) -> Self {
        Expected {
            text: text.to_owned(),
            int: text.parse().ok(),
            float: text.parse::<f64>().ok().filter(|f| f.is_finite()),
            boolean: text.parse().ok(),
        }
    }
}

/// `field op value`: keeps a JSON body whose `field` compares with `value` as `op` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    path: Vec<String>,
    op: Op,
    value: Expected,
}

impl Predicate {
    /// Reads `field`, `op` (default `eq`) and `value` (required unless `op=exists`); the error
    /// says what is wrong. Unknown keys are refused, to catch typos.
    pub fn from_config(config: &Config) -> Result<Predicate, String> {
        if let Some((key, _)) = config
            .iter()
            .find(|(k, _)| !matches!(*k, "field" | "op" | "value"))
        {
            return Err(format!(
                "unknown configuration key {key:?}: json_filter takes field, op and value"
            ));
        }
        let field = config
            .get("field")
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .ok_or(
                "missing `field`: the dotted path of the JSON field to test, e.g. order.amount",
            )?;
        let path: Vec<String> = field.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "field {field:?} has an empty segment: use a dotted path like order.amount"
            ));
        }
        let op = Op::parse(config.get("op").unwrap_or("eq").trim())?;
        let value = match (config.get("value"), op) {
            (Some(v), _) => Expected::new(v),
            (None, Op::Exists) => Expected::new(""),
            (None, op) => {
                return Err(format!(
                    "missing `value`: op {} compares the field with it",
                    op.name()
                ))
            }
        };
        Ok(Predicate { path, op, value })
    }

    /// Whether `body` is JSON with the field, and the field compares as configured. A body that
    /// is not JSON, a missing field, or a value that cannot be compared with the configured one
    /// (an object, an array, a number against text, an ordering of booleans) does not match.
    pub fn matches_body(&self, body: &[u8]) -> bool {
        match serde_json::from_slice::<Value>(body) {
            Ok(json) => self.matches(&json),
            Err(_) => false,
        }
    }

    /// Like [`matches_body`](Self::matches_body) on an already parsed document.
    pub fn matches(&self, json: &Value) -> bool {
        let Some(found) = lookup(json, &self.path) else {
            return false;
        };
        if self.op == Op::Exists {
            return true;
        }
        compare(found, &self.value, self.op.is_equality()).is_some_and(|o| self.op.holds(o))
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.join("."), self.op.name())?;
        if self.op != Op::Exists {
            write!(f, " {:?}", self.value.text)?;
        }
        Ok(())
    }
}

/// Follows `path` through objects (by key) and arrays (by decimal index).
fn lookup<'v>(json: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(json, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// How `found` orders against `expected`: numbers numerically (exactly for integers), strings
/// as strings (byte order), booleans and `null` for equality only.
fn compare(found: &Value, expected: &Expected, equality: bool) -> Option<Ordering> {
    match found {
        Value::Number(n) => {
            let int = n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from));
            if let (Some(found), Some(expected)) = (int, expected.int) {
                return Some(found.cmp(&expected));
            }
            n.as_f64()?.partial_cmp(&expected.float?)
        }
        Value::String(s) => Some(s.as_str().cmp(expected.text.as_str())),
        Value::Bool(b) if equality => Some(b.cmp(&expected.boolean?)),
        Value::Null if equality && expected.text == "null" => Some(Ordering::Equal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(pairs: &[(&str, &str)]) -> Result<Predicate, String> {
        Predicate::from_config(&Config::from_pairs(pairs.iter().copied()))
    }

    fn keeps(pairs: &[(&str, &str)], body: &str) -> bool {
        pred(pairs).unwrap().matches_body(body.as_bytes())
    }

    #[test]
    fn numbers_compare_numerically() {
        let body = r#"{"order":{"amount":120,"price":9.5,"big":18446744073709551615}}"#;
        let gt = |v| {
            keeps(
                &[("field", "order.amount"), ("op", "gt"), ("value", v)],
                body,
            )
        };
        assert!(gt("100"));
        assert!(gt("99.5"));
        assert!(!gt("120"));
        assert!(!gt("1e3"));
        assert!(keeps(
            &[("field", "order.amount"), ("op", "ge"), ("value", "120")],
            body
        ));
        assert!(keeps(
            &[("field", "order.amount"), ("value", "120.0")],
            body
        ));
        assert!(keeps(
            &[("field", "order.price"), ("op", "lt"), ("value", "10")],
            body
        ));
        assert!(keeps(
            &[("field", "order.price"), ("op", "le"), ("value", "9.5")],
            body
        ));
        assert!(keeps(
            &[("field", "order.price"), ("op", "ne"), ("value", "9")],
            body
        ));
        assert!(keeps(
            &[("field", "order.big"), ("value", "18446744073709551615")],
            body
        ));
        assert!(!keeps(
            &[("field", "order.big"), ("value", "18446744073709551614")],
            body
        ));
        // A number against text cannot be compared: dropped, even for ne.
        assert!(!keeps(
            &[("field", "order.amount"), ("op", "ne"), ("value", "abc")],
            body
        ));
    }

    #[test]
    fn strings_booleans_null() {
        let body = r#"{"status":"paid","vip":true,"note":null,"code":"10"}"#;
        assert!(keeps(
            &[("field", "status"), ("op", "eq"), ("value", "paid")],
            body
        ));
        assert!(!keeps(
            &[("field", "status"), ("op", "ne"), ("value", "paid")],
            body
        ));
        assert!(keeps(
            &[("field", "status"), ("op", "gt"), ("value", "open")],
            body
        ));
        assert!(keeps(&[("field", "code"), ("value", "10")], body));
        assert!(keeps(&[("field", "vip"), ("value", "true")], body));
        assert!(keeps(
            &[("field", "vip"), ("op", "ne"), ("value", "false")],
            body
        ));
        assert!(!keeps(
            &[("field", "vip"), ("op", "gt"), ("value", "false")],
            body
        ));
        assert!(keeps(&[("field", "note"), ("value", "null")], body));
        assert!(keeps(&[("field", "note"), ("op", "exists")], body));
        assert!(!keeps(&[("field", "nope"), ("op", "exists")], body));
    }

    #[test]
    fn paths_objects_arrays() {
        let body = r#"{"items":[{"sku":"a"},{"sku":"b"}],"o":{"p":{"q":1}}}"#;
        assert!(keeps(&[("field", "items.1.sku"), ("value", "b")], body));
        assert!(!keeps(&[("field", "items.2.sku"), ("op", "exists")], body));
        assert!(!keeps(&[("field", "items.x"), ("op", "exists")], body));
        assert!(keeps(&[("field", "o.p.q"), ("value", "1")], body));
        assert!(
            !keeps(&[("field", "o.p"), ("value", "1")], body),
            "an object"
        );
        assert!(keeps(&[("field", "o.p"), ("op", "exists")], body));
    }

    #[test]
    fn missing_fields_and_non_json_bodies_are_dropped() {
        let p = pred(&[("field", "status"), ("op", "ne"), ("value", "x")]).unwrap();
        assert!(!p.matches_body(br#"{"other":1}"#));
        assert!(!p.matches_body(b"status=y"));
        assert!(!p.matches_body(b""));
        assert!(!p.matches_body(&[0xff, 0xfe]));
        assert!(!p.matches_body(b"[1,2]"));
        assert!(p.matches_body(br#"{"status":"y"}"#));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(pred(&[]).unwrap_err().contains("missing `field`"));
        assert!(pred(&[("field", " ")])
            .unwrap_err()
            .contains("missing `field`"));
        assert!(pred(&[("field", "a..b"), ("value", "1")])
            .unwrap_err()
            .contains("empty segment"));
        assert!(pred(&[("field", "a"), ("op", "like"), ("value", "1")])
            .unwrap_err()
            .contains("unknown op \"like\""));
        assert!(pred(&[("field", "a"), ("op", "gt")])
            .unwrap_err()
            .contains("missing `value`"));
        assert!(pred(&[("field", "a"), ("vaule", "1")])
            .unwrap_err()
            .contains("unknown configuration key \"vaule\""));
        let p = pred(&[("field", "order.amount"), ("op", "ge"), ("value", "10")]).unwrap();
        assert_eq!(p.to_string(), "order.amount ge \"10\"");
        assert_eq!(
            pred(&[("field", "a"), ("op", "exists")])
                .unwrap()
                .to_string(),
            "a exists"
        );
    }
}
