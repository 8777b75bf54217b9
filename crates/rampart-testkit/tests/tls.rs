//! TLS of the API: versions and suites (spec 9.3-2, 9.3-4, 13.2-3), no plain HTTP, client
//! certificates only from our CA (12.3.1).

use std::sync::Arc;
use std::time::Duration;

use rampart_api::agent::AgentStatus;
use rampart_api::tls::{certs_from_pem, key_from_pem, provider};
use rampart_api::{Client, HostFacts};
use rampart_testkit::{ClusterOptions, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS 1.1 ClientHello. It offers CBC suites and also the AEAD suites the server has, so
/// that only the version can be the reason for a refusal.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend([0x42; 32]); // random
    hello.push(0); // session id
    let suites: [u8; 12] = [0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x2f, 0x00, 0x35, 0xc0, 0x13, 0xc0, 0x14];
    hello.extend((suites.len() as u16).to_be_bytes());
    hello.extend(suites);
    hello.extend([1, 0]); // compression: null
    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_2_tls_1_2_and_1_3_negotiate_only_aead_suites() {
    let c = TestCluster::start(ClusterOptions::default()).await;
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
        assert!(!suite.contains("CBC"), "{suite}");
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
