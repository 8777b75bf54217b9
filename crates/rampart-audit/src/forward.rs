//! Forwarding to an external log manager (spec 13.4-5): RFC 5425 syslog over TLS, fed from the
//! [`PersistentQueue`], with a "forwarding degraded" state while the receiver is unreachable.
//!
//! ## Delivery protocol and the guarantee it gives
//!
//! RFC 5425 has no acknowledgement: a TLS write that returned only means the bytes reached our
//! kernel. So each batch travels on its own connection and is confirmed by the close handshake:
//!
//! 1. connect, TLS handshake (server certificate verified against the configured CA and name;
//!    client certificate when configured);
//! 2. write the batch as octet-counted frames (`LEN SP MSG`, RFC 5425 §4.3);
//! 3. send TLS `close_notify`, then half-close TCP (FIN);
//! 4. read until the receiver closes. A receiver closes its end when it has read our FIN, i.e.
//!    after reading every byte before it. If it closes while bytes are still unread in its
//!    socket (it crashed or was stopped mid-batch), its kernel answers with RST, not FIN, and
//!    we see a reset.
//!
//! Only an orderly close (EOF, with or without the receiver's own `close_notify`, and no pending
//! socket error) advances the durable cursor past the batch. Everything else (refused, reset,
//! timeout, certificate error) leaves the cursor where it was, marks forwarding degraded and
//! retries the same batch with capped exponential backoff.
//!
//! What that achieves:
//! * **No loss**: an entry leaves the queue only after the receiver demonstrably read it. The
//!   queue and cursor are fsynced, so a crash of Rampart loses nothing either.
//! * **No duplicate** when the receiver is down, refuses, restarts between batches, or is
//!   stopped while idle. Between batches no connection is open, so there is nothing to lose.
//! * **One window for duplicates**: a receiver that stops *after reading part of a batch and
//!   before reading its end* makes us resend the whole batch (we cannot know how much it
//!   processed). Each message carries the record `id` and `seq` in its structured data, so the
//!   log manager can drop such repeats. On loopback and LANs the window is the time the
//!   receiver takes to read one batch (microseconds to a few milliseconds).
//! * Remaining caveat: over a long-latency path, a receiver that closes on its own (idle
//!   timeout) while our batch is still in flight sends FIN before our data arrives. We check the
//!   socket for a late reset after EOF, which catches it when the RST has arrived by then.
//! * A receiver that never closes when the client closes (not syslog behaviour) would make every
//!   batch time out and be resent: the forwarder then stays degraded and says why.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rampart_common::Sensitive;
use rampart_common::time::SharedClock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use time::OffsetDateTime;

use crate::formats::{SyslogOptions, checkpoint_to_rfc5424, to_rfc5424};
use crate::queue::{PersistentQueue, QueueError};
use crate::store::{AuditStore, StoreError};

/// Default batch size: what fits one TLS record (16 KiB of plaintext) with its framing, so the
/// receiver gets a batch all at once or not at all.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 - 512;

#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// `host:port` of the receiver (RFC 5425's port is 6514).
    pub address: String,
    /// DNS name or IP address the server certificate must carry.
    pub server_name: String,
    /// PEM of the CA(s) that may sign the receiver's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM chain and key of our client certificate, for receivers that require one.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Sensitive>,
    pub connect_timeout: Duration,
    /// Longest wait for one read or write, and for the receiver's close.
    pub io_timeout: Duration,
    pub batch_max_messages: usize,
    /// Payload bytes per batch (a single larger message still goes alone).
    pub batch_max_bytes: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Probe an idle receiver this often (connect, handshake, close) so a dead receiver raises
    /// the degraded state even when there is nothing to send.
    pub idle_probe: Option<Duration>,
}

