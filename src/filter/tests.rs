//! Tests of the filter engine: every operator and rule of docs/FILTERS.md, every error (with
//! its column), the limits, and property tests (canonical text round trip, no panics).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use quiver_protocol::record::{encode_into, NewMessage, RecordLimits, RecordPlacement};
use quiver_protocol::{tag_hash, RecordView};

use super::*;

// ---------------------------------------------------------------------------------------------
// helpers

fn msg(props: &[(&str, &str)]) -> PropertyMap {
    let mut m = PropertyMap::new().with_topic("orders");
    for (k, v) in props {
        m = m.with_property(*k, *v);
    }
    m
}

fn compile(expr: &str) -> SqlFilter {
    match SqlFilter::compile(expr) {
        Ok(f) => f,
        Err(e) => panic!("{expr:?} should compile: {e}"),
    }
}

fn eval(expr: &str, props: &[(&str, &str)]) -> Truth {
    compile(expr).evaluate(&msg(props))
}

fn err(expr: &str) -> FilterError {
    match SqlFilter::compile(expr) {
        Ok(f) => panic!("{expr:?} should not compile, got {}", f.canonical()),
        Err(e) => e,
    }
}

/// Asserts the error's column and that its message contains `needle`.
#[track_caller]
fn assert_err(expr: &str, column: Option<usize>, needle: &str) {
    let e = err(expr);
    assert!(
        e.message.contains(needle),
        "{expr:?}: message {:?} should contain {needle:?}",
        e.message
    );
    assert_eq!(e.column, column, "{expr:?}: {e}");
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

use Truth::{False as F, True as T, Unknown as U};

// ---------------------------------------------------------------------------------------------
// tag filters

#[test]
fn tag_star_and_blank_match_everything() {
    for expr in ["*", "", "   ", " * "] {
        let f = TagFilter::parse(expr).unwrap();
        assert!(f.is_all());
        assert!(f.matches_hash(0) && f.matches_hash(12345));
        assert!(f.matches_tag("") && f.matches_tag("anything"));
        assert_eq!(f.canonical(), "*");
    }
}

#[test]
fn tag_alternatives_match_any_listed_tag() {
    let f = TagFilter::parse("  TagB||TagA ||   TagC  || TagA").unwrap();
    assert_eq!(f.canonical(), "TagA || TagB || TagC");
    assert_eq!(
        f.tags().unwrap().collect::<Vec<_>>(),
        ["TagA", "TagB", "TagC"]
    );
    for t in ["TagA", "TagB", "TagC"] {
        assert!(f.matches_hash(tag_hash(t)), "{t}");
        assert!(f.matches_tag(t), "{t}");
    }
    assert!(!f.matches_hash(tag_hash("TagD")));
    assert!(!f.matches_tag("TagD"));
    assert!(!f.matches_tag("taga"), "tags are case-sensitive");
    // An untagged message (hash 0, tag "") matches only `*`.
    assert!(!f.matches_hash(0));
    assert!(!f.matches_tag(""));
    // Inner spaces belong to the tag.
    let spaced = TagFilter::parse("big order || small").unwrap();
    assert!(spaced.matches_tag("big order"));
    assert!(!spaced.matches_tag("big"));
}

#[test]
fn tag_hash_check_is_only_a_pre_check() {
    // A colliding hash passes the pre-check; the exact check still refuses the wrong tag.
    let f = TagFilter::parse("A").unwrap();
    assert!(f.matches_hash(tag_hash("A")));
    assert!(!f.matches_tag("B"));
    let filter = Filter::Tag(f);
    let mut m = PropertyMap::new().with_tag("B");
    assert!(!filter.matches(&m));
    m.tag = "A".into();
    assert!(filter.matches(&m));
}

#[test]
fn tag_errors_say_what_and_where() {
    let cases: &[(&str, usize, &str)] = &[
        ("A ||", 3, "empty tag"),
        ("|| B", 1, "empty tag"),
        ("A |||| B", 3, "empty tag"),
        ("A || || B", 3, "empty tag"),
        ("A | B", 3, "single '|'"),
        ("A || B|C", 7, "single '|'"),
        ("A || *", 6, "'*'"),
    ];
    for (expr, column, needle) in cases {
        let e = TagFilter::parse(expr).unwrap_err();
        assert!(e.message.contains(needle), "{expr:?}: {e}");
        assert_eq!(e.column, Some(*column), "{expr:?}: {e}");
        assert!(e.to_string().starts_with(&format!("column {column}: ")));
    }
    let long = "T".repeat(MAX_EXPRESSION_BYTES + 1);
    let e = TagFilter::parse(&long).unwrap_err();
    assert!(e.message.contains("limit"), "{e}");
    assert_eq!(e.column, None);
}

// ---------------------------------------------------------------------------------------------
// comparisons

#[test]
fn numeric_comparisons_read_property_strings_as_numbers() {
    let cases: &[(&str, &str, Truth)] = &[
        ("a > 5", "7", T),
        ("a > 5", "5", F),
        ("a >= 5", "5", T),
        ("a < 5", "4.99", T),
        ("a <= 5", "5.0", T),
        ("a = 5", "5.0", T),
        ("a = 5", "+5", T),
        ("a <> 5", "6", T),
        ("a <> 5", "5", F),
        // RocketMQ refuses these: Quiver reads the value as a number.
        ("a > 3", "3.5", T),
        ("a > 9", "10", T), // numeric, not string, order
        ("a < 10", "9", T),
        ("a > -1", "-0.5", T),
        ("a = 1000", "1e3", T),
        ("a > 0", "1E-3", T),
        ("a = 0", "-0", T),
        // Not a number: UNKNOWN, not FALSE.
        ("a > 5", "x", U),
        ("a = 5", "five", U),
        ("a <> 5", "five", U),
        ("a > 5", "", U),
        ("a > 5", " 7", U),
        ("a > 5", "7 ", U),
        ("a > 5", "0x10", U),
        ("a > 5", "NaN", U),
        ("a > 5", "inf", U),
        ("a > 5", "1e999", U),
        // Big integers stay exact.
        ("a > 9223372036854775806", "9223372036854775807", T),
        ("a < -9223372036854775807", "-9223372036854775808", T),
        ("a = 9223372036854775807", "9223372036854775807", T),
    ];
    for (expr, v, want) in cases {
        assert_eq!(eval(expr, &[("a", v)]), *want, "{expr} with a = {v:?}");
    }
}

#[test]
fn literal_forms_integers_decimals_exponents_and_signs() {
    let cases: &[(&str, &str, Truth)] = &[
        ("a = 100.5", "100.5", T),
        ("a > 100.5", "100.50001", T),
        ("a = 1e3", "1000", T),
        ("a = 1E3", "1000", T),
        ("a = 2.5e-1", "0.25", T),
        ("a = 1e+2", "100", T),
        ("a = .5", "0.5", T),
        ("a = 5.", "5", T),
        ("a = -3", "-3", T),
        ("a = +3", "3", T),
        ("a > -3.5", "-3", T),
        ("a = 10L", "10", T),
        ("a = 10l", "10", T),
        ("a > 3l", "4", T),
        ("a > - -1", "2", T),
        ("a > - -1", "1", F),
        ("a = - + -3", "3", T),
        ("a = 9223372036854775807", "9223372036854775807", T),
        ("a = -9223372036854775808", "-9223372036854775808", T),
        ("a = 9223372036854775808.0", "9223372036854775808", T),
    ];
    for (expr, v, want) in cases {
        assert_eq!(eval(expr, &[("a", v)]), *want, "{expr} with a = {v:?}");
    }
}

#[test]
fn string_comparisons_are_exact_and_quotes_escape_by_doubling() {
    assert_eq!(eval("b = 'x'", &[("b", "x")]), T);
    assert_eq!(eval("b = 'x'", &[("b", "X")]), F);
    assert_eq!(eval("b = 'x'", &[("b", "x ")]), F);
    assert_eq!(eval("b <> 'x'", &[("b", "y")]), T);
    assert_eq!(eval("b <> 'x'", &[("b", "x")]), F);
    assert_eq!(eval("b = ''", &[("b", "")]), T);
    assert_eq!(eval("b = 'it''s'", &[("b", "it's")]), T);
    assert_eq!(eval("b = ''''", &[("b", "'")]), T);
    assert_eq!(
        eval("b = 'a\\b'", &[("b", "a\\b")]),
        T,
        "no backslash escapes"
    );
    assert_eq!(
        eval("b = '10'", &[("b", "10.0")]),
        F,
        "string literal: string equality"
    );
    assert_eq!(eval("b = 'grüße ✓'", &[("b", "grüße ✓")]), T);
    // Literal on the left.
    assert_eq!(eval("'x' = b", &[("b", "x")]), T);
    assert_eq!(eval("5 < a", &[("a", "6")]), T);
    assert_eq!(eval("5 >= a", &[("a", "6")]), F);
    assert_eq!(compile("5 < a").canonical(), "a > 5");
}

#[test]
fn boolean_literals() {
    assert_eq!(eval("TRUE", &[]), T);
    assert_eq!(eval("FALSE", &[]), F);
    assert_eq!(eval("f = TRUE", &[("f", "true")]), T);
    assert_eq!(eval("f = true", &[("f", "TRUE")]), T);
    assert_eq!(eval("f = FALSE", &[("f", "true")]), F);
    assert_eq!(eval("f <> FALSE", &[("f", "true")]), T);
    assert_eq!(eval("f = TRUE", &[("f", "yes")]), U);
    assert_eq!(eval("f = TRUE", &[]), U);
    assert_eq!(eval("a = 1 OR TRUE", &[]), T);
}

// ---------------------------------------------------------------------------------------------
// NULL and three-valued logic

#[test]
fn missing_properties_are_null() {
    let cases: &[(&str, Truth)] = &[
        ("a IS NULL", T),
        ("a IS NOT NULL", F),
        ("a = 1", U),
        ("a <> 1", U),
        ("a > 1", U),
        ("a = 'x'", U),
        ("a <> 'x'", U),
        ("a BETWEEN 1 AND 2", U),
        ("a NOT BETWEEN 1 AND 2", U),
        ("a IN ('x', 'y')", U),
        ("a NOT IN ('x', 'y')", U),
        ("a IN (1, 2)", U),
        ("a CONTAINS 'x'", U),
        ("a NOT CONTAINS 'x'", U),
        ("a STARTSWITH 'x'", U),
        ("a NOT STARTSWITH 'x'", U),
        ("a ENDSWITH 'x'", U),
        ("a NOT ENDSWITH 'x'", U),
        ("NOT a = 1", U),
    ];
    for (expr, want) in cases {
        assert_eq!(eval(expr, &[("other", "1")]), *want, "{expr}");
        assert!(!compile(expr).matches(&msg(&[])) || *want == T, "{expr}");
    }
    assert_eq!(
        eval("a IS NULL", &[("a", "")]),
        F,
        "an empty value is not NULL"
    );
    assert_eq!(eval("a IS NOT NULL", &[("a", "")]), T);
}

#[test]
fn three_valued_logic_tables() {
    let t = "t = 1";
    let f = "f = 1";
    let u = "missing = 1";
    let props = [("t", "1"), ("f", "0")];
    let table: &[(String, Truth)] = &[
        (format!("{t} AND {t}"), T),
        (format!("{t} AND {f}"), F),
        (format!("{t} AND {u}"), U),
        (format!("{u} AND {f}"), F),
        (format!("{f} AND {u}"), F),
        (format!("{u} AND {u}"), U),
        (format!("{t} OR {u}"), T),
        (format!("{u} OR {t}"), T),
        (format!("{f} OR {u}"), U),
        (format!("{u} OR {f}"), U),
        (format!("{f} OR {f}"), F),
        (format!("NOT {u}"), U),
        (format!("NOT {t}"), F),
        (format!("NOT {f}"), T),
        (format!("NOT ({u} AND {f})"), T),
        (format!("NOT ({u} OR {f})"), U),
    ];
    for (expr, want) in table {
        assert_eq!(eval(expr, &props), *want, "{expr}");
    }
    // Only TRUE matches.
    let m = msg(&props);
    assert!(compile(&format!("{t} AND {t}")).matches(&m));
    assert!(!compile(&format!("{t} AND {u}")).matches(&m));
    assert!(!compile(&format!("NOT {u}")).matches(&m));

    // The Truth operators agree with the evaluator.
    for a in [T, F, U] {
        assert_eq!(!!a, a);
        for b in [T, F, U] {
            assert_eq!(a.and(b), b.and(a));
            assert_eq!(a.or(b), b.or(a));
            assert_eq!(!(a.and(b)), (!a).or(!b), "De Morgan");
        }
    }
    assert_eq!(U.and(F), F);
    assert_eq!(U.or(T), T);
    assert_eq!(!U, U);
}

// ---------------------------------------------------------------------------------------------
// BETWEEN, IN, CONTAINS / STARTSWITH / ENDSWITH

#[test]
fn between_is_inclusive_and_numeric() {
    let cases: &[(&str, &str, Truth)] = &[
        ("a BETWEEN 1 AND 5", "1", T),
        ("a BETWEEN 1 AND 5", "5", T),
        ("a BETWEEN 1 AND 5", "3.5", T),
        ("a BETWEEN 1 AND 5", "0.999", F),
        ("a BETWEEN 1 AND 5", "5.001", F),
        ("a BETWEEN 1 AND 5", "10", F), // not "10" < "5" as strings
        ("a BETWEEN 1 AND 5", "x", U),
        ("a NOT BETWEEN 1 AND 5", "1", F),
        ("a NOT BETWEEN 1 AND 5", "6", T),
        ("a NOT BETWEEN 1 AND 5", "x", U),
        ("a BETWEEN 5 AND 5", "5", T),
        ("a BETWEEN -1.5 AND 1e1", "10", T),
        ("a between 1 and 5 and b = 'x'", "2", T),
    ];
    for (expr, v, want) in cases {
        assert_eq!(
            eval(expr, &[("a", v), ("b", "x")]),
            *want,
            "{expr} with a = {v:?}"
        );
    }
}

#[test]
fn in_lists_of_strings_and_numbers() {
    let cases: &[(&str, &str, Truth)] = &[
        ("r IN ('eu', 'us')", "eu", T),
        ("r IN ('eu', 'us')", "us", T),
        ("r IN ('eu', 'us')", "apac", F),
        ("r IN ('eu')", "EU", F),
        ("r NOT IN ('eu', 'us')", "apac", T),
        ("r NOT IN ('eu', 'us')", "eu", F),
        ("r IN ('it''s')", "it's", T),
        ("r IN (1, 2, 3)", "2", T),
        ("r IN (1, 2, 3)", "2.0", T),
        ("r IN (1, 2, 3)", "4", F),
        ("r IN (1, 2.5)", "2.5", T),
        ("r IN (1, 2.5)", "x", U),
        ("r NOT IN (1, 2.5)", "x", U),
        ("r NOT IN (1, 2.5)", "3", T),
        ("r IN (0.0)", "-0", T),
        ("r IN (9223372036854775807)", "9223372036854775806", F),
    ];
    for (expr, v, want) in cases {
        assert_eq!(eval(expr, &[("r", v)]), *want, "{expr} with r = {v:?}");
    }
    // Large lists are sorted and searched by bisection.
    let items: Vec<String> = (0..500).map(|i| format!("'v{i}'")).collect();
    let f = compile(&format!("r IN ({})", items.join(",")));
    for i in [0, 1, 250, 499] {
        assert_eq!(f.evaluate(&msg(&[("r", &format!("v{i}"))])), T, "v{i}");
    }
    assert_eq!(f.evaluate(&msg(&[("r", "v500")])), F);
    let nums: Vec<String> = (0..300).map(|i| format!("{}", i * 3)).collect();
    let f = compile(&format!("r IN ({}, 0.5)", nums.join(",")));
    assert_eq!(f.evaluate(&msg(&[("r", "897")])), T);
    assert_eq!(f.evaluate(&msg(&[("r", "897.0")])), T);
    assert_eq!(f.evaluate(&msg(&[("r", "0.5")])), T);
    assert_eq!(f.evaluate(&msg(&[("r", "898")])), F);
    // Canonical lists are sorted and deduplicated.
    assert_eq!(
        compile("r IN ('us','eu','us')").canonical(),
        "r IN ('eu', 'us')"
    );
    assert_eq!(compile("r IN (3, 1.5, 1)").canonical(), "r IN (1, 1.5, 3)");
}

#[test]
fn contains_startswith_endswith() {
    let cases: &[(&str, Truth)] = &[
        ("s CONTAINS 'ell'", T),
        ("s CONTAINS 'xyz'", F),
        ("s CONTAINS ''", T),
        ("s NOT CONTAINS 'xyz'", T),
        ("s NOT CONTAINS 'ell'", F),
        ("s STARTSWITH 'hel'", T),
        ("s STARTSWITH 'ell'", F),
        ("s NOT STARTSWITH 'ell'", T),
        ("s ENDSWITH 'llo'", T),
        ("s ENDSWITH 'hel'", F),
        ("s NOT ENDSWITH 'hel'", T),
        ("s contains 'ell'", T),
        ("s StartsWith 'hel' AND s EndsWith 'llo'", T),
        ("NOT s CONTAINS 'ell'", F),
        ("s CONTAINS 'ell' OR s = 'x' AND s = 'y'", T),
    ];
    for (expr, want) in cases {
        assert_eq!(eval(expr, &[("s", "hello")]), *want, "{expr}");
    }
    assert_eq!(eval("n CONTAINS '1'", &[("n", "213")]), T);
}

// ---------------------------------------------------------------------------------------------
// precedence, keywords, names

#[test]
fn and_binds_tighter_than_or() {
    // a = 1 OR (b = 1 AND c = 1)
    let f = compile("a = 1 OR b = 1 AND c = 1");
    assert_eq!(f.evaluate(&msg(&[("a", "1"), ("b", "0"), ("c", "0")])), T);
    assert_eq!(f.evaluate(&msg(&[("a", "0"), ("b", "1"), ("c", "0")])), F);
    assert_eq!(f.canonical(), "a = 1 OR (b = 1 AND c = 1)");
    let g = compile("(a = 1 OR b = 1) AND c = 1");
    assert_eq!(g.evaluate(&msg(&[("a", "1"), ("b", "0"), ("c", "0")])), F);
    assert_eq!(g.canonical(), "(a = 1 OR b = 1) AND c = 1");
}

#[test]
fn not_binds_looser_than_comparison() {
    // SQL: NOT (a = 1). RocketMQ would read (NOT a) = 1.
    let f = compile("NOT a = 1");
    assert_eq!(f.canonical(), "NOT (a = 1)");
    assert_eq!(f.evaluate(&msg(&[("a", "2")])), T);
    assert_eq!(f.evaluate(&msg(&[("a", "1")])), F);
    // ... and tighter than AND / OR.
    let g = compile("NOT a = 1 AND b = 1");
    assert_eq!(g.canonical(), "NOT (a = 1) AND b = 1");
    assert_eq!(g.evaluate(&msg(&[("a", "2"), ("b", "1")])), T);
    assert_eq!(compile("NOT a IS NULL").canonical(), "NOT (a IS NULL)");
    assert_eq!(compile("NOT NOT a = 1").canonical(), "NOT (NOT (a = 1))");
    assert_eq!(compile("NOT a IN ('x')").canonical(), "a NOT IN ('x')");
}

#[test]
fn keywords_are_case_insensitive_names_are_not() {
    let f = compile("a is not null and b in ('x') or not c between 1 and 2 or d is null");
    assert_eq!(
        f.canonical(),
        "(a IS NOT NULL AND b IN ('x')) OR c NOT BETWEEN 1 AND 2 OR d IS NULL"
    );
    assert_eq!(eval("Region = 'eu'", &[("region", "eu")]), U);
    assert_eq!(eval("region = 'eu'", &[("region", "eu")]), T);
    assert_eq!(
        eval("$a_1 = 1 AND _b = 2", &[("$a_1", "1"), ("_b", "2")]),
        T
    );
    // Words that are SQL keywords elsewhere are ordinary property names here.
    assert_eq!(
        eval(
            "select = 1 AND date = 2 AND case = 3 AND interval = 4 AND key = 5",
            &[
                ("select", "1"),
                ("date", "2"),
                ("case", "3"),
                ("interval", "4"),
                ("key", "5")
            ]
        ),
        T
    );
}

#[test]
fn system_attributes_tags_keys_topic() {
    let m = PropertyMap::new()
        .with_topic("orders")
        .with_tag("TagA")
        .with_key("k1")
        .with_key("k2")
        .with_property("TAGS", "shadowed");
    let t = |e: &str| compile(e).evaluate(&m);
    assert_eq!(t("TAGS = 'TagA'"), T);
    assert_eq!(t("TAGS IN ('TagA', 'TagB')"), T);
    assert_eq!(t("KEYS = 'k1 k2'"), T);
    assert_eq!(t("KEYS = 'k1'"), F);
    assert_eq!(t("KEYS CONTAINS 'k2'"), T);
    assert_eq!(t("KEYS STARTSWITH 'k1 '"), T);
    assert_eq!(t("TOPIC = 'orders'"), T);
    assert_eq!(t("TOPIC ENDSWITH 'ers'"), T);
    assert_eq!(t("tags = 'TagA'"), U, "system names are upper-case");

    let bare = PropertyMap::new().with_topic("t");
    let b = |e: &str| compile(e).evaluate(&bare);
    assert_eq!(b("TAGS IS NULL"), T, "no tag is NULL");
    assert_eq!(b("KEYS IS NULL"), T, "no keys is NULL");
    assert_eq!(b("TAGS = 'x'"), U);
    assert_eq!(b("TOPIC IS NOT NULL"), T);

    // Joined keys longer than the stack buffer.
    let long: Vec<String> = (0..100).map(|i| format!("key-{i:04}")).collect();
    let mut m = PropertyMap::new();
    for k in &long {
        m = m.with_key(k.clone());
    }
    let joined = long.join(" ");
    assert!(joined.len() > 256);
    let expr = format!("KEYS = {}", quote(&joined));
    assert_eq!(compile(&expr).evaluate(&m), T);
    assert_eq!(compile("KEYS ENDSWITH 'key-0099'").evaluate(&m), T);
    assert_eq!(compile("KEYS CONTAINS '0049 key-0050'").evaluate(&m), T);
}

#[test]
fn hash_map_messages_take_system_attributes_from_entries() {
    let m: HashMap<String, String> = [
        ("TAGS", "A"),
        ("KEYS", "k1  k2"),
        ("TOPIC", "t"),
        ("a", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let t = |e: &str| compile(e).evaluate(&m);
    assert_eq!(
        t("TAGS = 'A' AND KEYS = 'k1 k2' AND TOPIC = 't' AND a = 1"),
        T
    );
    assert!(Filter::parse(FilterKind::Tag, "A || B")
        .unwrap()
        .matches(&m));
}

/// A stored record's bytes, as `encode_into` writes them into the log.
fn encode_record(topic: &str, tag: &str, keys: &[&str], props: &[(&str, &str)]) -> Vec<u8> {
    let m = NewMessage {
        msg_id: 1,
        flags: 0,
        born_timestamp: 0,
        born_host: "127.0.0.1:1".parse().unwrap(),
        reconsume_times: 0,
        tag,
        keys,
        properties: props,
        body: b"hello",
    };
    let limits = RecordLimits {
        max_body: 1 << 20,
        max_properties: 1 << 15,
    };
    let len = m.encoded_len(topic, &limits).unwrap();
    let mut buf = vec![0u8; len];
    let at = RecordPlacement {
        queue_id: 0,
        queue_offset: 0,
        phys_offset: 0,
        store_timestamp: 0,
        extra_flags: 0,
    };
    encode_into(&mut buf, topic, &m, &at);
    buf
}

#[test]
fn record_views_are_messages() {
    let props = [("a", "7"), ("b", "x"), ("region", "eu"), ("a", "shadowed")];
    let buf = encode_record("orders", "TagA", &["k1", "k2"], &props);
    let view = RecordView::parse(&buf).unwrap();
    let f = compile("a > 5 AND b = 'x' AND region IN ('eu','us') AND TAGS = 'TagA' AND KEYS = 'k1 k2' AND TOPIC = 'orders' AND vip IS NULL");
    assert_eq!(f.evaluate(&view), T);
    assert!(Filter::Sql(f).matches(&view));
    let tags = Filter::parse(FilterKind::Tag, "TagB || TagA").unwrap();
    assert!(tags.may_match_hash(tag_hash(view.tag())) && tags.matches(&view));
    assert_eq!(
        MessageProps::property(&view, "a"),
        Some("7"),
        "the first of a repeated name"
    );
    assert_eq!(MessageProps::property(&view, "zzz"), None);
}

// ---------------------------------------------------------------------------------------------
// errors: what and where

#[test]
fn trailing_tokens_are_an_error() {
    assert_err(
        "a = 1 b",
        Some(7),
        "unexpected 'b' after a complete condition",
    );
    assert_err("a = 1 b = 2", Some(7), "join conditions with AND or OR");
    assert_err("a = 1)", Some(6), "')' has no matching '('");
    assert_err("a = 1;", Some(6), "unexpected ';'");
    assert_err("a = 'x' 'y'", Some(9), "unexpected");
    assert_err("a NOT NULL", Some(3), "'NOT' here is not an operator");
}

#[test]
fn operators_from_other_languages_are_named() {
    assert_err("a == 1", Some(3), "use '='");
    assert_err("a != 1", Some(3), "use '<>'");
    assert_err("a = 1 && b = 2", Some(7), "use AND");
    assert_err("a = 1 || b = 2", Some(7), "use OR");
    assert_err("b = \"x\"", Some(5), "use single quotes for strings: 'x'");
    assert_err("\"b\" = 'x'", Some(1), "use single quotes");
    assert_err("b = \"x", Some(5), "use single quotes");
    assert_err("`b` = 'x'", Some(1), "quoted identifiers are not supported");
}

#[test]
fn null_comparisons_point_to_is_null() {
    assert_err("a = NULL", Some(5), "use IS NULL / IS NOT NULL");
    assert_err(
        "a <> NULL",
        Some(6),
        "use IS NULL / IS NOT NULL (here: IS NOT NULL)",
    );
    assert_err("NULL = a", Some(1), "use IS NULL");
    assert_err("b = 1 AND a = null", Some(15), "use IS NULL");
    assert_err("a > NULL", Some(5), "use IS NULL");
}

#[test]
fn only_whitelisted_constructs_compile() {
    let cases: &[(&str, Option<usize>, &str)] = &[
        ("upper(a) = 'X'", Some(1), "functions are not supported"),
        ("a = lower('X')", Some(5), "functions are not supported"),
        ("a + 1 > 2", Some(1), "arithmetic (+) is not supported"),
        ("a > 2 * 3", Some(5), "arithmetic (*) is not supported"),
        ("a - 1 > 2", Some(1), "arithmetic (-) is not supported"),
        (
            "a IN (SELECT b FROM t)",
            Some(1),
            "subqueries are not supported",
        ),
        ("(SELECT 1) = a", Some(2), "subqueries are not supported"),
        ("a LIKE 'x%'", Some(1), "LIKE is not supported"),
        ("a NOT LIKE 'x%'", Some(1), "LIKE is not supported"),
        (
            "a > 'x'",
            Some(5),
            "strings can only be compared with = and <>",
        ),
        ("'x' <= a", Some(1), "strings can only be compared"),
        (
            "a > TRUE",
            Some(5),
            "TRUE and FALSE can only be compared with = and <>",
        ),
        ("1", Some(1), "a number or string alone is not a condition"),
        (
            "'x'",
            Some(1),
            "a number or string alone is not a condition",
        ),
        (
            "a > 9223372036854775808",
            Some(5),
            "outside the 64-bit range",
        ),
        (
            "a > 100000000000000000000000",
            Some(5),
            "outside the 64-bit range",
        ),
        (
            "1 STARTSWITH 'x'",
            Some(1),
            "needs a property or a string literal",
        ),
        ("a = NULL = TRUE", Some(5), "comparing with NULL"),
        (
            "a IS TRUE",
            Some(6),
            "expected IS NULL or IS NOT NULL, found 'TRUE'",
        ),
        ("a IS NOT 1", Some(10), "expected IS NOT NULL, found '1'"),
        (
            "a IS",
            Some(5),
            "expected IS NULL or IS NOT NULL, found the end of the expression",
        ),
        (
            "a IS DISTINCT FROM 1",
            Some(6),
            "expected IS NULL or IS NOT NULL",
        ),
        ("a.b = 1", Some(1), "no '.'"),
        (
            "a = 0x1F",
            Some(5),
            "hexadecimal literals are not supported",
        ),
        ("CASE WHEN a = 1 THEN 1 END = 1", Some(6), "unexpected"),
        ("a = -b", Some(5), "a sign must be followed by a number"),
        ("a = 1 XOR b", Some(5), "operator XOR is not supported"),
        ("a ä 1", Some(3), "unexpected character 'ä'"),
        ("a = AND", Some(5), "found the keyword AND"),
        ("AND a = 1", Some(1), "found the keyword AND"),
        ("a = 1 AND", Some(10), "the expression ends where"),
        (
            "(a = 1",
            Some(7),
            "expected ')' to close '(', found the end of the expression",
        ),
        ("(a = 1 b", Some(8), "expected ')' to close '('"),
        ("a = 'unterminated", Some(5), "unterminated string"),
        (
            "a BETWEEN 'a' AND 'z'",
            Some(11),
            "BETWEEN bounds must be numbers",
        ),
        (
            "a BETWEEN 1 AND NULL",
            Some(17),
            "NULL is not a BETWEEN bound",
        ),
        ("a BETWEEN 1 OR 2", Some(13), "expected"),
        (
            "a IN ('x', NULL)",
            Some(12),
            "NULL in an IN list never matches",
        ),
        ("a IN ('x', 1)", Some(12), "either strings or numbers"),
        ("a IN (TRUE)", Some(7), "not TRUE/FALSE"),
        ("a IN (b)", Some(7), "IN lists hold literals only"),
        ("a IN ()", Some(7), "expected"),
        ("'x' IN ('x')", Some(1), "IN needs a property name"),
        ("a CONTAINS 1", Some(12), "CONTAINS needs a string literal"),
        ("a CONTAINS b", Some(12), "CONTAINS needs a string literal"),
        ("NULL IS NULL", Some(1), "IS NULL needs a property name"),
        ("a = 1e999", Some(5), "out of range"),
        ("a = 1.5L", Some(5), "the L suffix needs an integer"),
        ("a = 1 AND AND b = 2", Some(11), "found the keyword AND"),
        ("a = ?", Some(5), "expected a property name, a literal"),
    ];
    for (expr, column, needle) in cases {
        assert_err(expr, *column, needle);
    }
}

#[test]
fn columns_count_characters_across_lines() {
    let e = err("a = 1 AND\n  b == 2");
    assert_eq!(e.column, Some(15), "{e}");
    let e = err("région = 1 b");
    assert!(e.message.contains("unexpected character 'é'"), "{e}");
    assert_eq!(e.column, Some(2));
    let e = err("b = 'é' c");
    assert_eq!(e.column, Some(9), "{e}");
}

#[test]
fn errors_display_column_and_message() {
    let e = err("a = 1 b");
    assert_eq!(
        e.to_string(),
        "column 7: unexpected 'b' after a complete condition; join conditions with AND or OR"
    );
    assert_eq!(err("").to_string(), "empty expression");
    assert_eq!(err("   ").column, None);
    assert_eq!(err(" -- only a comment").message, "empty expression");
}

// ---------------------------------------------------------------------------------------------
// limits: never a stack overflow or a panic

#[test]
fn expression_length_is_limited() {
    let ok = format!("a = '{}'", "x".repeat(MAX_EXPRESSION_BYTES - 6));
    assert_eq!(ok.len(), MAX_EXPRESSION_BYTES);
    compile(&ok);
    let long = format!("a = '{}'", "x".repeat(MAX_EXPRESSION_BYTES - 5));
    let e = err(&long);
    assert!(e.message.contains("the limit is 4096"), "{e}");
    assert_eq!(e.column, None);
}

#[test]
fn nesting_depth_is_limited() {
    let nest = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    compile(&nest(MAX_DEPTH - 2));
    let e = err(&nest(MAX_DEPTH + 1));
    assert!(e.message.contains("nests deeper than 64"), "{e}");
    assert!(e.column.is_some());
    // As deep as the length limit allows.
    let e = err(&nest(2000));
    assert!(e.message.contains("nests deeper"), "{e}");
    let e = err(&format!("{}a = 1", "NOT ".repeat(1000)));
    assert!(e.message.contains("nests deeper"), "{e}");
    // Signs are read in a loop, not by recursion: any number of them.
    assert_eq!(
        compile(&format!("a = {}1", "- ".repeat(1000))).canonical(),
        "a = 1"
    );
    assert_eq!(
        compile(&format!("a = {}1", "- ".repeat(999))).canonical(),
        "a = -1"
    );
    // 100k levels: refused by length, long before any recursion.
    let e = err(&nest(100_000));
    assert!(e.message.contains("limit"), "{e}");
    let e = err(&"(".repeat(100_000));
    assert!(e.message.contains("limit"), "{e}");
}

#[test]
fn long_flat_chains_compile_without_deep_recursion() {
    // ~500 conditions joined by AND: a flat list, not a 500-deep tree.
    let chain = vec!["a=1"; 500].join(" AND ");
    assert!(chain.len() <= MAX_EXPRESSION_BYTES);
    let f = compile(&chain);
    assert_eq!(f.evaluate(&msg(&[("a", "1")])), T);
    let mixed: Vec<String> = (0..400).map(|i| format!("a={i}")).collect();
    compile(&mixed.join(" OR "));
}

#[test]
fn in_list_size_is_limited() {
    let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    compile(&format!("a IN ({})", list(MAX_IN_LIST)));
    let e = err(&format!("a IN ({})", list(MAX_IN_LIST + 1)));
    assert!(
        e.message
            .contains("IN list has 1001 values; the limit is 1000"),
        "{e}"
    );
    assert!(e.column.is_some());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    // Deterministic pseudo-random printable garbage, 4 KiB.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..50 {
        let s: String = (0..MAX_EXPRESSION_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b' ' + (x % 95) as u8) as char
            })
            .collect();
        assert!(SqlFilter::compile(&s).is_err(), "round {round}");
        let _ = TagFilter::parse(&s);
    }
    for s in [
        "(((((((((((",
        ")))))",
        "'",
        "''''''",
        "a IN (",
        "a BETWEEN",
        "a BETWEEN 1 AND",
        "NOT",
        "a IS",
        "a IS NOT",
        "a CONTAINS",
        "a NOT",
        "a NOT CONTAINS",
        "$",
        "$$",
        "$1 = 1",
        "/*",
        "a = 1 --",
        "\u{0}",
        "a = 'x\u{0}'",
        "e'x' = a",
        "N'x' = a",
        "X'00' = a",
        "a = @x",
        "a::int = 1",
        "a[1] = 1",
        "a = {1}",
        "a = [1]",
        "a = 1 COLLATE x",
        "a = 1 AT TIME ZONE 'UTC'",
    ] {
        let _ = SqlFilter::compile(s);
    }
}

