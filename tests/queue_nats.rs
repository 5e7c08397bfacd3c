//! The JetStream job queue against a real nats-server (2.9): dedup, redelivery, progress,
//! nak/term/ack, a server restart mid-run, and the max_deliver limit. Each test has its own
//! server, so they run in parallel.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use classguard::queue::{Delivery, JobQueue, QueueConfig, QueueDepth};
use common::nats::NatsServer;

const ACK_WAIT: Duration = Duration::from_secs(2);

fn config(server: &NatsServer) -> QueueConfig {
    let mut c = QueueConfig::new(&server.url());
    c.ack_wait = ACK_WAIT;
    c
}

async fn next_some(q: &JobQueue, wait: Duration) -> Delivery {
    q.next(wait)
        .await
        .expect("next")
        .unwrap_or_else(|| panic!("no job within {wait:?}"))
}

async fn assert_none(q: &JobQueue, wait: Duration, why: &str) {
    if let Some(d) = q.next(wait).await.expect("next") {
        panic!("{why}: got {d:?}");
    }
}

async fn depth(q: &JobQueue) -> QueueDepth {
    q.depth().await.expect("depth")
}

/// Nothing waiting and nothing in flight.
async fn assert_drained(q: &JobQueue) {
    assert_eq!(
        depth(q).await,
        QueueDepth {
            pending: 0,
            ack_pending: 0
        }
    );
}

