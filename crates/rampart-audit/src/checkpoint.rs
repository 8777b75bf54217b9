//! Signed checkpoints: every N records or T seconds the appender signs the state of the chain
//! (RFC 6962 Merkle root over all record hashes since seq 1, the last record hash, and the
//! compact range that lets the tree be extended or re-rooted after older records are purged).
//!
//! Signature: Ed25519 (ring) over `"rampart-audit-checkpoint-v1\n" || canonical(body)`, where
//! the body is the checkpoint without `signature`. `prev` is the SHA-256 of the previous
//! checkpoint's canonical form (signature included), chaining checkpoints as well.
//!
//! Kinds: `periodic` checkpoints attest the chain up to `tree_size`; a `boundary` checkpoint is
//! written by a retention purge and attests the chain up to the last purged record, so the
//! verifier can start from its compact range and `last_hash` at the first kept record.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::canonical;
use crate::hash::Hash;
use crate::merkle::CompactRange;
use crate::record::ms_time;

pub const SIGNING_CONTEXT: &[u8] = b"rampart-audit-checkpoint-v1\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    Periodic,
    Boundary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    pub version: u32,
    /// Number of this checkpoint, from 1, without gaps.
    pub seq: u64,
    pub kind: CheckpointKind,
    /// Records 1..=tree_size are attested; equal to the last attested record's seq.
    pub tree_size: u64,
    pub root: Hash,
    /// Hash of record `tree_size` (zeros when the tree is empty).
    pub last_hash: Hash,
    /// Compact range of the tree (see [`CompactRange`]), largest subtree first.
    pub compact_range: Vec<Hash>,
    #[serde(with = "ms_time")]
    pub time: OffsetDateTime,
    pub key_id: String,
    /// Hash of the previous checkpoint (zeros for the first).
    pub prev: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub body: CheckpointBody,
    /// Base64 (standard alphabet) Ed25519 signature.
    pub signature: String,
}

impl CheckpointBody {
    pub fn signing_input(&self) -> Vec<u8> {
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&canonical::canonical_of(self).expect("checkpoint bodies are canonical"));
        msg
    }

    pub fn tree(&self) -> Option<CompactRange> {
        CompactRange::from_parts(self.tree_size, self.compact_range.clone())
    }
}

impl Checkpoint {
    /// The value the next checkpoint's `prev` carries.
    pub fn digest(&self) -> Hash {
        Hash::sha256(&[&canonical::canonical_of(self).expect("checkpoints are canonical")])
    }

    pub fn sign(body: CheckpointBody, signer: &dyn CheckpointSigner) -> Result<Checkpoint, SignError> {
        let sig = signer.sign(&body.signing_input())?;
        Ok(Checkpoint {
            body,
            signature: B64.encode(sig),
        })
    }

    /// Checks the signature against the key ring; the key is chosen by `key_id`.
    pub fn verify_signature(&self, keys: &KeyRing) -> Result<(), SignatureProblem> {
        let key = keys.get(&self.body.key_id).ok_or(SignatureProblem::UnknownKey)?;
        let sig = B64.decode(&self.signature).map_err(|_| SignatureProblem::Malformed)?;
        UnparsedPublicKey::new(&ED25519, &key.public_key)
            .verify(&self.body.signing_input(), &sig)
            .map_err(|_| SignatureProblem::Invalid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("signed with a key that is not trusted")]
    UnknownKey,
    #[error("signature is not base64")]
    Malformed,
    #[error("signature does not verify")]
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the checkpoint signing key is unusable")]
    BadKey,
    #[error("cannot read or write the checkpoint signing key")]
    Io(#[source] std::io::Error),
    #[error("the signer failed: {0}")]
    Backend(String),
}

/// Anything that signs checkpoints: the Ed25519 key file below, later a PKCS#11 key.
pub trait CheckpointSigner: Send + Sync {
    fn key_id(&self) -> &str;
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError>;
    fn public_key(&self) -> TrustedKey;
}

/// A public key a verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub key_id: String,
    pub algorithm: String,
    #[serde(with = "b64_bytes")]
    pub public_key: Vec<u8>,
}

impl TrustedKey {
    pub fn ed25519(public_key: &[u8]) -> Self {
        TrustedKey {
            key_id: key_id_of(public_key),
            algorithm: "ed25519".into(),
            public_key: public_key.to_vec(),
        }
    }
}

/// `ed25519:` and the first 16 hex digits of SHA-256(public key).
pub fn key_id_of(public_key: &[u8]) -> String {
    format!("ed25519:{}", &Hash::sha256(&[public_key]).to_hex()[..16])
}

/// Trusted checkpoint keys by id; old keys stay so old checkpoints still verify after rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub keys: BTreeMap<String, TrustedKey>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = TrustedKey>) -> Self {
        KeyRing {
            keys: keys.into_iter().map(|k| (k.key_id.clone(), k)).collect(),
        }
    }

    pub fn get(&self, key_id: &str) -> Option<&TrustedKey> {
        self.keys.get(key_id)
    }
}