impl ForwarderConfig {
    pub fn new(address: impl Into<String>, server_name: impl Into<String>, ca_pem: Vec<u8>) -> Self {
        ForwarderConfig {
            address: address.into(),
            server_name: server_name.into(),
            ca_pem,
            client_cert_pem: None,
            client_key_pem: None,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            batch_max_messages: 500,
            batch_max_bytes: MAX_BATCH_BYTES,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            idle_probe: Some(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the forwarding CA bundle holds no usable certificate")]
    NoCa,
    #[error("the forwarding client certificate or key cannot be read")]
    ClientCert,
    #[error("invalid TLS settings for forwarding")]
    Tls(#[source] rustls::Error),
    #[error("`{0}` is not a valid server name")]
    ServerName(String),
}

/// Why one delivery attempt did not count (kept short: it is shown in the status).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot connect to the log receiver")]
    Connect(#[source] io::Error),
    #[error("TLS with the log receiver failed")]
    Handshake(#[source] io::Error),
    #[error("sending to the log receiver failed")]
    Send(#[source] io::Error),
    #[error("the log receiver did not confirm the batch by an orderly close")]
    NotConfirmed(#[source] io::Error),
}

/// Builds the rustls client configuration (ring provider, TLS 1.2 and 1.3).
pub fn client_tls_config(cfg: &ForwarderConfig) -> Result<Arc<ClientConfig>, ForwardError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&cfg.ca_pem) {
        let cert = cert.map_err(|_| ForwardError::NoCa)?;
        roots.add(cert).map_err(ForwardError::Tls)?;
    }
    if roots.is_empty() {
        return Err(ForwardError::NoCa);
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(ForwardError::Tls)?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert_pem, &cfg.client_key_pem) {
        (Some(chain), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<_, _>>()
                .map_err(|_| ForwardError::ClientCert)?;
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|_| ForwardError::ClientCert)?;
            builder.with_client_auth_cert(chain, key).map_err(ForwardError::Tls)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ForwardError::ClientCert),
    };
    ServerName::try_from(cfg.server_name.clone()).map_err(|_| ForwardError::ServerName(cfg.server_name.clone()))?;
    Ok(Arc::new(config))
}

/// RFC 5425 framing: `MSG-LEN SP SYSLOG-MSG`.
pub fn octet_frame(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

fn connect(cfg: &ForwarderConfig) -> Result<TcpStream, DeliveryError> {
    let addrs = cfg.address.to_socket_addrs().map_err(DeliveryError::Connect)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, cfg.connect_timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(cfg.io_timeout))
                    .map_err(DeliveryError::Connect)?;
                s.set_write_timeout(Some(cfg.io_timeout))
                    .map_err(DeliveryError::Connect)?;
                s.set_nodelay(true).map_err(DeliveryError::Connect)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(DeliveryError::Connect(last))
}

/// Sends `messages` on one connection and returns only once the receiver confirmed them by an
/// orderly close (see the module documentation). An empty list is a reachability probe.
pub fn deliver(tls: &Arc<ClientConfig>, cfg: &ForwarderConfig, messages: &[&[u8]]) -> Result<(), DeliveryError> {
    let sock = connect(cfg)?;
    let name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| DeliveryError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let conn = ClientConnection::new(tls.clone(), name).map_err(|e| DeliveryError::Handshake(io::Error::other(e)))?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(DeliveryError::Handshake)?;
    }
    let mut buf = Vec::new();
    for m in messages {
        octet_frame(m, &mut buf);
    }
    // Batch and close_notify leave in one write, so they reach the receiver's socket together
    // and it reads the batch (one TLS record when within `batch_max_bytes`) and the close in
    // one go: that keeps the duplicate window (see above) as narrow as the protocol allows.
    s.conn.set_buffer_limit(None);
    s.conn.writer().write_all(&buf).map_err(DeliveryError::Send)?;
    s.conn.send_close_notify();
    let mut wire = Vec::with_capacity(buf.len() + 256);
    while s.conn.wants_write() {
        s.conn.write_tls(&mut wire).map_err(DeliveryError::Send)?;
    }
    s.sock.write_all(&wire).map_err(DeliveryError::Send)?;
    s.sock.shutdown(Shutdown::Write).map_err(DeliveryError::Send)?;
    let mut scratch = [0u8; 4096];
    loop {
        match s.read(&mut scratch) {
            Ok(0) => break,
            // Syslog receivers send nothing; anything else is ignored.
            Ok(_) => {}
            // TCP FIN without close_notify: still an orderly close of the socket.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(DeliveryError::NotConfirmed(e)),
        }
    }
    match s.sock.take_error() {
        Ok(None) => Ok(()),
        Ok(Some(e)) | Err(e) => Err(DeliveryError::NotConfirmed(e)),
    }
}

/// What `GET /v1/audit/forwarding` reports and the posture alarm watches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardingStatus {
    /// The receiver could not be reached or did not confirm since `degraded_since`.
    pub degraded: bool,
    pub degraded_since: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub last_delivery: Option<OffsetDateTime>,
    /// Entries waiting in the queue.
    pub pending: u64,
    /// Entries confirmed since start.
    pub delivered: u64,
    pub failed_attempts: u64,
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    rampart_common::error::ErrorChain(e).to_string()
}

struct Stopper {
    stopped: Mutex<bool>,
    cv: Condvar,
    flag: AtomicBool,
}

impl Stopper {
    /// Sleeps up to `d`; true when stopped meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let g = self.stopped.lock().expect("stop lock");
        let (g, _) = self.cv.wait_timeout_while(g, d, |s| !*s).expect("stop lock");
        *g
    }
}

/// The forwarding thread and its status.
pub struct Forwarder {
    status: Arc<Mutex<ForwardingStatus>>,
    stopper: Arc<Stopper>,
    queue: PersistentQueue,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(queue: PersistentQueue, cfg: ForwarderConfig, clock: SharedClock) -> Result<Self, ForwardError> {
        let tls = client_tls_config(&cfg)?;
        let status = Arc::new(Mutex::new(ForwardingStatus::default()));
        let stopper = Arc::new(Stopper {
            stopped: Mutex::new(false),
            cv: Condvar::new(),
            flag: AtomicBool::new(false),
        });
        let (st, sp, q) = (status.clone(), stopper.clone(), queue.clone());
        let thread = std::thread::Builder::new()
            .name("audit-forwarder".into())
            .spawn(move || run(q, cfg, tls, st, sp, clock))
            .expect("spawn the forwarder thread");
        Ok(Forwarder {
            status,
            stopper,
            queue,
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> ForwardingStatus {
        let mut s = self.status.lock().expect("status lock").clone();
        s.pending = self.queue.pending();
        s
    }

    /// Stops after the batch in flight (if any) is confirmed or failed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopper.flag.store(true, Ordering::SeqCst);
        *self.stopper.stopped.lock().expect("stop lock") = true;
        self.stopper.cv.notify_all();
        self.queue.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn record_failure(status: &Mutex<ForwardingStatus>, clock: &SharedClock, what: String) {
    let mut s = status.lock().expect("status lock");
    if !s.degraded {
        tracing::warn!(error = %what, "log forwarding degraded: the receiver is unreachable or did not confirm");
        s.degraded = true;
        s.degraded_since = Some(clock.now());
    }
    s.failed_attempts += 1;
    s.last_error = Some(what);
}

fn record_success(status: &Mutex<ForwardingStatus>, clock: &SharedClock, delivered: u64) {
    let mut s = status.lock().expect("status lock");
    let now = clock.now();
    if s.degraded {
        let since = s.degraded_since.map(|t| (now - t).whole_seconds()).unwrap_or(0);
        tracing::info!(degraded_for_s = since, "log forwarding restored");
    }
    s.degraded = false;
    s.degraded_since = None;
    s.last_error = None;
    if delivered > 0 {
        s.last_delivery = Some(now);
        s.delivered += delivered;
    }
}

fn run(
    queue: PersistentQueue,
    cfg: ForwarderConfig,
    tls: Arc<ClientConfig>,
    status: Arc<Mutex<ForwardingStatus>>,
    stop: Arc<Stopper>,
    clock: SharedClock,
) {
    let mut backoff = cfg.backoff_initial;
    let mut last_contact = Instant::now();
    while !stop.flag.load(Ordering::SeqCst) {
        let wait = cfg
            .idle_probe
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_millis(500));
        if !queue.wait_pending(wait) {
            if stop.flag.load(Ordering::SeqCst) {
                break;
            }
            let probe_due = cfg.idle_probe.is_some_and(|p| last_contact.elapsed() >= p);
            let degraded = status.lock().expect("status lock").degraded;
            if probe_due || degraded && last_contact.elapsed() >= backoff {
                last_contact = Instant::now();
                match deliver(&tls, &cfg, &[]) {
                    Ok(()) => {
                        record_success(&status, &clock, 0);
                        backoff = cfg.backoff_initial;
                    }
                    Err(e) => {
                        record_failure(&status, &clock, chain(&e));
                        backoff = (backoff * 2).min(cfg.backoff_max);
                    }
                }
            }
            continue;
        }
        let batch = match queue.peek(cfg.batch_max_messages, cfg.batch_max_bytes) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => continue,
            Err(e) => {
                record_failure(&status, &clock, chain(&e));
                if stop.sleep(backoff) {
                    break;
                }
                continue;
            }
        };
        let messages: Vec<&[u8]> = batch.iter().map(|e| e.payload.as_slice()).collect();
        last_contact = Instant::now();
        match deliver(&tls, &cfg, &messages) {
            Ok(()) => {
                let next = batch.last().expect("non-empty").index + 1;
                if let Err(e) = queue.commit(next) {
                    // Delivered but not recorded as such: this batch will be sent again.
                    tracing::error!(error = %chain(&e), "cannot persist the forwarding cursor");
                    record_failure(&status, &clock, chain(&e));
                    if stop.sleep(backoff) {
                        break;
                    }
                    continue;
                }
                record_success(&status, &clock, batch.len() as u64);
                backoff = cfg.backoff_initial;
            }
            Err(e) => {
                record_failure(&status, &clock, chain(&e));
                if stop.sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Moves records and checkpoints the queue has not seen from the store into the queue, as RFC
/// 5424 messages; a checkpoint follows the records it attests. The queue's `meta` remembers the
/// last record seq and checkpoint number enqueued, so after a crash the pump resumes exactly
/// there (an append that crashed before its fsync is re-read from the store). Returns how many
/// messages were enqueued; call it after appends and on a timer.
pub async fn pump<S: AuditStore>(
    store: &S,
    queue: &PersistentQueue,
    syslog: &SyslogOptions,
    max_records: usize,
) -> Result<usize, PumpError> {
    let [mut rec_hw, mut cp_hw] = queue.last_meta();
    let rows = store.read(rec_hw + 1, max_records).await?;
    let mut cps: Vec<_> = store
        .checkpoints()
        .await?
        .into_iter()
        .filter(|c| c.body.seq > cp_hw)
        .collect();
    cps.sort_by_key(|c| c.body.seq);
    let mut cps = cps.into_iter().peekable();
    let mut items: Vec<([u64; 2], Vec<u8>)> = Vec::new();
    let mut emit_cps = |rec_hw: u64, cp_hw: &mut u64, items: &mut Vec<([u64; 2], Vec<u8>)>| {
        while let Some(cp) = cps.next_if(|c| c.body.tree_size <= rec_hw) {
            *cp_hw = cp.body.seq;
            items.push(([rec_hw, *cp_hw], checkpoint_to_rfc5424(&cp, syslog).into_bytes()));
        }
    };
    emit_cps(rec_hw, &mut cp_hw, &mut items);
    for row in rows {
        match row {
            Ok(r) => {
                if r.seq != rec_hw + 1 && rec_hw != 0 {
                    tracing::error!(
                        from = rec_hw + 1,
                        to = r.seq - 1,
                        "audit records missing before forwarding"
                    );
                }
                rec_hw = r.seq;
                items.push(([rec_hw, cp_hw], to_rfc5424(&r, syslog).into_bytes()));
            }
            Err(e) => {
                // Forwarding must not stall on one damaged row; the verifier reports it.
                tracing::error!(seq = e.seq, field = e.field, "audit row does not decode; not forwarded");
                rec_hw = u64::try_from(e.seq).unwrap_or(rec_hw);
            }
        }
        emit_cps(rec_hw, &mut cp_hw, &mut items);
    }
    if items.is_empty() {
        return Ok(0);
    }
    let refs: Vec<([u64; 2], &[u8])> = items.iter().map(|(m, p)| (*m, p.as_slice())).collect();
    queue.enqueue(&refs)?;
    Ok(items.len())
}
