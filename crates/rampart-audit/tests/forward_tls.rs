//! RFC 5425 forwarding against an in-process rustls receiver (spec 13.4-5): delivery in order,
//! certificate checks both ways, the degraded state while the receiver is down, no loss and no
//! duplicate across receiver outages, and the documented duplicate window when a receiver dies
//! in the middle of a batch.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rampart_audit::formats::SyslogOptions;
use rampart_audit::forward::{Forwarder, ForwarderConfig, client_tls_config, deliver, pump};
use rampart_audit::queue::{PersistentQueue, QueueOptions};
use rampart_audit::store::MemoryStore;
use rampart_common::Sensitive;

fn config(addr: &str, pki: &Pki, client_cert: bool) -> ForwarderConfig {
    let mut c = ForwarderConfig::new(addr, "127.0.0.1", pki.ca_pem.clone().into_bytes());
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.io_timeout = Duration::from_secs(3);
    c.connect_timeout = Duration::from_secs(1);
    c.idle_probe = Some(Duration::from_millis(100));
    c.batch_max_messages = 7;
    if client_cert {
        c.client_cert_pem = Some(pki.client_cert_pem.clone().into_bytes());
        c.client_key_pem = Some(Sensitive::new(pki.client_key_pem.clone()));
    }
    c
}

fn enqueue_numbers(q: &PersistentQueue, from: u64, to: u64) {
    enqueue_padded(q, from, to, 0);
}

fn enqueue_padded(q: &PersistentQueue, from: u64, to: u64, pad: usize) {
    for i in from..=to {
        let msg = format!(
            "<110>1 2026-06-01T00:00:00.000Z host rampart - test [audit@32473 seq=\"{i}\"] m{i}{}",
            "x".repeat(pad)
        );
        q.enqueue(&[([i, 0], msg.as_bytes())]).unwrap();
    }
}

fn seqs(messages: &[String]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for msg in messages {
        if let Some(rest) = msg.split("seq=\"").nth(1) {
            let n: u64 = rest.split('"').next().unwrap().parse().unwrap();
            *m.entry(n).or_insert(0) += 1;
        }
    }
    m
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn spec_13_4_5_delivers_every_entry_once_in_order_with_client_certificate() {
    let pki = Pki::new();
    let rx = Receiver::start(&pki, true, vec![]);
    let dir = tempfile::tempdir().unwrap();
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    enqueue_numbers(&q, 1, 40);
    let (_, clock) = manual_clock();
    let fwd = Forwarder::start(q.clone(), config(&rx.addr.to_string(), &pki, true), clock).unwrap();
    // The cursor moves first, the counters right after it.
    wait_until("delivery", Duration::from_secs(20), || fwd.status().delivered == 40);
    let st = fwd.status();
    assert!(!st.degraded, "{st:?}");
    assert_eq!(st.pending, 0);
    assert!(st.last_delivery.is_some());
    fwd.stop();
    let msgs = rx.stop();
    let order: Vec<u64> = seqs(&msgs).keys().copied().collect();
    assert_eq!(order, (1..=40).collect::<Vec<_>>());
    assert_eq!(msgs.len(), 40, "nothing twice");
    assert!(
        msgs.windows(2)
            .all(|w| seqs(&w[..1]).keys().next() < seqs(&w[1..]).keys().next()),
        "in order"
    );
}

#[test]
fn spec_13_4_5_receiver_requiring_a_client_certificate_refuses_a_forwarder_without_one() {
    let pki = Pki::new();
    let rx = Receiver::start(&pki, true, vec![]);
    let cfg = config(&rx.addr.to_string(), &pki, false);
    let tls = client_tls_config(&cfg).unwrap();
    assert!(deliver(&tls, &cfg, &[b"x"]).is_err());
    assert!(rx.stop().is_empty());
}

#[test]
fn spec_13_4_5_server_certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    let rx = Receiver::start(&pki, false, vec![]);
    let mut cfg = config(&rx.addr.to_string(), &pki, false);
    cfg.ca_pem = Pki::other_ca_pem().into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    enqueue_numbers(&q, 1, 3);
    let (_, clock) = manual_clock();
    let fwd = Forwarder::start(q.clone(), cfg, clock).unwrap();
    wait_until("degraded", Duration::from_secs(10), || fwd.status().degraded);
    let st = fwd.status();
    assert_eq!(st.pending, 3, "nothing leaves the queue");
    let err = st.last_error.unwrap();
    assert!(
        err.contains("TLS") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    fwd.stop();
    assert!(rx.stop().is_empty());

    // The name must match too: the receiver's certificate is for localhost/127.0.0.1 only.
    let rx = Receiver::start(&pki, false, vec![]);
    let mut cfg = config(&rx.addr.to_string(), &pki, false);
    cfg.server_name = "logs.example.org".into();
    let tls = client_tls_config(&cfg).unwrap();
    assert!(deliver(&tls, &cfg, &[b"x"]).is_err());
    assert!(rx.stop().is_empty());
}

#[test]
fn spec_13_4_5_receiver_down_raises_degraded_then_everything_arrives_once() {
    let pki = Pki::new();
    let addr = free_port();
    let dir = tempfile::tempdir().unwrap();
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    let (manual, clock) = manual_clock();
    let fwd = Forwarder::start(q.clone(), config(&addr, &pki, false), clock).unwrap();
    // First a receiver that is up for entries 1..=10.
    let rx = Receiver::start_on(&addr, &pki, false, vec![]);
    enqueue_numbers(&q, 1, 10);
    wait_until("first delivery", Duration::from_secs(20), || q.pending() == 0);
    let mut all = rx.stop();
    assert!(!fwd.status().degraded);

    // Receiver down: entries queue up, the state turns degraded with the time it happened.
    manual.advance(time::Duration::seconds(5));
    enqueue_numbers(&q, 11, 30);
    wait_until("degraded", Duration::from_secs(10), || fwd.status().degraded);
    let st = fwd.status();
    assert_eq!(st.degraded_since, Some(T0 + time::Duration::seconds(5)));
    assert_eq!(st.pending, 20);
    assert!(st.last_error.unwrap().contains("connect"));

    // Back up on the same port: the backlog drains, the alarm clears.
    let rx = Receiver::start_on(&addr, &pki, false, vec![]);
    wait_until("backlog delivery", Duration::from_secs(20), || q.pending() == 0);
    wait_until("recovery", Duration::from_secs(5), || !fwd.status().degraded);
    assert_eq!(fwd.status().degraded_since, None);
    fwd.stop();
    all.extend(rx.stop());
    let counts = seqs(&all);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "no loss"
    );
    assert!(counts.values().all(|c| *c == 1), "no duplicate: {counts:?}");
}

