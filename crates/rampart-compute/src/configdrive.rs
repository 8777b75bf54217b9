//! Tenant login data for the guest (spec 12.1-2): a cloud-init NoCloud config drive
//! (`meta-data`, `user-data`, `network-config`, ISO 9660 volume label `cidata`), so stock cloud
//! images and Rampart's demo guest read the same thing. The password is never on the drive in
//! clear: only its crypt(3) SHA-512 hash, made by [`hash_guest_password`] when the instance is
//! created (the controller stores only that hash).

use std::fmt::Write as _;
use std::path::Path;

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("building the config drive")]
    Io(#[from] std::io::Error),
    #[error("genisoimage failed: {0}")]
    Tool(String),
    #[error("password hashing failed")]
    Hash,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigDriveError {
    ConfigDriveError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub name: String,
    pub mac: String,
}

/// What the guest gets. `Debug` never shows the password hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    pub instance_id: uuid::Uuid,
    pub hostname: String,
    /// The login user created in the guest.
    pub user: String,
    pub ssh_authorized_keys: Vec<String>,
    /// crypt(3) hash (`$6$...`); `None` locks password login.
    pub password_hash: Option<String>,
    pub nics: Vec<NicConfig>,
}

impl std::fmt::Debug for GuestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConfig")
            .field("instance_id", &self.instance_id)
            .field("hostname", &self.hostname)
            .field("user", &self.user)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .field("password_hash", &self.password_hash.as_ref().map(|_| "[redacted]"))
            .field("nics", &self.nics)
            .finish()
    }
}

/// The three files, exactly as written to the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDriveFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

fn check_name(field: &'static str, s: &str) -> Result<(), ConfigDriveError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{s:?} is not [a-z][a-z0-9-]*")))
    }
}

/// An OpenSSH public key line: `type base64 [comment]`, printable, one line. YAML-quoted on
/// output, but anything else is refused rather than escaped.
fn check_ssh_key(k: &str) -> Result<(), ConfigDriveError> {
    let mut parts = k.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let known = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
    ];
    let ok = known.contains(&kind)
        && body.len() >= 16
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        && k.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(invalid("ssh_authorized_keys", "not an OpenSSH public key line"))
    }
}

fn check_hash(h: &str) -> Result<(), ConfigDriveError> {
    let ok = (h.starts_with("$6$") || h.starts_with("$y$"))
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"$./=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid("password_hash", "must be a crypt(3) $6$ or $y$ hash"))
    }
}

/// Renders the NoCloud files. Pure; every value is validated, then double-quoted.
pub fn render(c: &GuestConfig) -> Result<ConfigDriveFiles, ConfigDriveError> {
    check_name("hostname", &c.hostname)?;
    check_name("user", &c.user)?;
    if c.user == "root" {
        return Err(invalid("user", "the login user is never root"));
    }
    for k in &c.ssh_authorized_keys {
        check_ssh_key(k)?;
    }
    if let Some(h) = &c.password_hash {
        check_hash(h)?;
    }
    let meta_data = format!(
        "instance-id: \"{}\"\nlocal-hostname: \"{}\"\n",
        c.instance_id, c.hostname
    );

    let mut u = String::from("#cloud-config\n");
    let _ = writeln!(u, "hostname: \"{}\"", c.hostname);
    u.push_str("users:\n");
    let _ = writeln!(u, "  - name: \"{}\"", c.user);
    u.push_str("    shell: /bin/sh\n");
    u.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
    match &c.password_hash {
        Some(h) => {
            u.push_str("    lock_passwd: false\n");
            let _ = writeln!(u, "    hashed_passwd: \"{h}\"");
        }
        None => u.push_str("    lock_passwd: true\n"),
    }
    u.push_str("    ssh_authorized_keys:\n");
    for k in &c.ssh_authorized_keys {
        let _ = writeln!(u, "      - \"{k}\"");
    }
    // Root never logs in remotely (spec 9.1-1f applies to guests too); password SSH login only
    // when the tenant chose a password.
    u.push_str("disable_root: true\n");
    let _ = writeln!(u, "ssh_pwauth: {}", c.password_hash.is_some());

    let mut n = String::from("version: 2\nethernets:\n");
    for nic in &c.nics {
        check_name("nics.name", &nic.name)?;
        let parts: Vec<&str> = nic.mac.split(':').collect();
        if parts.len() != 6
            || !parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("nics.mac", format!("{:?}", nic.mac)));
        }
        let _ = writeln!(n, "  {}:", nic.name);
        n.push_str("    match:\n");
        let _ = writeln!(n, "      macaddress: \"{}\"", nic.mac.to_ascii_lowercase());
        let _ = writeln!(n, "    set-name: \"{}\"", nic.name);
        // The address is the port's, handed out by the platform DHCP server (static lease).
        n.push_str("    dhcp4: true\n");
    }
    if c.nics.is_empty() {
        n = "version: 2\nethernets: {}\n".into();
    }
    Ok(ConfigDriveFiles {
        meta_data,
        user_data: u,
        network_config: n,
    })
}

/// crypt(3) SHA-512 with a random 16-character salt and 5000 rounds, the format `/etc/shadow`
/// and cloud-init's `hashed_passwd` accept everywhere.
pub fn hash_guest_password(password: &Sensitive) -> Result<String, ConfigDriveError> {
    use sha_crypt::password_hash::CustomizedPasswordHasher;
    let mut salt = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).map_err(|_| ConfigDriveError::Hash)?;
    let h = sha_crypt::ShaCrypt::SHA512
        .hash_password_customized(
            password.expose().as_bytes(),
            &salt,
            None,
            None,
            sha_crypt::Params::RECOMMENDED,
        )
        .map_err(|_| ConfigDriveError::Hash)?;
    Ok(h.to_string())
}