/// Messages the stream still stores (a work-queue stream drops a job once it is acked).
async fn stored(server: &NatsServer, stream: &str) -> u64 {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_msg_id_is_stored_and_delivered_once() {
    let server = NatsServer::start();
    let q = JobQueue::connect(&config(&server)).await.unwrap();

    let first = q
        .publish("rec-1", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let second = q
        .publish("rec-1", Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert!(second.duplicate, "second publish of rec-1: {second:?}");
    assert_eq!(second.sequence, first.sequence);
    let other = q.publish("rec-2", Bytes::from_static(b"x")).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.sequence, first.sequence + 1);
    assert_eq!(
        depth(&q).await,
        QueueDepth {
            pending: 2,
            ack_pending: 0
        }
    );

    let d = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(d.payload, Bytes::from_static(b"one"));
    assert_eq!(d.msg_id.as_deref(), Some("rec-1"));
    assert_eq!(d.delivered, 1);
    assert_eq!(d.stream_sequence, first.sequence);
    d.ack().await.unwrap();
    let d = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(d.msg_id.as_deref(), Some("rec-2"));
    d.ack().await.unwrap();
    assert_none(&q, Duration::from_millis(500), "rec-1 delivered twice").await;
    assert_eq!(stored(&server, "CLASSGUARD_JOBS").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_job_is_redelivered_after_ack_wait() {
    let server = NatsServer::start();
    let q = JobQueue::connect(&config(&server)).await.unwrap();
    q.publish("rec-1", Bytes::from_static(b"job"))
        .await
        .unwrap();

    let first = next_some(&q, Duration::from_secs(2)).await;
    let t0 = Instant::now();
    assert_eq!(first.delivered, 1);
    assert!(!first.last_attempt);
    // Held, not acked: nobody else gets it before ack_wait...
    assert_none(&q, Duration::from_secs(1), "redelivered before ack_wait").await;
    assert_eq!(
        depth(&q).await,
        QueueDepth {
            pending: 0,
            ack_pending: 1
        }
    );
    // ...and it comes back after.
    let again = next_some(&q, Duration::from_secs(5)).await;
    let after = t0.elapsed();
    assert!(after >= ACK_WAIT - Duration::from_millis(300), "{after:?}");
    assert_eq!(again.delivered, 2);
    assert_eq!(again.stream_sequence, first.stream_sequence);
    assert_eq!(again.payload, first.payload);
    again.ack().await.unwrap();
    assert_drained(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_keeps_a_long_job_from_redelivery() {
    let server = NatsServer::start();
    let cfg = config(&server);
    let q = JobQueue::connect(&cfg).await.unwrap();
    // A second worker process: its own connection, the same durable consumer.
    let other = JobQueue::connect(&cfg).await.unwrap();
    q.publish("rec-1", Bytes::from_static(b"long job"))
        .await
        .unwrap();

    let d = next_some(&q, Duration::from_secs(2)).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ticker = {
        let d = d.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        d.progress().await.expect("progress");
                        sent += 1;
                    }
                    _ = &mut stop_rx => return sent,
                }
            }
        })
    };
    // Three times ack_wait: without progress the job would have gone to `other` by now.
    let t0 = Instant::now();
    assert_none(&other, ACK_WAIT * 3, "redelivered despite progress").await;
    assert!(t0.elapsed() >= ACK_WAIT * 3 - Duration::from_millis(200));
    stop_tx.send(()).unwrap();
    let sent = ticker.await.unwrap();
    assert!(sent >= 5, "only {sent} progress messages");
    d.ack().await.unwrap();
    // Acked: gone for good, even past another ack_wait.
    assert_none(
        &other,
        ACK_WAIT + Duration::from_secs(1),
        "redelivered after ack",
    )
    .await;
    assert_drained(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_redelivers_term_drops_ack_removes() {
    let server = NatsServer::start();
    let q = JobQueue::connect(&config(&server)).await.unwrap();
    for id in ["a", "b", "c"] {
        q.publish(id, Bytes::from(id)).await.unwrap();
    }

    // nak: back at once, counted as a second delivery.
    let a = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(a.msg_id.as_deref(), Some("a"));
    a.nak(None).await.unwrap();
    let a = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(a.msg_id.as_deref(), Some("a"));
    assert_eq!(a.delivered, 2);
    // term: never again (checked at the end, past its ack_wait).
    a.term().await.unwrap();

    let b = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(b.msg_id.as_deref(), Some("b"));
    b.ack().await.unwrap();

    // nak with a delay: not before the delay, then again.
    let c = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(c.msg_id.as_deref(), Some("c"));
    let t0 = Instant::now();
    c.nak(Some(Duration::from_millis(1500))).await.unwrap();
    assert_none(&q, Duration::from_millis(700), "nak delay ignored").await;
    let c = next_some(&q, Duration::from_secs(3)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(c.msg_id.as_deref(), Some("c"));
    assert_eq!(c.delivered, 2);
    c.ack().await.unwrap();

    assert_none(&q, ACK_WAIT + Duration::from_secs(1), "a job came back").await;
    assert_drained(&q).await;
    assert_eq!(stored(&server, "CLASSGUARD_JOBS").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_server_restart_and_the_handle_recovers() {
    let mut server = NatsServer::start();
    let q = JobQueue::connect(&config(&server)).await.unwrap();
    q.publish("before-1", Bytes::from_static(b"1"))
        .await
        .unwrap();
    q.publish("before-2", Bytes::from_static(b"2"))
        .await
        .unwrap();

    server.kill();
    // While the server is down a publish keeps retrying...
    let publisher = {
        let q = q.clone();
        tokio::spawn(async move { q.publish("during", Bytes::from_static(b"3")).await })
    };
    // ...and next gives up after about its wait, with nothing or an error.
    let t0 = Instant::now();
    let down = q.next(Duration::from_secs(1)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "next hung {:?}",
        t0.elapsed()
    );
    assert!(!matches!(down, Ok(Some(_))), "a job while down: {down:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    let published = tokio::time::timeout(Duration::from_secs(15), publisher)
        .await
        .expect("publish after restart")
        .unwrap()
        .expect("publish retried through the restart");
    assert_eq!(published.sequence, 3);

    // All three, in order, through the same handle (the first calls may still be reconnecting).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "only got {got:?}");
        match q.next(Duration::from_secs(2)).await {
            Ok(Some(d)) => {
                got.push(d.msg_id.clone().unwrap_or_default());
                d.ack().await.unwrap();
            }
            Ok(None) => {}
            Err(e) => eprintln!("next while reconnecting: {e}"),
        }
    }
    assert_eq!(got, ["before-1", "before-2", "during"]);
    let after = q.publish("after", Bytes::from_static(b"4")).await.unwrap();
    assert!(!after.duplicate);
    let d = next_some(&q, Duration::from_secs(2)).await;
    assert_eq!(d.msg_id.as_deref(), Some("after"));
    d.ack().await.unwrap();
    assert_drained(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_is_not_delivered_past_max_deliver() {
    let server = NatsServer::start();
    let mut cfg = config(&server);
    cfg.max_deliver = 3;
    cfg.ack_wait = Duration::from_secs(1);
    let q = JobQueue::connect(&cfg).await.unwrap();
    q.publish("poison", Bytes::from_static(b"p")).await.unwrap();

    // Two naks and one timeout: three deliveries, the last one flagged.
    for n in 1..=3u64 {
        let d = next_some(&q, Duration::from_secs(3)).await;
        assert_eq!(d.delivered, n);
        assert_eq!(d.last_attempt, n == 3, "delivery {n}");
        if n < 3 {
            d.nak(None).await.unwrap();
        }
    }
    assert_none(&q, cfg.ack_wait * 3, "delivered past max_deliver").await;
    let depth = depth(&q).await;
    eprintln!("depth after max_deliver: {depth:?}");
    assert_eq!(depth.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_share_one_stream_and_consumer() {
    let server = NatsServer::start();
    let cfg = config(&server);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move { JobQueue::connect(&cfg).await })
        })
        .collect();
    let mut queues = Vec::new();
    for h in handles {
        queues.push(h.await.unwrap().expect("concurrent connect"));
    }
    queues[0]
        .publish("rec-1", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let d = next_some(&queues[1], Duration::from_secs(2)).await;
    for q in &queues[2..] {
        assert_none(q, Duration::from_millis(300), "one job, two workers").await;
    }
    d.ack().await.unwrap();

    // A restarted worker with a new ack_wait updates the consumer in place.
    let mut changed = cfg.clone();
    changed.ack_wait = Duration::from_secs(3);
    JobQueue::connect(&changed).await.expect("update consumer");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("CLASSGUARD_JOBS").await.unwrap();
    let info = stream.consumer_info("audit-workers").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(3));
}