/// Ed25519 signing key held in memory (from a PKCS#8 file written 0600).
pub struct Ed25519Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    /// A fresh key and its PKCS#8 document (to be stored as a secret).
    pub fn generate() -> Result<(Self, rampart_common::Sensitive), SignError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignError::BadKey)?;
        let signer = Self::from_pkcs8(doc.as_ref())?;
        Ok((signer, rampart_common::Sensitive::new(B64.encode(doc.as_ref()))))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| SignError::BadKey)?;
        let key_id = key_id_of(pair.public_key().as_ref());
        Ok(Ed25519Signer { pair, key_id })
    }

    /// Loads the key at `path` (base64 PKCS#8), creating it with mode 0600 when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SignError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let der = B64.decode(text.trim()).map_err(|_| SignError::BadKey)?;
                Self::from_pkcs8(&der)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (signer, doc) = Self::generate()?;
                if let Some(dir) = path.parent() {
                    rampart_common::fsutil::ensure_private_dir(dir).map_err(SignError::Io)?;
                }
                rampart_common::fsutil::write_secret(path, doc.expose().as_bytes()).map_err(SignError::Io)?;
                Ok(signer)
            }
            Err(e) => Err(SignError::Io(e)),
        }
    }
}

impl CheckpointSigner for Ed25519Signer {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(self.pair.sign(msg).as_ref().to_vec())
    }

    fn public_key(&self) -> TrustedKey {
        TrustedKey::ed25519(self.pair.public_key().as_ref())
    }
}

mod b64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        B64.decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn body(signer: &dyn CheckpointSigner) -> CheckpointBody {
        let mut tree = CompactRange::new();
        tree.push(&Hash::sha256(&[b"r1"]));
        tree.push(&Hash::sha256(&[b"r2"]));
        tree.push(&Hash::sha256(&[b"r3"]));
        CheckpointBody {
            version: 1,
            seq: 1,
            kind: CheckpointKind::Periodic,
            tree_size: 3,
            root: tree.root(),
            last_hash: Hash::sha256(&[b"r3"]),
            compact_range: tree.nodes.clone(),
            time: datetime!(2026-11-29 04:17:41 UTC),
            key_id: signer.key_id().to_string(),
            prev: Hash::ZERO,
        }
    }

    #[test]
    fn spec_13_4_1_checkpoint_signature_verifies_and_detects_forgery() {
        let (signer, _) = Ed25519Signer::generate().unwrap();
        let keys = KeyRing::new([signer.public_key()]);
        let cp = Checkpoint::sign(body(&signer), &signer).unwrap();
        cp.verify_signature(&keys).unwrap();

        let mut forged = cp.clone();
        forged.body.tree_size = 2;
        assert_eq!(forged.verify_signature(&keys), Err(SignatureProblem::Invalid));

        let (other, _) = Ed25519Signer::generate().unwrap();
        let by_other = Checkpoint::sign(body(&signer), &other).unwrap();
        assert_eq!(by_other.verify_signature(&keys), Err(SignatureProblem::Invalid));
        let mut unknown = by_other;
        unknown.body.key_id = other.key_id().to_string();
        assert_eq!(unknown.verify_signature(&keys), Err(SignatureProblem::UnknownKey));
    }

    #[test]
    fn spec_13_4_1_checkpoint_json_round_trips_and_signing_input_is_canonical() {
        let (signer, _) = Ed25519Signer::generate().unwrap();
        let cp = Checkpoint::sign(body(&signer), &signer).unwrap();
        let text = serde_json::to_string(&cp).unwrap();
        let back: Checkpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cp);
        let input = String::from_utf8(cp.body.signing_input()).unwrap();
        assert!(
            input.starts_with("rampart-audit-checkpoint-v1\n{\"compact_range\":["),
            "{input}"
        );
        assert!(input.ends_with(",\"tree_size\":3,\"version\":1}"), "{input}");
        assert_eq!(back.body.tree().unwrap().root(), cp.body.root);
    }

    #[test]
    fn spec_13_4_7_signing_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/checkpoint.key");
        let a = Ed25519Signer::load_or_create(&path).unwrap();
        assert_eq!(rampart_common::fsutil::mode_of(&path).unwrap(), 0o600);
        let b = Ed25519Signer::load_or_create(&path).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert!(!format!("{a:?}").contains(&std::fs::read_to_string(&path).unwrap()));
    }
}
