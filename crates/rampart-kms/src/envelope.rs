//! Byte formats, all pure: the ciphertext envelope handed to tenants, the canonical encoding of
//! an encryption context, the associated data that binds both, and the wrapped form of key
//! material stored in the database.
//!
//! Ciphertext envelope, version 1 (base64 in the API):
//!
//! ```text
//! offset len  field
//!  0      3   magic "RPK"
//!  3      1   envelope format version = 0x01
//!  4      1   suite: 0x01 = AES-256-GCM, 96-bit nonce, 128-bit tag
//!  5     16   key id (UUID, big endian)
//! 21      4   key version (u32, big endian)
//! 25      8   context digest: SHA-256("rampart-kms:context:v1\0" || canonical context)[..8]
//! 33     12   nonce
//! 45      n   ciphertext
//! 45+n   16   tag
//! ```
//!
//! The whole 45-byte header is authenticated: the GCM associated data is
//! `"rampart-kms:data:v1\0" || project id || header || canonical context`, so neither the key, the
//! version, the project nor the context can be swapped without the tag failing. The context
//! digest exists only to tell "wrong context" apart from "tampered ciphertext" before any
//! cryptography; a context is not secret (it is written to the audit log), so its digest is not
//! either.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::KmsError;

pub const MAGIC: &[u8; 3] = b"RPK";
pub const FORMAT_V1: u8 = 0x01;
pub const SUITE_AES_256_GCM: u8 = 0x01;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const CONTEXT_DIGEST_LEN: usize = 8;
pub const HEADER_LEN: usize = 3 + 1 + 1 + 16 + 4 + CONTEXT_DIGEST_LEN + NONCE_LEN;

/// Limits on an encryption context: it is metadata, not a payload.
pub const MAX_CONTEXT_PAIRS: usize = 32;
pub const MAX_CONTEXT_KEY_LEN: usize = 128;
pub const MAX_CONTEXT_VALUE_LEN: usize = 1024;

const DATA_AAD_LABEL: &[u8] = b"rampart-kms:data:v1\0";
const CONTEXT_LABEL: &[u8] = b"rampart-kms:context:v1\0";
const MATERIAL_AAD_LABEL: &[u8] = b"rampart-kms:key-material:v1\0";

/// An encryption context: non-secret key/value pairs bound to a ciphertext as associated data,
/// to be presented again on decrypt. Ordered, so its encoding is canonical.
pub type EncryptionContext = BTreeMap<String, String>;

/// Checks the limits of a context.
pub fn validate_context(ctx: &EncryptionContext) -> Result<(), KmsError> {
    if ctx.len() > MAX_CONTEXT_PAIRS {
        return Err(KmsError::validation(
            "context",
            format!("an encryption context has at most {MAX_CONTEXT_PAIRS} entries"),
        ));
    }
    for (k, v) in ctx {
        if k.is_empty() || k.len() > MAX_CONTEXT_KEY_LEN {
            return Err(KmsError::validation(
                "context",
                format!("encryption context keys have 1 to {MAX_CONTEXT_KEY_LEN} bytes"),
            ));
        }
        if v.len() > MAX_CONTEXT_VALUE_LEN {
            return Err(KmsError::validation(
                "context",
                format!("encryption context values have at most {MAX_CONTEXT_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// Canonical bytes of a context: `u16 count || (u16 len || key || u16 len || value)*`, keys in
/// byte order. Length prefixes make it unambiguous (no `a=b,c` versus `a=b` `,c` confusion).
/// Call [`validate_context`] first: the limits keep every length within u16.
pub fn canonical_context(ctx: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + ctx.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>());
    out.extend_from_slice(&(ctx.len() as u16).to_be_bytes());
    for (k, v) in ctx {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

pub fn context_digest(canonical: &[u8]) -> [u8; CONTEXT_DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update(CONTEXT_LABEL);
    h.update(canonical);
    let full = h.finalize();
    let mut out = [0u8; CONTEXT_DIGEST_LEN];
    out.copy_from_slice(&full[..CONTEXT_DIGEST_LEN]);
    out
}

/// The authenticated header of a ciphertext envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub key_id: Uuid,
    pub key_version: u32,
    pub context_digest: [u8; CONTEXT_DIGEST_LEN],
    pub nonce: [u8; NONCE_LEN],
}

impl EnvelopeHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..3].copy_from_slice(MAGIC);
        h[3] = FORMAT_V1;
        h[4] = SUITE_AES_256_GCM;
        h[5..21].copy_from_slice(self.key_id.as_bytes());
        h[21..25].copy_from_slice(&self.key_version.to_be_bytes());
        h[25..33].copy_from_slice(&self.context_digest);
        h[33..45].copy_from_slice(&self.nonce);
        h
    }
}

/// A parsed envelope: header plus `ciphertext || tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub header: EnvelopeHeader,
    pub sealed: Vec<u8>,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.sealed.len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.sealed);
        out
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.to_bytes())
    }

    /// Parses an envelope; anything malformed is [`KmsError::InvalidCiphertext`].
    pub fn from_bytes(b: &[u8]) -> Result<Envelope, KmsError> {
        if b.len() < HEADER_LEN + TAG_LEN || &b[0..3] != MAGIC || b[3] != FORMAT_V1 || b[4] != SUITE_AES_256_GCM {
            return Err(KmsError::InvalidCiphertext);
        }
        let key_id = Uuid::from_slice(&b[5..21]).map_err(|_| KmsError::InvalidCiphertext)?;
        let key_version = u32::from_be_bytes(b[21..25].try_into().expect("4 bytes"));
        let context_digest = b[25..33].try_into().expect("8 bytes");
        let nonce = b[33..45].try_into().expect("12 bytes");
        Ok(Envelope {
            header: EnvelopeHeader {
                key_id,
                key_version,
                context_digest,
                nonce,
            },
            sealed: b[HEADER_LEN..].to_vec(),
        })
    }

    pub fn from_base64(s: &str) -> Result<Envelope, KmsError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KmsError::InvalidCiphertext)?;
        Envelope::from_bytes(&bytes)
    }
}

