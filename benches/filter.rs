//! Filter evaluation throughput: compiled expressions against one stored record (a
//! `RecordView` over bytes made by `encode_into`) with 10 properties, as the broker sees it
//! when it scans a queue for a filtered pull.
//!
//! `cargo bench --bench filter -- --measurement-time 2`; the element rate is evaluations/s on
//! one core. Target: >= 10 M/s for `a > 5 AND b = 'x'`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quiver::filter::{Filter, FilterKind, SqlFilter, Truth};
use quiver_protocol::record::{encode_into, NewMessage, RecordLimits, RecordPlacement};
use quiver_protocol::{tag_hash, RecordView};

/// One record with a tag, two keys and 10 properties.
fn record() -> Vec<u8> {
    let props = [
        ("id", "ord-000123"),
        ("customer", "c-98765"),
        ("region", "eu"),
        ("channel", "app"),
        ("currency", "EUR"),
        ("amount", "250.75"),
        ("source", "web"),
        ("a", "7"),
        ("b", "x"),
        ("vip", "gold"),
    ];
    let keys = ["ord-000123", "c-98765"];
    let m = NewMessage {
        msg_id: 42,
        flags: 0,
        born_timestamp: 1_700_000_000_000,
        born_host: "127.0.0.1:4000".parse().expect("address"),
        reconsume_times: 0,
        tag: "TagB",
        keys: &keys,
        properties: &props,
        body: &[0u8; 256],
    };
    let limits = RecordLimits {
        max_body: 1 << 20,
        max_properties: 1 << 15,
    };
    let len = m.encoded_len("orders", &limits).expect("valid message");
    let mut buf = vec![0u8; len];
    let at = RecordPlacement {
        queue_id: 0,
        queue_offset: 0,
        phys_offset: 0,
        store_timestamp: 1_700_000_000_001,
        extra_flags: 0,
    };
    encode_into(&mut buf, "orders", &m, &at);
    buf
}

fn bench_filters(c: &mut Criterion) {
    let buf = record();
    let view = RecordView::parse(&buf).expect("record");
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));

    for (name, expr) in [
        ("sql_a_gt_5_and_b_eq_x", "a > 5 AND b = 'x'"),
        (
            "sql_region_in_amount_vip",
            "region IN ('eu','us') AND amount > 100.5 AND vip IS NOT NULL",
        ),
        // RocketMQ's general forms: two properties compared, a chained comparison.
        ("sql_two_properties", "amount > a AND region <> channel"),
        (
            "sql_chained_comparison",
            "a = 7 = TRUE AND amount BETWEEN a AND 300",
        ),
    ] {
        let f = SqlFilter::compile(expr).expect("compiles");
        assert_eq!(f.evaluate(&view), Truth::True, "{expr}");
        group.bench_function(name, |b| {
            b.iter(|| black_box(&f).evaluate(black_box(&view)))
        });
    }

    // Tag filter as the broker runs it: the hash from the consume-queue entry, then the
    // exact check on the record.
    let tags = Filter::parse(FilterKind::Tag, "TagA || TagB || TagC").expect("parses");
    let hash = tag_hash(view.tag());
    assert!(tags.may_match_hash(hash) && tags.matches(&view));
    group.bench_function("tag_a_b_c_hash_and_exact", |b| {
        b.iter(|| {
            let f = black_box(&tags);
            f.may_match_hash(black_box(hash)) && f.matches(black_box(&view))
        })
    });
    group.finish();

    let mut compile = c.benchmark_group("compile");
    compile.throughput(Throughput::Elements(1));
    compile.bench_function("sql_region_in_amount_vip", |b| {
        b.iter(|| {
            SqlFilter::compile(black_box(
                "region IN ('eu','us') AND amount > 100.5 AND vip IS NOT NULL",
            ))
        })
    });
    compile.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = bench_filters
}
criterion_main!(benches);