#[test]
fn spec_13_4_5_idle_probe_notices_a_dead_receiver_without_traffic() {
    let pki = Pki::new();
    let rx = Receiver::start(&pki, false, vec![]);
    let addr = rx.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    let (_, clock) = manual_clock();
    let fwd = Forwarder::start(q, config(&addr, &pki, false), clock).unwrap();
    wait_until("a probe", Duration::from_secs(5), || {
        rx.connections.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    assert!(!fwd.status().degraded);
    assert!(rx.stop().is_empty(), "a probe carries no message");
    wait_until("degraded by probe", Duration::from_secs(10), || fwd.status().degraded);
    fwd.stop();
}

#[test]
fn spec_13_4_5_receiver_dying_mid_batch_loses_nothing_and_repeats_only_that_batch() {
    let pki = Pki::new();
    // A 7-message batch of ~3 KiB messages spans two TLS records; the first connection reads
    // the first record (about five messages) and dies with the second one unread in its socket.
    let rx = Receiver::start(&pki, false, vec![Behaviour::DieAfter(100)]);
    let dir = tempfile::tempdir().unwrap();
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    enqueue_padded(&q, 1, 20, 3000);
    let (_, clock) = manual_clock();
    let mut cfg = config(&rx.addr.to_string(), &pki, false);
    // Larger than the default (one TLS record) on purpose, to have a batch to cut in half.
    cfg.batch_max_bytes = 64 * 1024;
    let fwd = Forwarder::start(q.clone(), cfg, clock).unwrap();
    wait_until("delivery", Duration::from_secs(20), || q.pending() == 0);
    assert!(fwd.status().failed_attempts >= 1);
    fwd.stop();
    let counts = seqs(&rx.stop());
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>(),
        "no loss"
    );
    let repeated: Vec<u64> = counts.iter().filter(|(_, c)| **c > 1).map(|(s, _)| *s).collect();
    assert!(!repeated.is_empty(), "the receiver did process part of the first batch");
    assert!(
        repeated.iter().all(|s| *s <= 7),
        "only the interrupted batch repeats: {repeated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_5_pump_and_forwarder_resume_after_restart_without_repeats() {
    let pki = Pki::new();
    let rx = Receiver::start(&pki, false, vec![]);
    let addr = rx.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let (_, clock) = manual_clock();
    let log = audit_log(store.clone(), signer(), clock.clone(), 10).await;
    let syslog = SyslogOptions::default();

    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    let fwd = Forwarder::start(q.clone(), config(&addr, &pki, false), clock.clone()).unwrap();
    for i in 1..=25 {
        log.append(event(&clock, i)).await.unwrap();
    }
    assert_eq!(
        pump(&store, &q, &syslog, 1000).await.unwrap(),
        27,
        "25 records and 2 checkpoints"
    );
    assert_eq!(
        pump(&store, &q, &syslog, 1000).await.unwrap(),
        0,
        "nothing twice into the queue"
    );
    let q2 = q.clone();
    tokio::task::spawn_blocking(move || wait_until("delivery", Duration::from_secs(20), || q2.pending() == 0))
        .await
        .unwrap();
    fwd.stop();
    drop(q);

    // Rampart restarts: a new queue handle on the same directory, a new forwarder.
    for i in 26..=31 {
        log.append(event(&clock, i)).await.unwrap();
    }
    let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
    assert_eq!(q.last_meta(), [25, 2]);
    assert_eq!(
        pump(&store, &q, &syslog, 1000).await.unwrap(),
        7,
        "records 26..=31 and checkpoint 3"
    );
    let fwd = Forwarder::start(q.clone(), config(&addr, &pki, false), clock.clone()).unwrap();
    let q2 = q.clone();
    tokio::task::spawn_blocking(move || wait_until("delivery", Duration::from_secs(20), || q2.pending() == 0))
        .await
        .unwrap();
    fwd.stop();
    let msgs = rx.stop();
    let records: Vec<&String> = msgs.iter().filter(|m| m.contains("[audit@32473 ")).collect();
    let cps: Vec<&String> = msgs.iter().filter(|m| m.contains("[checkpoint@32473 ")).collect();
    assert_eq!(records.len(), 31);
    assert_eq!(cps.len(), 3);
    let counts = seqs(&records.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), (1..=31).collect::<Vec<_>>());
    // Each checkpoint arrives after the records it attests.
    let pos_cp1 = msgs
        .iter()
        .position(|m| m.contains("[checkpoint@32473 seq=\"1\""))
        .unwrap();
    let pos_rec10 = msgs
        .iter()
        .position(|m| m.contains(" seq=\"10\" ") && m.contains("[audit@"))
        .unwrap();
    assert!(pos_rec10 < pos_cp1);
}