/// Associated data of a data encryption under a customer key.
pub fn data_aad(project: Uuid, header: &EnvelopeHeader, canonical_context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DATA_AAD_LABEL.len() + 16 + HEADER_LEN + canonical_context.len());
    aad.extend_from_slice(DATA_AAD_LABEL);
    aad.extend_from_slice(project.as_bytes());
    aad.extend_from_slice(&header.to_bytes());
    aad.extend_from_slice(canonical_context);
    aad
}

/// Which customer key version some wrapped material belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaterialId {
    pub project: Uuid,
    pub key_id: Uuid,
    pub version: u32,
}

/// Associated data binding wrapped key material to its project, key and version.
pub fn material_aad(id: &MaterialId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(MATERIAL_AAD_LABEL.len() + 36);
    aad.extend_from_slice(MATERIAL_AAD_LABEL);
    aad.extend_from_slice(id.project.as_bytes());
    aad.extend_from_slice(id.key_id.as_bytes());
    aad.extend_from_slice(&id.version.to_be_bytes());
    aad
}

/// Format byte of material wrapped by the PKCS#11 backend:
/// `0x01 || nonce(12) || AES-GCM(bind key, aad, AES-KWP(kek, material)) || tag(16)`.
pub const WRAP_FORMAT_PKCS11_V1: u8 = 0x01;
/// Format byte of the test-only software backend, so its material is never taken for HSM
/// material (and the PKCS#11 backend refuses it).
pub const WRAP_FORMAT_INSECURE_SOFTWARE: u8 = 0x7f;

