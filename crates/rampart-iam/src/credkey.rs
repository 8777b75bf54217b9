//! The credential key: AES-256-GCM that encrypts secrets the controller must read back (TOTP
//! seeds), so a copy of the database alone does not reveal them. Like Keystone's credential
//! key repository, the key lives in a 0600 file beside the CA key, not in the database.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_common::{Sensitive, fsutil};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

#[derive(Debug, thiserror::Error)]
pub enum CredKeyError {
    #[error("cannot {action} the credential key {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the credential key file is damaged")]
    BadKey,
    #[error("an encrypted secret does not decrypt with this credential key")]
    Decrypt,
}

pub struct CredentialKey(LessSafeKey);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey([redacted])")
    }
}

const PREFIX: &str = "v1:";

impl CredentialKey {
    /// Loads `path`, creating a random key (0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<CredentialKey, CredKeyError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::secrets::random_bytes::<32>();
                fsutil::write_secret(path, STANDARD.encode(key).as_bytes()).map_err(|source| CredKeyError::Io {
                    action: "write",
                    path: path.into(),
                    source,
                })?;
                STANDARD.encode(key).into_bytes()
            }
            Err(source) => {
                return Err(CredKeyError::Io {
                    action: "read",
                    path: path.into(),
                    source,
                });
            }
        };
        let raw = STANDARD
            .decode(String::from_utf8_lossy(&bytes).trim())
            .map_err(|_| CredKeyError::BadKey)?;
        Self::from_bytes(&raw)
    }

    pub fn from_bytes(raw: &[u8]) -> Result<CredentialKey, CredKeyError> {
        let key = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| CredKeyError::BadKey)?;
        Ok(CredentialKey(LessSafeKey::new(key)))
    }

    /// Encrypts `secret`, bound to `context` (e.g. the user id and purpose) as associated data,
    /// so an encrypted value copied onto another row does not decrypt.
    pub fn seal(&self, secret: &str, context: &str) -> String {
        let nonce_bytes = crate::secrets::random_bytes::<12>();
        let mut buf = secret.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing cannot fail for small inputs");
        let mut out = nonce_bytes.to_vec();
        out.extend(buf);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Sensitive, CredKeyError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or(CredKeyError::Decrypt)?;
        if raw.len() < 12 + 16 {
            return Err(CredKeyError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(12);
        let mut buf = ct.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CredKeyError::Decrypt)?;
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CredKeyError::Decrypt)?;
        String::from_utf8(plain.to_vec())
            .map(Sensitive::new)
            .map_err(|_| CredKeyError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_3_2_2_secrets_sealed_and_bound_to_their_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential-key");
        let k = CredentialKey::load_or_create(&path).unwrap();
        assert_eq!(fsutil::mode_of(&path).unwrap(), 0o600);
        let sealed = k.seal("JBSWY3DPEHPK3PXP", "totp:user-1");
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(k.open(&sealed, "totp:user-1").unwrap().expose(), "JBSWY3DPEHPK3PXP");
        assert!(k.open(&sealed, "totp:user-2").is_err(), "moved to another row");
        let again = CredentialKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed, "totp:user-1").unwrap().expose(), "JBSWY3DPEHPK3PXP");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(k.open(&tampered, "totp:user-1").is_err());
        assert_ne!(k.seal("x", "c"), k.seal("x", "c"), "fresh nonce each time");
    }
}