// ---------------------------------------------------------------------------------------------
// canonical text

#[test]
fn canonical_forms() {
    let cases: &[(&str, &str)] = &[
        ("a>5 and b='x'", "a > 5 AND b = 'x'"),
        ("((a > 5))", "a > 5"),
        ("b < a", "b < a"),
        ("1.0 = 1", "TRUE"),
        ("null or a = 1", "NULL OR a = 1"),
        ("a = 1 = true", "(a = 1) = TRUE"),
        ("vip and not vip", "vip AND NOT (vip)"),
        ("a not between lo and 3", "a NOT BETWEEN lo AND 3"),
        ("a not between 3 and 1", "a NOT BETWEEN 3 AND 1"),
        ("'axb' contains 'x'", "TRUE"),
        ("a > - -1", "a > 1"),
        ("a = 3l", "a = 3"),
        ("a = 1 AND (b = 2 AND c = 3)", "a = 1 AND b = 2 AND c = 3"),
        ("a = 1 OR (b = 2 OR c = 3)", "a = 1 OR b = 2 OR c = 3"),
        ("a = 1 AND (b = 2 OR c = 3)", "a = 1 AND (b = 2 OR c = 3)"),
        ("a = 1.50", "a = 1.5"),
        ("a = 1e3", "a = 1000.0"),
        ("a = 1e300", "a = 1e300"),
        ("a = -0.5", "a = -0.5"),
        ("a = 10L", "a = 10"),
        ("a = 'it''s'", "a = 'it''s'"),
        ("a not between 1 and 2", "a NOT BETWEEN 1 AND 2"),
        ("a not contains 'x'", "a NOT CONTAINS 'x'"),
        (
            "a startswith 'x' or a endswith 'y'",
            "a STARTSWITH 'x' OR a ENDSWITH 'y'",
        ),
        ("NOT (a = 1 OR b = 2)", "NOT (a = 1 OR b = 2)"),
        ("f = true", "f = TRUE"),
        ("true", "TRUE"),
        (
            "TAGS = 'A' and KEYS = 'k' and TOPIC = 't'",
            "TAGS = 'A' AND KEYS = 'k' AND TOPIC = 't'",
        ),
    ];
    for (expr, want) in cases {
        let f = compile(expr);
        assert_eq!(f.canonical(), *want, "{expr}");
        assert_eq!(compile(want).canonical(), *want, "{want} is a fixed point");
        assert_eq!(f.to_string(), *want);
    }
}

