//! Helpers shared by the integration tests: a throwaway PKI, an in-process RFC 5425 receiver
//! (rustls server) and an audit log on the memory store with a movable clock.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rampart_audit::checkpoint::Ed25519Signer;
use rampart_audit::record::{Actor, AuditResult, AuthMethod, NewRecord, Target};
use rampart_audit::store::{AuditLog, CheckpointPolicy, MemoryStore};
use rampart_common::time::{ManualClock, SharedClock};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use time::macros::datetime;

pub const T0: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    (p, key, cert.pem())
}

fn leaf(issuer: &Issuer<'_, &KeyPair>, names: &[&str], eku: ExtendedKeyUsagePurpose, cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new() -> Pki {
        let (params, key, ca_pem) = ca("rampart test CA");
        let issuer = Issuer::from_params(&params, &key);
        let (server_cert_pem, server_key_pem) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            "log receiver",
        );
        let (client_cert_pem, client_key_pem) = leaf(
            &issuer,
            &["rampart-controller"],
            ExtendedKeyUsagePurpose::ClientAuth,
            "rampart-controller",
        );
        Pki {
            ca_pem,
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        }
    }

    /// A CA nobody trusts, for negative tests.
    pub fn other_ca_pem() -> String {
        ca("someone else's CA").2
    }

    pub fn write_to(&self, dir: &std::path::Path) {
        for (name, body) in [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.server_cert_pem),
            ("server-key.pem", &self.server_key_pem),
            ("client.pem", &self.client_cert_pem),
            ("client-key.pem", &self.client_key_pem),
        ] {
            std::fs::write(dir.join(name), body).unwrap();
        }
    }
}

/// How the in-process receiver treats a connection.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Read everything until the client closes, then close.
    Normal,
    /// Read about this many bytes of plaintext, then drop the connection with the rest unread
    /// (the kernel answers with RST): a receiver that dies in the middle of a batch.
    DieAfter(usize),
}

/// An RFC 5425 receiver: TLS (optionally requiring a client certificate), octet-counted frames.
pub struct Receiver {
    pub addr: SocketAddr,
    pub messages: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    behaviours: Arc<Mutex<Vec<Behaviour>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn parse_frames(data: &[u8]) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(sp) = data[at..].iter().position(|b| *b == b' ') {
        let Ok(len) = std::str::from_utf8(&data[at..at + sp]).unwrap().parse::<usize>() else {
            panic!("bad frame length")
        };
        if data.len() < at + sp + 1 + len {
            break;
        }
        out.push(String::from_utf8(data[at + sp + 1..at + sp + 1 + len].to_vec()).unwrap());
        at += sp + 1 + len;
    }
    (out, at)
}

impl Receiver {
    /// `behaviours` apply to successive connections; later connections behave normally.
    pub fn start(pki: &Pki, require_client_cert: bool, behaviours: Vec<Behaviour>) -> Receiver {
        Self::start_on("127.0.0.1:0", pki, require_client_cert, behaviours)
    }

    pub fn start_on(addr: &str, pki: &Pki, require_client_cert: bool, behaviours: Vec<Behaviour>) -> Receiver {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let behaviours = Arc::new(Mutex::new(behaviours));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, c, b, s) = (messages.clone(), connections.clone(), behaviours.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let (sock, _) = match listener.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let behaviour = {
                    let mut b = b.lock().unwrap();
                    if b.is_empty() { Behaviour::Normal } else { b.remove(0) }
                };
                let conn = match rustls::ServerConnection::new(config.clone()) {
                    Ok(c) => c,
                    Err(_) => continue,
                };
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    if let Behaviour::DieAfter(n) = behaviour
                        && data.len() >= n
                    {
                        break;
                    }
                    match tls.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => data.extend_from_slice(&buf[..k]),
                        Err(_) => break,
                    }
                }
                let (msgs, _) = parse_frames(&data);
                m.lock().unwrap().extend(msgs);
                if let Behaviour::Normal = behaviour {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
                // Dropping closes: FIN when everything was read, RST when bytes are left unread.
            }
        });
        Receiver {
            addr,
            messages,
            connections,
            behaviours,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn manual_clock() -> (Arc<ManualClock>, SharedClock) {
    let c = Arc::new(ManualClock::new(T0));
    let shared: SharedClock = c.clone();
    (c, shared)
}

pub fn signer() -> Arc<Ed25519Signer> {
    Arc::new(Ed25519Signer::generate().unwrap().0)
}

pub async fn audit_log(
    store: MemoryStore,
    signer: Arc<Ed25519Signer>,
    clock: SharedClock,
    every_records: u64,
) -> AuditLog<MemoryStore> {
    AuditLog::open(
        store,
        signer,
        clock,
        CheckpointPolicy {
            every_records,
            every: time::Duration::seconds(60),
        },
    )
    .await
    .unwrap()
}

/// A record as the API middleware would build it for call number `i`.
pub fn event(clock: &SharedClock, i: u64) -> NewRecord {
    NewRecord::new(
        clock.now(),
        Actor::user(
            "7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10",
            "alice",
            "default",
            AuthMethod::Token,
        ),
        if i.is_multiple_of(3) {
            "instance.delete"
        } else {
            "instance.create"
        },
        Target::new(
            "instance",
            Some(format!("vm-{i}")),
            Some("4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e".into()),
        ),
        if i.is_multiple_of(5) {
            AuditResult::failure(409, "conflict")
        } else {
            AuditResult::success(201)
        },
    )
    .source_ip("192.0.2.10")
    .user_agent("rampart-cli/0.1")
    .request_id(format!("req-{i}"))
    .duration_ms(i % 50)
    .detail("n", i)
}

pub fn write_all(path: &std::path::Path, data: &[u8]) {
    std::fs::File::create(path).unwrap().write_all(data).unwrap();
}
