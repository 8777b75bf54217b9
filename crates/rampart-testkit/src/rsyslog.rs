//! A private RFC 5425 receiver for tests: Debian's `rsyslogd` with `rsyslog-gnutls`, its own
//! configuration, pid file and work directory, listening on 127.0.0.1 with certificates from a
//! throwaway CA and requiring a client certificate. What it receives from Rampart lands in
//! `out.log` as `MSGID [structured data]` lines, written before the next message is read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
pub const GTLS: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so";

/// Whether rsyslogd and its TLS driver are installed; with `RAMPART_TEST_REQUIRE_ROOT=1` (CI)
/// their absence fails the test instead of skipping it.
pub fn available() -> bool {
    rampart_common::testing::require(
        rampart_common::testing::Need::Root,
        Path::new(RSYSLOGD).exists() && Path::new(GTLS).exists(),
        "rsyslogd or rsyslog-gnutls missing",
    )
}

/// A CA, the receiver's certificate and Rampart's client certificate, as files in a directory.
pub struct Pki {
    pub ca_pem: String,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

fn leaf(issuer: &Issuer<'_, &KeyPair>, names: &[&str], eku: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn write(dir: &Path) -> Pki {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "rampart test log CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = p.self_signed(&key).expect("self-signed").pem();
        let issuer = Issuer::from_params(&p, &key);
        let (server, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(&issuer, &["rampart-controller"], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, body) in [
            ("ca.pem", &ca_pem),
            ("server.pem", &server),
            ("server-key.pem", &server_key),
            ("client.pem", &client),
            ("client-key.pem", &client_key),
        ] {
            std::fs::write(dir.join(name), body).expect("write PKI file");
        }
        Pki {
            ca_pem,
            client_cert_file: dir.join("client.pem"),
            client_key_file: dir.join("client-key.pem"),
        }
    }
}

pub struct Rsyslog {
    pub dir: PathBuf,
    pub port: u16,
    pub pki: Pki,
    child: Option<Child>,
}

fn listening(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| t.contains(&needle))
}

impl Rsyslog {
    /// Prepares (does not start) a receiver in `dir`.
    pub fn new(dir: &Path) -> Rsyslog {
        let pki = Pki::write(dir);
        std::fs::create_dir_all(dir.join("work")).expect("work dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let d = dir.display();
        let conf = format!(
            r#"global(
  workDirectory="{d}/work"
  maxMessageSize="64k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{d}/ca.pem"
  defaultNetstreamDriverCertFile="{d}/server.pem"
  defaultNetstreamDriverKeyFile="{d}/server-key.pem"
)
main_queue(queue.type="Direct")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="rampart" type="string" string="%msgid% %structured-data% %msg%\n")
if $app-name == "rampart" then {{
  action(type="omfile" file="{d}/out.log" template="rampart" flushOnTXEnd="on" asyncWriting="off")
}}
"#
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).expect("config");
        Rsyslog {
            dir: dir.to_path_buf(),
            port,
            pki,
            child: None,
        }
    }

    pub fn start(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))
            .expect("stderr file");
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        let start = Instant::now();
        while !listening(self.port) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("rsyslogd exited with {status}: {}", self.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "rsyslogd did not listen: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Graceful stop (SIGTERM), as a restart of the service does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
    }

    pub fn output_path(&self) -> PathBuf {
        self.dir.join("out.log")
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.output_path()).unwrap_or_default()
    }

    /// The forwarding settings that reach this receiver (`PUT /v1/audit/forwarding`).
    pub fn forwarding_settings(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": true,
            "address": format!("127.0.0.1:{}", self.port),
            "server_name": "localhost",
            "ca_pem": self.pki.ca_pem,
            "client_cert_file": self.pki.client_cert_file,
            "client_key_file": self.pki.client_key_file,
        })
    }

    /// Seqs of the audit records received, with how often each arrived.
    pub fn received_seqs(&self) -> std::collections::BTreeMap<u64, usize> {
        let mut out = std::collections::BTreeMap::new();
        for line in self.output().lines() {
            if line.contains("[audit@")
                && let Some(seq) = sd_value(line, "seq").and_then(|s| s.parse::<u64>().ok())
            {
                *out.entry(seq).or_default() += 1;
            }
        }
        out
    }
}

/// A PARAM-VALUE of a structured-data line.
pub fn sd_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(&format!(" {key}=\"")).nth(1)?.split('"').next()
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}