// ---------------------------------------------------------------------------------------------
// Filter, FilterKind, FilterCache

#[test]
fn filter_dispatches_by_kind() {
    assert!(Filter::parse(FilterKind::Tag, "*").unwrap().is_all());
    assert!(Filter::parse(FilterKind::Tag, "").unwrap().is_all());
    let t = Filter::parse(FilterKind::Tag, "B||A").unwrap();
    assert_eq!(t.kind(), FilterKind::Tag);
    assert_eq!(t.canonical(), "A || B");
    assert!(t.may_match_hash(tag_hash("A")));
    assert!(!t.may_match_hash(tag_hash("C")));
    let s = Filter::parse(FilterKind::Sql, "a>1").unwrap();
    assert_eq!(s.kind(), FilterKind::Sql);
    assert_eq!(s.canonical(), "a > 1");
    assert!(s.may_match_hash(tag_hash("anything")));
    assert!(s.matches(&msg(&[("a", "2")])));
    assert!(!s.matches(&msg(&[("a", "x")])));
    assert_eq!(s.to_string(), "sql: a > 1");
    assert!(Filter::parse(FilterKind::Sql, "").is_err());
    assert!(Filter::parse(FilterKind::Sql, "*").is_err());
    assert_eq!("SQL92".parse::<FilterKind>().unwrap(), FilterKind::Sql);
    assert_eq!("tag".parse::<FilterKind>().unwrap(), FilterKind::Tag);
    assert!("regex".parse::<FilterKind>().is_err());
    assert_eq!(FilterKind::Sql.name(), "sql");
}

