//! TLS of the API: versions and suites (spec 9.3-2, 9.3-4, 13.2-3), no plain HTTP, client
//! certificates only from our CA (12.3.1).

use std::sync::Arc;
use std::time::Duration;

use rampart_api::agent::AgentStatus;
use rampart_api::tls::{certs_from_pem, key_from_pem, provider};
use rampart_api::{Client, HostFacts, NodeState};
use rampart_common::time::{Clock, ManualClock};
use rampart_posture::conformance::tls_wire::{AEAD_SUITES, Answer, WEAK_SUITES, client_hello, parse_answer};
use rampart_testkit::{ClusterOptions, TestCluster};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS 1.1 ClientHello. It offers CBC suites and also the AEAD suites the server has, so
/// that only the version can be the reason for a refusal.
fn tls11_client_hello() -> Vec<u8> {
    client_hello([0x03, 0x02], &[0xc02b, 0xc02f, 0x002f, 0x0035, 0xc013, 0xc014], false)
}

/// The suite a TLS 1.2 ServerHello picked, or the alert description when the server refused.
fn server_answer(reply: &[u8]) -> Result<u16, u8> {
    match parse_answer(reply) {
        Answer::Accepted(suite) => Ok(suite),
        Answer::Alert(alert) => Err(alert),
        other => panic!("neither a ServerHello nor a fatal alert: {other:?} ({reply:?})"),
    }
}

async fn read_some(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_4_tls_1_1_handshake_is_refused() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let mut s = TcpStream::connect(c.controller.addrs[0]).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let reply = read_some(&mut s).await;
    // A fatal alert (record type 21), never a ServerHello (handshake record 22). rustls
    // answers handshake_failure (40) or protocol_version (70).
    assert!(reply.len() >= 7, "{reply:?}");
    assert_eq!(reply[0], 0x15, "alert record, got {reply:?}");
    assert_eq!(reply[5], 2, "fatal");
    assert!([40, 70].contains(&reply[6]), "alert {}", reply[6]);
    c.shutdown().await;
}

async fn tls12_answer(c: &TestCluster, suites: &[u16]) -> Result<u16, u8> {
    let mut s = TcpStream::connect(c.controller.addrs[0]).await.unwrap();
    s.write_all(&client_hello([0x03, 0x03], suites, true)).await.unwrap();
    server_answer(&read_some(&mut s).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_2_tls_1_2_and_1_3_negotiate_only_aead_suites() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    // A TLS 1.2 client offering only RC4, 3DES and CBC suites is refused in the handshake
    // (handshake_failure: no suite in common).
    assert_eq!(tls12_answer(&c, &WEAK_SUITES).await, Err(40), "weak suites only");
    for weak in WEAK_SUITES {
        assert_eq!(tls12_answer(&c, &[weak]).await, Err(40), "suite {weak:#06x} alone");
    }
    // Control: the same hello with the AEAD suites added gets a ServerHello, so the refusal
    // above was about the suites; and of everything offered, an AEAD suite is picked.
    let mut both = WEAK_SUITES.to_vec();
    both.extend(AEAD_SUITES);
    let picked = tls12_answer(&c, &both)
        .await
        .expect("a ServerHello for the AEAD suites");
    assert!(AEAD_SUITES.contains(&picked), "picked {picked:#06x}");

    // TLS 1.3 (all of whose suites are AEAD) and TLS 1.2 from a real client: AEAD each time.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certs_from_pem(c.controller.ca_pem().as_bytes()).unwrap().remove(0))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(c.controller.addrs[0]).await.unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("handshake");
        let (_, conn) = tls.get_ref();
        let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
        assert!(suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"), "{suite}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_4_plain_http_gets_no_http_answer() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let mut s = TcpStream::connect(c.controller.addrs[0]).await.unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let reply = read_some(&mut s).await;
    assert!(!reply.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&reply));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_1_agent_certificate_from_another_ca_is_refused() {
    let c = TestCluster::start(ClusterOptions {
        agents: 1,
        ..Default::default()
    })
    .await;
    c.wait_for_ready_nodes(1).await;
    let node_id = c.agents[0].node_id;
    // An attacker's CA signs a certificate naming the real node.
    let evil = rampart_kms::CertificateAuthority::generate(30, time::OffsetDateTime::now_utc()).unwrap();
    let (key_pem, csr) = rampart_kms::ca::node_key_and_csr().unwrap();
    let (cert_pem, _, _) = evil
        .sign_node_csr(&csr, node_id, 30, time::OffsetDateTime::now_utc())
        .unwrap();
    let identity = (
        certs_from_pem(cert_pem.as_bytes()).unwrap(),
        key_from_pem(key_pem.as_bytes()).unwrap(),
    );
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), Some(identity)).unwrap();
    let client = Client::new(&c.controller.url(), tls).unwrap();
    let before = c.admin.nodes().await.unwrap().items[0].last_heartbeat;
    let status = AgentStatus {
        applied_generation: 99,
        agent_version: "evil".into(),
        host: HostFacts::default(),
        errors: vec![],
        compute: None,
        network: None,
        storage: None,
    };
    let err = client.agent_status(&status).await.unwrap_err();
    assert!(
        matches!(err, rampart_api::ClientError::Transport { .. }),
        "refused in the handshake: {err:?}"
    );
    let node = c.admin.nodes().await.unwrap().items.remove(0);
    assert_ne!(node.agent_version.as_deref(), Some("evil"));
    assert_ne!(node.applied_generation, 99);
    assert!(node.last_heartbeat >= before);
    c.shutdown().await;
}