/// Writes the drive: an ISO 9660 image with Rock Ridge and Joliet, volume id `cidata`, built by
/// `genisoimage` from a private staging directory. Blocking.
pub fn build_iso(files: &ConfigDriveFiles, out: &Path) -> Result<(), ConfigDriveError> {
    let stage = tempfile::Builder::new()
        .prefix(".cidata")
        .tempdir_in(out.parent().unwrap_or(Path::new("/tmp")))?;
    for (name, body) in [
        ("meta-data", &files.meta_data),
        ("user-data", &files.user_data),
        ("network-config", &files.network_config),
    ] {
        rampart_common::fsutil::write_atomic(&stage.path().join(name), body.as_bytes(), 0o600)?;
    }
    let outp = std::process::Command::new("genisoimage")
        .args([
            "-quiet",
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            "-input-charset",
            "utf-8",
            "-output",
        ])
        .arg(out)
        .arg(stage.path())
        .output()?;
    if !outp.status.success() {
        return Err(ConfigDriveError::Tool(
            String::from_utf8_lossy(&outp.stderr).trim().to_string(),
        ));
    }
    std::fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(hash: Option<&str>) -> GuestConfig {
        GuestConfig {
            instance_id: "3f0c7a52-4a47-4bde-9d59-5c8b3c1e9f00".parse().unwrap(),
            hostname: "web-1".into(),
            user: "rampart".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1x2y3z4w5v6u7t8s9r0q alice@laptop".into()],
            password_hash: hash.map(String::from),
            nics: vec![NicConfig {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
        }
    }

    #[track_caller]
    fn golden(name: &str, actual: &str) {
        rampart_common::testing::golden(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name),
            actual,
        );
    }

    #[test]
    fn spec_12_1_2_nocloud_files_golden() {
        let f = render(&sample(Some("$6$rounds=5000$abcdefghijklmnop$HASHHASHHASH./"))).unwrap();
        golden("cidata-meta-data", &f.meta_data);
        golden("cidata-user-data", &f.user_data);
        golden("cidata-network-config", &f.network_config);
    }

    #[test]
    fn spec_12_1_2_without_password_login_is_key_only() {
        let f = render(&sample(None)).unwrap();
        assert!(f.user_data.contains("lock_passwd: true"));
        assert!(f.user_data.contains("ssh_pwauth: false"));
        assert!(!f.user_data.contains("hashed_passwd"));
    }

    #[test]
    fn spec_12_1_2_yaml_injection_and_clear_passwords_are_refused() {
        let mut c = sample(None);
        c.ssh_authorized_keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\"\nruncmd: [reboot]".into()];
        assert!(render(&c).is_err());
        let mut c = sample(None);
        c.hostname = "web\nruncmd: x".into();
        assert!(render(&c).is_err());
        let c = sample(Some("hunter2"));
        assert!(render(&c).is_err(), "a clear-text password must never reach the drive");
        let mut c = sample(None);
        c.user = "root".into();
        assert!(render(&c).is_err());
    }

    #[test]
    fn spec_12_1_2_password_hash_is_crypt_sha512_and_verifies_with_openssl() {
        let pw = Sensitive::new("correct horse battery staple");
        let h = hash_guest_password(&pw).unwrap();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(!h.contains("horse"));
        assert_ne!(h, hash_guest_password(&pw).unwrap(), "salted");
        render(&sample(Some(&h))).unwrap();
        // Cross-check with an independent implementation when present.
        let parts: Vec<&str> = h.split('$').collect();
        let salt = parts.iter().rev().nth(1).unwrap();
        if let Ok(out) = std::process::Command::new("openssl")
            .args(["passwd", "-6", "-salt", salt, pw.expose()])
            .output()
        {
            let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let ours_hash = h.rsplit('$').next().unwrap();
            assert_eq!(theirs.rsplit('$').next().unwrap(), ours_hash);
        }
        let dbg = format!("{:?}", sample(Some(&h)));
        assert!(!dbg.contains(&h), "{dbg}");
    }

    #[test]
    fn spec_12_1_2_config_drive_iso_has_label_cidata_and_the_files() {
        use rampart_common::testing::{Need, require};
        let have = std::process::Command::new("genisoimage")
            .arg("--version")
            .output()
            .is_ok();
        if !require(Need::Root, have, "genisoimage missing") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cidata.iso");
        let files = render(&sample(None)).unwrap();
        build_iso(&files, &out).unwrap();
        let iso = std::fs::read(&out).unwrap();
        // Primary volume descriptor at sector 16: type 1, "CD001", volume id at offset 40.
        let pvd = &iso[16 * 2048..17 * 2048];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(std::str::from_utf8(&pvd[40..72]).unwrap().trim_end(), "cidata");
        let text = String::from_utf8_lossy(&iso);
        assert!(text.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1x2y3z4w5v6u7t8s9r0q"));
        assert!(text.contains("instance-id: \"3f0c7a52-4a47-4bde-9d59-5c8b3c1e9f00\""));
        assert_eq!(rampart_common::fsutil::mode_of(&out).unwrap(), 0o600);
    }
}