#[test]
fn cache_shares_compiled_filters_and_stays_bounded() {
    let cache = FilterCache::new(4);
    let a = cache.get_or_compile(FilterKind::Sql, "a>1").unwrap();
    let b = cache.get_or_compile(FilterKind::Sql, "a > 1").unwrap();
    let c = cache.get_or_compile(FilterKind::Sql, "a>1").unwrap();
    assert!(
        Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c),
        "same canonical text, one filter"
    );
    assert_eq!(cache.len(), 2, "the written text and the canonical text");
    let t = cache.get_or_compile(FilterKind::Tag, "a > 1").unwrap();
    assert!(matches!(*t, Filter::Tag(_)), "the kind is part of the key");
    assert!(cache.get_or_compile(FilterKind::Sql, "a == 1").is_err());
    for i in 0..20 {
        cache
            .get_or_compile(FilterKind::Sql, &format!("a = {i}"))
            .unwrap();
        assert!(cache.len() <= cache.capacity());
    }
    // The most recently used entry survives.
    let recent = cache.get_or_compile(FilterKind::Sql, "a = 19").unwrap();
    let again = cache.get_or_compile(FilterKind::Sql, "a = 19").unwrap();
    assert!(Arc::ptr_eq(&recent, &again));
    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(
        FilterCache::default().capacity(),
        FilterCache::DEFAULT_CAPACITY
    );
}