/// The serial of the certificate a new TLS connection to the API gets (hex of its DER content
/// bytes, as the inventory shows it).
async fn served_serial(c: &TestCluster) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certs_from_pem(c.controller.ca_pem().as_bytes()).unwrap().remove(0))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(c.controller.addrs[0]).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    let (_, conn) = tls.get_ref();
    let der = conn.peer_certificates().unwrap()[0].to_vec();
    rampart_kms::ca::cert_info(&der).unwrap().serial
}

/// A cluster whose clock starts 61 days in the past: every certificate made at start is then
/// 61 days old once the clock is set to the present, past two thirds of its 90 days, while
/// certificates made afterwards are valid by the real clock that TLS peers check.
async fn cluster_61_days_ago() -> (TestCluster, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc() - time::Duration::days(61)));
    let c = TestCluster::start(ClusterOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    (c, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_2_api_certificate_renewed_without_restart() {
    let (c, clock) = cluster_61_days_ago().await;
    let before = served_serial(&c).await;
    let not_after = c.controller.state.server_cert.not_after();
    // A connection opened before the renewal, used after it.
    let mut open = {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certs_from_pem(c.controller.ca_pem().as_bytes()).unwrap().remove(0))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(c.controller.addrs[0]).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };
    // 58 days in: not due; several checks (every 5 s) pass without a change.
    clock.advance(time::Duration::days(58));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        served_serial(&c).await,
        before,
        "renewed before two thirds of the lifetime"
    );
    clock.set(OffsetDateTime::now_utc());
    let after = TestCluster::wait_for("a renewed API certificate", Duration::from_secs(20), || async {
        let s = served_serial(&c).await;
        (s != before).then_some(s)
    })
    .await;
    assert!(c.controller.state.server_cert.not_after() > not_after);
    // On disk too: a restart keeps the new certificate.
    let on_disk = std::fs::read_to_string(c.data_dir.path().join("tls/server.pem")).unwrap();
    assert_eq!(rampart_kms::ca::cert_info_pem(&on_disk).unwrap().serial, after);
    // The listener stayed up: the connection made before still answers, and new ones verify
    // the new certificate against the CA.
    open.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    c.anon
        .health()
        .await
        .expect("a new connection with the renewed certificate");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_2_agent_certificate_renewed_at_two_thirds_lifetime() {
    let (mut c, clock) = cluster_61_days_ago().await;
    c.add_agent("renewer").await;
    c.wait_for_ready_nodes(1).await;
    let node_id = c.agents[0].node_id;
    let dir = c.agents[0].dir.path().to_path_buf();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (old_cert, old_key) = (read("node.pem"), read("node-key.pem"));
    let old = rampart_kms::ca::cert_info_pem(&old_cert).unwrap();

    clock.advance(time::Duration::days(58));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(read("node.pem"), old_cert, "renewed before two thirds of the lifetime");

    clock.set(OffsetDateTime::now_utc());
    // The jump ended the admin's session.
    c.admin = c.admin_mfa.login(&c.anon).await.unwrap();
    let new_cert = TestCluster::wait_for("a renewed node certificate", Duration::from_secs(30), || async {
        let pem = std::fs::read_to_string(dir.join("node.pem")).ok()?;
        (pem != old_cert).then_some(pem)
    })
    .await;
    let new = rampart_kms::ca::cert_info_pem(&new_cert).unwrap();
    assert_ne!(new.serial, old.serial);
    assert_eq!(new.node_id, Some(node_id));
    assert!(new.not_after > old.not_after);
    let new_key = read("node-key.pem");
    assert_ne!(new_key, old_key, "a new key pair, made on the node");
    assert_eq!(
        rampart_common::fsutil::mode_of(&dir.join("node-key.pem")).unwrap(),
        0o600
    );
    assert!(!dir.join("node-renewal.json").exists());

    // The agent goes on with the new certificate: the node record takes its expiry when first
    // used, and heartbeats keep coming after the clock moves past the heartbeat timeout.
    let close = |a: OffsetDateTime, b: OffsetDateTime| (a - b).abs() < time::Duration::seconds(2);
    TestCluster::wait_for(
        "the node record on the new certificate",
        Duration::from_secs(20),
        || async {
            let nodes = c.admin.nodes().await.ok()?;
            let n = nodes.items.iter().find(|n| n.id == node_id)?;
            close(n.certificate_expires_at, new.not_after).then_some(())
        },
    )
    .await;
    clock.advance(time::Duration::seconds(10));
    // Heartbeat times are stored in milliseconds; every earlier one is 10 s before this.
    let after_jump = clock.now() - time::Duration::seconds(1);
    TestCluster::wait_for(
        "a heartbeat with the new certificate",
        Duration::from_secs(20),
        || async {
            let nodes = c.admin.nodes().await.ok()?;
            let n = nodes.items.iter().find(|n| n.id == node_id)?;
            (n.state == NodeState::Ready && n.last_heartbeat.is_some_and(|t| t >= after_jump)).then_some(())
        },
    )
    .await;

    // The old certificate is still unexpired and chains to the CA, but it was replaced: it is
    // refused from the first use of the new one.
    let client_with = |cert: &str, key: &str| {
        let identity = (
            certs_from_pem(cert.as_bytes()).unwrap(),
            key_from_pem(key.as_bytes()).unwrap(),
        );
        let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), Some(identity)).unwrap();
        Client::new(&c.controller.url(), tls).unwrap()
    };
    let status = AgentStatus {
        applied_generation: 0,
        agent_version: "old".into(),
        host: HostFacts::default(),
        errors: vec![],
        compute: None,
        network: None,
        storage: None,
    };
    let err = client_with(&old_cert, &old_key)
        .agent_status(&status)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unknown_node_certificate"), "{err:?}");
    let (_, csr) = rampart_kms::ca::node_key_and_csr().unwrap();
    let renew = rampart_api::AgentRenewRequest { csr: csr.clone() };
    let err = client_with(&old_cert, &old_key).agent_renew(&renew).await.unwrap_err();
    assert_eq!(err.code(), Some("unknown_node_certificate"), "{err:?}");

    // The renewal is in the audit trail, naming the node and the new serial.
    let page: serde_json::Value = c
        .admin
        .get("/v1/audit/events?operation=node.certificate.renew&result=success")
        .await
        .unwrap();
    let record = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["details"]["serial"] == new.serial.as_str())
        .unwrap_or_else(|| panic!("no audit record of the renewal: {page:#}"));
    assert_eq!(record["actor"]["id"], node_id.to_string().as_str(), "{record:#}");
    assert_eq!(record["actor"]["auth_method"], "certificate", "{record:#}");
    assert_eq!(record["target"]["id"], node_id.to_string().as_str(), "{record:#}");

    // An expired certificate of the node, from the same CA, is refused in the handshake.
    let (expired_key, expired_csr) = rampart_kms::ca::node_key_and_csr().unwrap();
    let (expired_cert, _, _) = c
        .controller
        .state
        .ca
        .sign_node_csr(
            &expired_csr,
            node_id,
            30,
            OffsetDateTime::now_utc() - time::Duration::days(40),
        )
        .unwrap();
    let err = client_with(&expired_cert, &expired_key)
        .agent_renew(&renew)
        .await
        .unwrap_err();
    assert!(matches!(err, rampart_api::ClientError::Transport { .. }), "{err:?}");

    // A revoked certificate cannot renew itself.
    let certs: rampart_api::List<rampart_api::Certificate> = c.admin.certificates(None).await.unwrap();
    let current = certs
        .items
        .iter()
        .find(|x| x.serial == new.serial)
        .expect("the renewed certificate is in the inventory");
    c.admin
        .revoke_certificate(current.id, Some("key_compromise"))
        .await
        .unwrap();
    let err = client_with(&new_cert, &new_key).agent_renew(&renew).await.unwrap_err();
    assert_eq!(err.code(), Some("certificate_revoked"), "{err:?}");
    c.shutdown().await;
}
