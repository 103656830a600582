//! The seckill and compensation examples (examples/), compiled into this binary and run
//! against a real broker: each checks its own outcome and fails when anything is off.

#[allow(dead_code)]
#[path = "../../examples/seckill.rs"]
mod seckill;

#[allow(dead_code)]
#[path = "../../examples/compensation.rs"]
mod compensation;

use crate::harness::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seckill_burst_is_processed_exactly_once_within_stock() {
    let broker = TestBroker::start_tuned(|c| {
        c.store.flush_mode = quiver::store::FlushMode::Sync;
    })
    .await;
    let out = seckill::run(
        broker.client_config(),
        seckill::Settings {
            buyers: 600,
            connections: 60,
            stock: 100,
            capacity: 3000,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the seckill example failed: {e}"));
    assert_eq!(out.failed, 0, "no send fails under the burst: {out:?}");
    assert_eq!(out.acknowledged, 600);
    assert_eq!(out.processed, 600);
    assert_eq!(out.accepted, 100);
    assert_eq!(out.sold_out, 500);
    assert_eq!(out.stock_left, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_undoes_each_failed_order_once() {
    let broker = TestBroker::start_tuned(|c| {
        c.messaging.retry_delays = vec!["1s".into()];
    })
    .await;
    let seen = compensation::run(broker.client_config())
        .await
        .unwrap_or_else(|e| panic!("the compensation example failed: {e}"));
    // The example checks its tables itself; here: the balance service saw order-4 three
    // times (two copies and one redelivery after its failed acknowledgement).
    let balance = &seen[&(compensation::Kind::Balance, "order-4".to_string())];
    assert_eq!(balance.len(), 3, "{seen:?}");
    broker.stop().await;
}