// ---------------------------------------------------------------------------------------------
// property tests

const NAMES: &[&str] = &["a", "b", "c", "TAGS", "KEYS", "TOPIC"];
const STRINGS: &[&str] = &[
    "x", "y", "", "3", "10", "3.5", "it's", "x y", "TagA", "true",
];
const NUMBERS: &[&str] = &[
    "0",
    "3",
    "-2",
    "10",
    "3.5",
    "1e1",
    "0.5",
    "-0.25",
    "9223372036854775807",
];

fn arb_name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES).prop_map(str::to_string)
}

fn arb_str_lit() -> impl Strategy<Value = String> {
    prop::sample::select(STRINGS).prop_map(quote)
}

fn arb_num_lit() -> impl Strategy<Value = String> {
    prop::sample::select(NUMBERS).prop_map(str::to_string)
}

fn arb_predicate() -> impl Strategy<Value = String> {
    let not = || prop::sample::select(&["", " NOT", " not"][..]);
    prop_oneof![
        (
            arb_name(),
            prop::sample::select(&["=", "<>", "<", "<=", ">", ">="][..]),
            arb_num_lit()
        )
            .prop_map(|(n, op, v)| format!("{n} {op} {v}")),
        (
            arb_num_lit(),
            prop::sample::select(&["=", "<", ">="][..]),
            arb_name()
        )
            .prop_map(|(v, op, n)| format!("{v} {op} {n}")),
        (
            arb_name(),
            prop::sample::select(&["=", "<>"][..]),
            arb_str_lit()
        )
            .prop_map(|(n, op, v)| format!("{n}{op}{v}")),
        (
            arb_name(),
            prop::sample::select(&["IS NULL", "is not null"][..])
        )
            .prop_map(|(n, t)| format!("{n} {t}")),
        (arb_name(), not(), arb_num_lit(), arb_num_lit()).prop_map(|(n, not, lo, hi)| {
            let (lo, hi) = match (lo.parse::<f64>(), hi.parse::<f64>()) {
                (Ok(l), Ok(h)) if l > h => (hi, lo),
                _ => (lo, hi),
            };
            format!("{n}{not} BETWEEN {lo} AND {hi}")
        }),
        (
            arb_name(),
            not(),
            prop::collection::vec(arb_str_lit(), 1..5)
        )
            .prop_map(|(n, not, l)| format!("{n}{not} IN ({})", l.join(", "))),
        (
            arb_name(),
            not(),
            prop::collection::vec(arb_num_lit(), 1..5)
        )
            .prop_map(|(n, not, l)| format!("{n}{not} in ({})", l.join(","))),
        (
            arb_name(),
            not(),
            prop::sample::select(&["CONTAINS", "STARTSWITH", "endswith"][..]),
            arb_str_lit()
        )
            .prop_map(|(n, not, op, v)| format!("{n}{not} {op} {v}")),
        (arb_name(), prop::sample::select(&["TRUE", "false"][..]))
            .prop_map(|(n, b)| format!("{n} = {b}")),
        prop::sample::select(&["TRUE", "FALSE"][..]).prop_map(str::to_string),
    ]
}