/// Key material as it exists outside the HSM: wrapped, self-describing by its first byte. Only
/// this form is ever stored (base64 TEXT in the database).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    pub fn new(format: u8, nonce: &[u8; NONCE_LEN], sealed: &[u8]) -> WrappedKey {
        let mut v = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        v.push(format);
        v.extend_from_slice(nonce);
        v.extend_from_slice(sealed);
        WrappedKey(v)
    }

    pub fn from_bytes(b: Vec<u8>) -> WrappedKey {
        WrappedKey(b)
    }

    pub fn from_base64(s: &str) -> Result<WrappedKey, base64::DecodeError> {
        STANDARD.decode(s).map(WrappedKey)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }

    pub fn format(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// `(nonce, sealed)` if the material is at least long enough to hold them.
    pub fn parts(&self) -> Option<([u8; NONCE_LEN], &[u8])> {
        if self.0.len() < 1 + NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce = self.0[1..1 + NONCE_LEN].try_into().ok()?;
        Some((nonce, &self.0[1 + NONCE_LEN..]))
    }
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Wrapped material is not secret, but there is no reason to spread it through logs.
        write!(f, "WrappedKey(format={:?}, {} bytes)", self.format(), self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn fixed_header() -> EnvelopeHeader {
        EnvelopeHeader {
            key_id: Uuid::parse_str("0f0e0d0c-0b0a-0908-0706-050403020100").unwrap(),
            key_version: 3,
            context_digest: context_digest(&canonical_context(&ctx(&[("volume", "v-1")]))),
            nonce: [0xaa; 12],
        }
    }

    #[test]
    fn spec_12_4_2_envelope_v1_golden_bytes() {
        let env = Envelope {
            header: fixed_header(),
            sealed: vec![0x11, 0x22, 0x33].into_iter().chain([0xee; 16]).collect(),
        };
        let hex = hex::encode(env.to_bytes());
        assert_eq!(
            hex,
            concat!(
                "52504b",                           // magic
                "01",                               // format
                "01",                               // suite
                "0f0e0d0c0b0a09080706050403020100", // key id
                "00000003",                         // version
                "20d1953f5181b486",                 // context digest
                "aaaaaaaaaaaaaaaaaaaaaaaa",         // nonce
                "112233",                           // ciphertext
                "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", // tag
            )
        );
        assert_eq!(
            env.to_base64(),
            "UlBLAQEPDg0MCwoJCAcGBQQDAgEAAAAAAyDRlT9RgbSGqqqqqqqqqqqqqqqqESIz7u7u7u7u7u7u7u7u7u7u7g=="
        );
        assert_eq!(Envelope::from_base64(&env.to_base64()).unwrap(), env);
    }

    #[test]
    fn spec_12_4_2_canonical_context_golden_bytes() {
        let c = ctx(&[("volume", "v-1"), ("tenant", "t")]);
        // Sorted by key: tenant before volume.
        assert_eq!(
            hex::encode(canonical_context(&c)),
            "0002000674656e616e740001740006766f6c756d650003762d31"
        );
        assert_eq!(hex::encode(canonical_context(&EncryptionContext::new())), "0000");
        // No ambiguity between splitting one value and two entries.
        assert_ne!(
            canonical_context(&ctx(&[("a", "b,c=d")])),
            canonical_context(&ctx(&[("a", "b"), ("c", "d")]))
        );
    }

    #[test]
    fn spec_13_3_6_data_aad_binds_project_header_and_context() {
        let h = fixed_header();
        let p = Uuid::from_u128(1);
        let c = canonical_context(&ctx(&[("volume", "v-1")]));
        let base = data_aad(p, &h, &c);
        assert!(base.starts_with(b"rampart-kms:data:v1\0"));
        assert_ne!(base, data_aad(Uuid::from_u128(2), &h, &c));
        assert_ne!(base, data_aad(p, &EnvelopeHeader { key_version: 4, ..h }, &c));
        assert_ne!(base, data_aad(p, &h, &canonical_context(&ctx(&[("volume", "v-2")]))));
    }

    #[test]
    fn spec_13_3_6_material_aad_golden_bytes() {
        let id = MaterialId {
            project: Uuid::from_u128(0x11),
            key_id: Uuid::from_u128(0x22),
            version: 7,
        };
        assert_eq!(
            hex::encode(material_aad(&id)),
            format!(
                "{}{}{}{}",
                hex::encode(b"rampart-kms:key-material:v1\0"),
                "00000000000000000000000000000011",
                "00000000000000000000000000000022",
                "00000007"
            )
        );
    }

    #[test]
    fn malformed_envelopes_are_invalid_ciphertext() {
        let good = Envelope {
            header: fixed_header(),
            sealed: vec![0; 20],
        }
        .to_bytes();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..HEADER_LEN + TAG_LEN - 1].to_vec(),
            [b"XPK".as_slice(), &good[3..]].concat(),
            [&good[..3], &[2u8], &good[4..]].concat(),
            [&good[..4], &[9u8], &good[5..]].concat(),
        ];
        for c in cases {
            assert!(matches!(Envelope::from_bytes(&c), Err(KmsError::InvalidCiphertext)));
        }
        assert!(matches!(Envelope::from_base64("%%%"), Err(KmsError::InvalidCiphertext)));
        assert!(Envelope::from_bytes(&good).is_ok());
    }

    #[test]
    fn context_limits() {
        assert!(validate_context(&ctx(&[("", "x")])).is_err());
        assert!(validate_context(&ctx(&[(&"k".repeat(129), "x")])).is_err());
        assert!(validate_context(&ctx(&[("k", &"v".repeat(1025))])).is_err());
        let many: EncryptionContext = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_context(&many).is_err());
        assert!(validate_context(&ctx(&[("tenant", "t"), ("volume", "")])).is_ok());
    }

    #[test]
    fn wrapped_key_debug_shows_no_bytes() {
        let w = WrappedKey::new(WRAP_FORMAT_PKCS11_V1, &[0x5a; 12], &[0xc3; 56]);
        let d = format!("{w:?}");
        assert!(!d.contains("5a") && !d.contains("c3") && !d.contains("90"), "{d}");
        assert_eq!(w.parts().unwrap().1.len(), 56);
        assert_eq!(WrappedKey::from_base64(&w.to_base64()).unwrap(), w);
    }
}