fn arb_expr() -> impl Strategy<Value = String> {
    arb_predicate().prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) AND ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) OR ({b})")),
            // Unparenthesized: precedence decides.
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("NOT ({a})")),
            inner.clone().prop_map(|a| format!("not {a}")),
        ]
    })
}

fn arb_message() -> impl Strategy<Value = PropertyMap> {
    let value = prop::option::of(prop::sample::select(
        STRINGS.iter().chain(NUMBERS).copied().collect::<Vec<_>>(),
    ));
    (
        value.clone(),
        value.clone(),
        value,
        prop::sample::select(&["", "x", "TagA", "3"][..]),
        prop::collection::vec(prop::sample::select(&["x", "y", "3", "it's"][..]), 0..3),
        prop::sample::select(&["x", "orders", "10"][..]),
    )
        .prop_map(|(a, b, c, tag, keys, topic)| {
            let mut m = PropertyMap::new().with_topic(topic).with_tag(tag);
            for k in keys {
                m = m.with_key(k);
            }
            for (name, v) in [("a", a), ("b", b), ("c", c)] {
                if let Some(v) = v {
                    m = m.with_property(name, v);
                }
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn canonical_text_compiles_to_an_equivalent_filter(
        expr in arb_expr(),
        messages in prop::collection::vec(arb_message(), 1..16),
    ) {
        prop_assume!(expr.len() <= MAX_EXPRESSION_BYTES);
        let first = SqlFilter::compile(&expr);
        prop_assert!(first.is_ok(), "{expr:?}: {:?}", first.err());
        let first = first.unwrap();
        let canonical = first.canonical();
        let second = SqlFilter::compile(&canonical);
        prop_assert!(second.is_ok(), "canonical {canonical:?} of {expr:?}: {:?}", second.err());
        let second = second.unwrap();
        prop_assert_eq!(second.canonical(), canonical.clone(), "canonical is a fixed point");
        for m in &messages {
            prop_assert_eq!(first.evaluate(m), second.evaluate(m), "{} on {:?}", canonical, m);
        }
    }

    #[test]
    fn not_is_the_three_valued_negation(expr in arb_expr(), m in arb_message()) {
        prop_assume!(expr.len() + 8 <= MAX_EXPRESSION_BYTES);
        let f = SqlFilter::compile(&expr).unwrap();
        let g = SqlFilter::compile(&format!("NOT ({expr})")).unwrap();
        prop_assert_eq!(g.evaluate(&m), !f.evaluate(&m));
    }

    #[test]
    fn record_view_fast_lookup_agrees_with_record_view(
        tag in "[a-zA-Z]{0,8}",
        topic in "[a-z]{1,20}",
        keys in prop::collection::vec("[a-z0-9]{1,6}", 0..4),
        props in prop::collection::vec(("[a-c]{1,2}", ".{0,8}"), 0..8),
        probes in prop::collection::vec("[a-c]{1,2}", 1..6),
    ) {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let buf = encode_record(&topic, &tag, &keys, &props);
        let view = RecordView::parse(&buf).unwrap();
        for name in &probes {
            prop_assert_eq!(MessageProps::property(&view, name), RecordView::property(&view, name));
        }
        prop_assert_eq!(MessageProps::tag(&view), tag.as_str());
        prop_assert_eq!(MessageProps::topic(&view), topic.as_str());
        prop_assert_eq!(MessageProps::keys(&view).collect::<Vec<_>>(), keys);
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,300}") {
        let _ = SqlFilter::compile(&s);
        let _ = TagFilter::parse(&s);
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(&[
        "a", "b", "TAGS", "=", "<>", "<", ">=", "(", ")", "AND", "OR", "NOT", "IN", "BETWEEN",
        "IS", "NULL", "TRUE", "CONTAINS", "STARTSWITH", "'x'", "'it''s'", "1", "-", "2.5e3",
        ",", "LIKE", "+", "*", "SELECT", "f(", "==", "||", "\"q\"", ".",
    ][..]), 0..40)) {
        let s = tokens.join(" ");
        if let Ok(f) = SqlFilter::compile(&s) {
            // Whatever compiles has a canonical text that compiles to the same canonical text.
            let again = SqlFilter::compile(&f.canonical());
            prop_assert!(again.is_ok(), "{s:?} -> {:?}", f.canonical());
            prop_assert_eq!(again.unwrap().canonical(), f.canonical());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RocketMQ compatibility (issue 18): what RocketMQ accepts, with its answers

/// Expressions RocketMQ accepts that Quiver once refused or answered differently, with the
/// answer for a = '5', b = '7', c = 'true', s = 'axb', q = "it's" (docs/FILTERS.md §8.1).
#[test]
fn rocketmq_expressions_are_accepted_with_its_answers() {
    let m = msg(&[
        ("a", "5"),
        ("b", "7"),
        ("c", "true"),
        ("s", "axb"),
        ("q", "it's"),
    ]);
    let cases: &[(&str, Truth)] = &[
        // Two properties.
        ("a < b", T),
        ("a > b", F),
        ("a = b", F),
        ("a <> b", T),
        ("a >= a", T),
        ("a BETWEEN a AND b", T),
        ("b BETWEEN a AND 6", F),
        ("a NOT BETWEEN 1 AND b", F),
        ("a = missing", U),
        ("s = s", T),
        ("s < s", U),
        // Boolean operands.
        ("c", T),
        ("NOT c", F),
        ("a", U),
        ("missing", U),
        ("c AND a = 5", T),
        ("TRUE", T),
        ("FALSE", F),
        ("NULL", U),
        ("TRUE = TRUE", T),
        ("TRUE <> FALSE", T),
        ("1 = 1", T),
        ("1 = 1.0", T),
        ("'1' = 1", T),
        ("'a' = 'a'", T),
        ("'a' <> 'a'", F),
        ("NULL OR TRUE", T),
        ("NULL AND FALSE", F),
        ("NULL AND TRUE", U),
        ("a = 5 = TRUE", T),
        ("a = 6 = TRUE", F),
        ("a = 6 = FALSE", T),
        ("(a = 5) = (b = 7)", T),
        ("missing = 1 = TRUE", U),
        ("c = TRUE", T),
        // String operators with a literal on the left.
        ("'axb' CONTAINS 'x'", T),
        ("'axb' NOT STARTSWITH 'u'", T),
        ("' ' ENDSWITH ' '", T),
        ("'axb' ENDSWITH 'a'", F),
        // Literals.
        ("a > 3l", T),
        ("a > 3L", T),
        ("a > - -1", T),
        ("a < - -6", T),
        ("q = 'it''s'", T),
        ("'''tag''' = '''tag'''", T),
        // A reversed range under NOT: true for every number.
        ("a NOT BETWEEN 3 AND 1", T),
        ("s NOT BETWEEN 3 AND 1", U),
    ];
    for (expr, want) in cases {
        assert_eq!(compile(expr).evaluate(&m), *want, "{expr}");
        // The canonical text means the same.
        let canonical = compile(expr).canonical();
        assert_eq!(
            compile(&canonical).evaluate(&m),
            *want,
            "{expr} as {canonical}"
        );
    }
    let tagged = PropertyMap::new().with_topic("t").with_tag("'tag'");
    assert!(compile("TAGS = '''tag'''").matches(&tagged));
    // Still refused (deliberately, or as RocketMQ refuses them).
    for expr in [
        "a BETWEEN 3 AND 1",
        "a = NULL",
        "a > 'x'",
        "'a' < 'b'",
        "TRUE > FALSE",
        "a > 9223372036854775808",
        "1",
        "a = 1 b",
    ] {
        err(expr);
    }
}

// ---------------------------------------------------------------------------------------------
// a straightforward reference interpreter, against the compiled evaluator

const RNAMES: &[&str] = &["a", "b", "c", "missing"];
const RNUMS: &[&str] = &["0", "1", "-1", "2.5", "10", "1e1", "9223372036854775807"];
const RSTRS: &[&str] = &["", "x", "10", "1.0", "true", "FALSE", "it's", "xy"];

#[derive(Debug, Clone)]
enum ROp {
    Prop(&'static str),
    Num(&'static str),
    Str(&'static str),
    Bool(bool),
    Cond(Box<RCond>),
}

#[derive(Debug, Clone)]
enum RCond {
    Const(Option<bool>),
    Truthy(&'static str),
    Cmp(ROp, &'static str, ROp),
    Between(ROp, bool, ROp, ROp),
    InStr(&'static str, bool, Vec<&'static str>),
    InNum(&'static str, bool, Vec<&'static str>),
    Text(ROp, bool, &'static str, &'static str),
    IsNull(&'static str, bool),
    Not(Box<RCond>),
    And(Box<RCond>, Box<RCond>),
    Or(Box<RCond>, Box<RCond>),
}

impl ROp {
    fn text(&self) -> String {
        match self {
            ROp::Prop(n) | ROp::Num(n) => n.to_string(),
            ROp::Str(s) => quote(s),
            ROp::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
            ROp::Cond(c) => format!("({})", c.text()),
        }
    }
}

impl RCond {
    fn text(&self) -> String {
        let not = |n: &bool| if *n { " NOT" } else { "" };
        match self {
            RCond::Const(None) => "NULL".into(),
            RCond::Const(Some(b)) => if *b { "TRUE" } else { "FALSE" }.into(),
            RCond::Truthy(n) => n.to_string(),
            RCond::Cmp(l, op, r) => format!("{} {op} {}", l.text(), r.text()),
            RCond::Between(x, n, lo, hi) => {
                format!(
                    "{}{} BETWEEN {} AND {}",
                    x.text(),
                    not(n),
                    lo.text(),
                    hi.text()
                )
            }
            RCond::InStr(p, n, l) => format!(
                "{p}{} IN ({})",
                not(n),
                l.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
            RCond::InNum(p, n, l) => format!("{p}{} IN ({})", not(n), l.join(", ")),
            RCond::Text(l, n, op, s) => format!("{}{} {op} {}", l.text(), not(n), quote(s)),
            RCond::IsNull(p, n) => format!("{p} IS{} NULL", not(n)),
            RCond::Not(c) => format!("NOT ({})", c.text()),
            RCond::And(a, b) => format!("({}) AND ({})", a.text(), b.text()),
            RCond::Or(a, b) => format!("({}) OR ({})", a.text(), b.text()),
        }
    }
}

/// A value as the reference sees it.
#[derive(Debug, Clone)]
enum RVal {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
}

/// A number: exact when both are integers, else as f64; `None` when the text is not one
/// (only `[+-]digits[.digits][e[+-]digits]`-like text, finite).
fn rnum(s: &str) -> Option<(Option<i64>, f64)> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
        && s.chars().any(|c| c.is_ascii_digit());
    if !ok {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    let int = if s.contains(['.', 'e', 'E']) {
        None
    } else {
        s.parse::<i64>().ok()
    };
    Some((int, f))
}

fn rorder(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let (x, y) = (rnum(a)?, rnum(b)?);
    match (x.0, y.0) {
        (Some(i), Some(j)) => Some(i.cmp(&j)),
        _ => x.1.partial_cmp(&y.1),
    }
}

fn rbool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn rtruth(b: Option<bool>) -> Truth {
    match b {
        Some(true) => T,
        Some(false) => F,
        None => U,
    }
}

fn rholds(op: &str, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        "=" => o == Equal,
        "<>" => o != Equal,
        "<" => o == Less,
        "<=" => o != Greater,
        ">" => o == Greater,
        _ => o != Less,
    }
}

fn rcompare(l: &RVal, op: &str, r: &RVal) -> Truth {
    let eq = op == "=" || op == "<>";
    let same = |x: bool| rtruth(Some(x == (op == "=")));
    match (l, r) {
        (RVal::Null, _) | (_, RVal::Null) => U,
        (RVal::Num(a), RVal::Num(b))
        | (RVal::Num(a), RVal::Str(b))
        | (RVal::Str(a), RVal::Num(b)) => rtruth(rorder(a, b).map(|o| rholds(op, o))),
        (RVal::Str(a), RVal::Str(b)) if eq => same(a == b),
        (RVal::Str(a), RVal::Str(b)) => rtruth(rorder(a, b).map(|o| rholds(op, o))),
        (RVal::Bool(a), RVal::Bool(b)) if eq => same(a == b),
        (RVal::Bool(a), RVal::Str(s)) | (RVal::Str(s), RVal::Bool(a)) if eq => {
            rtruth(rbool(s).map(|b| (b == *a) == (op == "=")))
        }
        _ => U,
    }
}

fn rand3(a: Truth, b: Truth) -> Truth {
    match (a, b) {
        (F, _) | (_, F) => F,
        (T, T) => T,
        _ => U,
    }
}

fn rnot(a: Truth) -> Truth {
    match a {
        T => F,
        F => T,
        U => U,
    }
}

fn rval(o: &ROp, m: &PropertyMap) -> RVal {
    match o {
        ROp::Prop(n) => m
            .property(n)
            .map_or(RVal::Null, |v| RVal::Str(v.to_string())),
        ROp::Num(n) => RVal::Num(n.to_string()),
        ROp::Str(s) => RVal::Str(s.to_string()),
        ROp::Bool(b) => RVal::Bool(*b),
        ROp::Cond(c) => match reval(c, m) {
            T => RVal::Bool(true),
            F => RVal::Bool(false),
            U => RVal::Null,
        },
    }
}

fn reval(c: &RCond, m: &PropertyMap) -> Truth {
    let neg = |n: bool, t: Truth| if n { rnot(t) } else { t };
    match c {
        RCond::Const(b) => rtruth(*b),
        RCond::Truthy(n) => rtruth(m.property(n).and_then(rbool)),
        RCond::Cmp(l, op, r) => rcompare(&rval(l, m), op, &rval(r, m)),
        RCond::Between(x, n, lo, hi) => {
            let x = rval(x, m);
            neg(
                *n,
                rand3(
                    rcompare(&x, ">=", &rval(lo, m)),
                    rcompare(&x, "<=", &rval(hi, m)),
                ),
            )
        }
        RCond::InStr(p, n, l) => match m.property(p) {
            None => U,
            Some(v) => neg(*n, rtruth(Some(l.contains(&v)))),
        },
        RCond::InNum(p, n, l) => match m.property(p) {
            None => U,
            Some(v) if rnum(v).is_none() => U,
            Some(v) => neg(
                *n,
                rtruth(Some(
                    l.iter()
                        .any(|x| rorder(v, x) == Some(std::cmp::Ordering::Equal)),
                )),
            ),
        },
        RCond::Text(l, n, op, s) => match rval(l, m) {
            RVal::Str(v) => neg(
                *n,
                rtruth(Some(match *op {
                    "CONTAINS" => v.contains(s),
                    "STARTSWITH" => v.starts_with(s),
                    _ => v.ends_with(s),
                })),
            ),
            _ => U,
        },
        RCond::IsNull(p, n) => neg(*n, rtruth(Some(m.property(p).is_none()))),
        RCond::Not(c) => rnot(reval(c, m)),
        RCond::And(a, b) => rand3(reval(a, m), reval(b, m)),
        RCond::Or(a, b) => rnot(rand3(rnot(reval(a, m)), rnot(reval(b, m)))),
    }
}

fn rname() -> impl Strategy<Value = &'static str> {
    prop::sample::select(RNAMES)
}

fn rnum_lit() -> impl Strategy<Value = &'static str> {
    prop::sample::select(RNUMS)
}

fn rstr_lit() -> impl Strategy<Value = &'static str> {
    prop::sample::select(RSTRS)
}

/// A comparison operand that is a value (not a condition).
fn rvalue_op() -> impl Strategy<Value = ROp> {
    prop_oneof![
        rname().prop_map(ROp::Prop),
        rnum_lit().prop_map(ROp::Num),
        rstr_lit().prop_map(ROp::Str),
        any::<bool>().prop_map(ROp::Bool),
    ]
}

fn rleaf() -> impl Strategy<Value = RCond> {
    let cmp_op = prop::sample::select(&["=", "<>", "<", "<=", ">", ">="][..]);
    prop_oneof![
        prop::option::of(any::<bool>()).prop_map(RCond::Const),
        rname().prop_map(RCond::Truthy),
        (rvalue_op(), cmp_op, rvalue_op()).prop_filter_map(
            "a comparison the language refuses",
            |(l, op, r)| {
                let ordering = !matches!(op, "=" | "<>");
                let refused = |o: &ROp| ordering && matches!(o, ROp::Str(_) | ROp::Bool(_));
                (!refused(&l) && !refused(&r)).then_some(RCond::Cmp(l, op, r))
            }
        ),
        (
            prop_oneof![rname().prop_map(ROp::Prop), rnum_lit().prop_map(ROp::Num)],
            any::<bool>(),
            prop_oneof![rname().prop_map(ROp::Prop), rnum_lit().prop_map(ROp::Num)],
            prop_oneof![rname().prop_map(ROp::Prop), rnum_lit().prop_map(ROp::Num)],
        )
            .prop_filter(
                "a reversed range of literals is refused",
                |(x, n, lo, hi)| {
                    match (x, lo, hi) {
                        (ROp::Prop(_), ROp::Num(a), ROp::Num(b)) => {
                            *n || rorder(a, b) != Some(std::cmp::Ordering::Greater)
                        }
                        _ => true,
                    }
                }
            )
            .prop_map(|(x, n, lo, hi)| RCond::Between(x, n, lo, hi)),
        (
            rname(),
            any::<bool>(),
            prop::collection::vec(rstr_lit(), 1..4)
        )
            .prop_map(|(p, n, l)| RCond::InStr(p, n, l)),
        (
            rname(),
            any::<bool>(),
            prop::collection::vec(rnum_lit(), 1..4)
        )
            .prop_map(|(p, n, l)| RCond::InNum(p, n, l)),
        (
            prop_oneof![rname().prop_map(ROp::Prop), rstr_lit().prop_map(ROp::Str)],
            any::<bool>(),
            prop::sample::select(&["CONTAINS", "STARTSWITH", "ENDSWITH"][..]),
            rstr_lit()
        )
            .prop_map(|(l, n, op, s)| RCond::Text(l, n, op, s)),
        (rname(), any::<bool>()).prop_map(|(p, n)| RCond::IsNull(p, n)),
    ]
}

fn rcond() -> impl Strategy<Value = RCond> {
    rleaf().prop_recursive(4, 24, 3, |inner| {
        let cmp_op = prop::sample::select(&["=", "<>"][..]);
        prop_oneof![
            inner.clone().prop_map(|c| RCond::Not(Box::new(c))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| RCond::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| RCond::Or(Box::new(a), Box::new(b))),
            // A condition compared with a value or another condition.
            (
                inner.clone(),
                cmp_op,
                prop_oneof![
                    rvalue_op(),
                    inner.clone().prop_map(|c| ROp::Cond(Box::new(c)))
                ]
            )
                // `(NULL) = x` is the NULL literal compared: refused like `NULL = x`.
                // `(NULL) = x` is the NULL literal compared (refused like `NULL = x`), and
                // `(a) = x` compares the property a, not the condition `a`.
                .prop_filter("NULL or a bare property compared", |(c, _, r)| {
                    let plain = |c: &RCond| matches!(c, RCond::Const(None) | RCond::Truthy(_));
                    !plain(c) && !matches!(r, ROp::Cond(x) if plain(x))
                })
                .prop_map(|(c, op, r)| RCond::Cmp(ROp::Cond(Box::new(c)), op, r)),
        ]
    })
}

fn rmessage() -> impl Strategy<Value = PropertyMap> {
    let value = prop::option::of(prop::sample::select(
        RSTRS.iter().chain(RNUMS).copied().collect::<Vec<_>>(),
    ));
    (value.clone(), value.clone(), value).prop_map(|(a, b, c)| {
        let mut m = PropertyMap::new().with_topic("t");
        for (name, v) in [("a", a), ("b", b), ("c", c)] {
            if let Some(v) = v {
                m = m.with_property(name, v);
            }
        }
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The compiled evaluator (with its fast paths, folded literals and canonical text)
    /// agrees with a plain interpreter of the documented rules on random expressions.
    #[test]
    fn the_compiled_evaluator_agrees_with_a_reference_interpreter(
        c in rcond(),
        msgs in prop::collection::vec(rmessage(), 1..6),
    ) {
        let text = c.text();
        let f = SqlFilter::compile(&text)
            .unwrap_or_else(|e| panic!("{text:?} should compile: {e}"));
        let again = SqlFilter::compile(f.as_str())
            .unwrap_or_else(|e| panic!("canonical {:?} of {text:?} should compile: {e}", f.as_str()));
        prop_assert_eq!(again.as_str(), f.as_str());
        for m in &msgs {
            let want = reval(&c, m);
            prop_assert_eq!(f.evaluate(m), want, "{} on {:?}", text, m);
            prop_assert_eq!(again.evaluate(m), want, "canonical {} on {:?}", f.as_str(), m);
        }
    }
}
