//! Image integrity (spec 12.1-1): streaming SHA-256 of image bytes, Ed25519 signatures over
//! the digest, trusted signing keys, the per-project policy, and [`verify_before_boot`], the
//! check the agent runs on its cached copy before every boot.
//!
//! What is signed is never the image name but its digest, inside a domain-separated message
//! (see [`signed_message`]), so a signature cannot be replayed for another purpose and anyone
//! can produce one with stock tools:
//!
//! ```text
//! printf 'rampart-image-signature-v1\nsha256:%s\n' "$(sha256sum IMAGE | cut -d' ' -f1)" > msg
//! openssl pkeyutl -sign -inkey key.pem -rawin -in msg | base64 -w0
//! ```
//!
//! The signature file (`IMAGE.sig`, written by `rampart image sign`) is JSON:
//! `{"format":"rampart-image-signature-v1","hash_method":"sha256","digest":"<64 hex>",
//!   "key_type":"ed25519","key_id":"<16 hex>","signature":"<base64, 64 bytes>"}`.
//! Keys: the private key is PKCS#8 PEM (`PRIVATE KEY`, file mode 0600); the public key is
//! SPKI PEM (`PUBLIC KEY`) or the one-line form `ed25519:<base64 of 32 bytes>`. A key id is the
//! first 16 hex digits of SHA-256 over the 32 raw public-key bytes.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use rampart_common::Sensitive;

/// Format tag of signature files and prefix of the signed message.
pub const SIGNATURE_FORMAT: &str = "rampart-image-signature-v1";
/// The error code every integrity failure carries, on the API and in instance status.
pub const CODE_IMAGE_SIGNATURE_INVALID: &str = "image_signature_invalid";

const CHUNK: usize = 1 << 20;
// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32 key bytes.
// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A SHA-256 digest. Displays and parses as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for Digest {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ImageError::Malformed("digest is not 64 hex digits"))?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 for uploads arriving in chunks: feed every chunk as it is written.
#[derive(Default, Clone)]
pub struct StreamingHasher {
    sha: Sha256,
    len: u64,
}

impl StreamingHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.sha.update(chunk);
        self.len += chunk.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (Digest, u64) {
        (Digest(self.sha.finalize().into()), self.len)
    }
}

/// Hashes everything `r` yields, in 1 MiB chunks, without holding the image in memory.
pub fn sha256_reader<R: Read>(mut r: R) -> io::Result<(Digest, u64)> {
    let mut h = StreamingHasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Async form of [`sha256_reader`] for request bodies and tokio files.
pub async fn sha256_async<R: AsyncRead + Unpin>(mut r: R) -> io::Result<(Digest, u64)> {
    let mut h = StreamingHasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

pub fn sha256_file(path: &Path) -> io::Result<(Digest, u64)> {
    sha256_reader(std::fs::File::open(path)?)
}

/// The exact bytes a signature covers.
pub fn signed_message(digest: &Digest) -> Vec<u8> {
    format!("{SIGNATURE_FORMAT}\nsha256:{digest}\n").into_bytes()
}

/// An Ed25519 public key trusted (or not) to sign images.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// First 16 hex digits of SHA-256 over the raw key: short, stable, collision-resistant enough
    /// to pick a key, never trusted on its own (the signature is always checked with the key).
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.0))[..16].to_string()
    }

    /// One-line form `ed25519:<base64>`.
    pub fn to_text(&self) -> String {
        format!("ed25519:{}", B64.encode(self.0))
    }

    /// SPKI PEM, readable by OpenSSL.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem("PUBLIC KEY", &der)
    }

    /// Parses either form.
    pub fn parse(text: &str) -> Result<PublicKey, ImageError> {
        let text = text.trim();
        let raw = if let Some(b) = text.strip_prefix("ed25519:") {
            B64.decode(b.trim())
                .map_err(|_| ImageError::Malformed("public key is not base64"))?
        } else {
            let der = unpem("PUBLIC KEY", text)?;
            der.strip_prefix(&SPKI_PREFIX[..])
                .ok_or(ImageError::Malformed(
                    "public key is not an Ed25519 SubjectPublicKeyInfo",
                ))?
                .to_vec()
        };
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| ImageError::Malformed("Ed25519 public key must be 32 bytes"))?;
        Ok(PublicKey(bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// A key the node trusts, as delivered in the desired-state document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    /// [`PublicKey::key_id`] of `public_key`.
    pub key_id: String,
    /// `ed25519:<base64>`.
    pub public_key: String,
}

impl TrustedKey {
    pub fn new(pk: &PublicKey) -> TrustedKey {
        TrustedKey {
            key_id: pk.key_id(),
            public_key: pk.to_text(),
        }
    }
}

/// An Ed25519 signing key. Held as its PKCS#8 document, zeroed on drop, never printed.
pub struct SigningKey {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, [redacted])", self.public_key().key_id())
    }
}

impl SigningKey {
    /// A fresh key from the OS random source.
    pub fn generate() -> Result<SigningKey, ImageError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| ImageError::KeyGeneration)?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, ImageError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| ImageError::Malformed("private key is not an Ed25519 PKCS#8 document"))?;
        // Kept as the RFC 8410 v1 document (seed only): ring generates v2 (version 1, seed, then
        // the public key), which OpenSSL 3.0 cannot read.
        let v1 = if der.len() >= 48 && der[2..5] == [0x02, 0x01, 0x01] && der[5..16] == PKCS8_V1_PREFIX[5..16] {
            let mut v = PKCS8_V1_PREFIX.to_vec();
            v.extend_from_slice(&der[16..48]);
            Zeroizing::new(v)
        } else {
            Zeroizing::new(der.to_vec())
        };
        Ok(SigningKey { pkcs8: v1, pair })
    }

    /// PKCS#8 PEM; write it with mode 0600 (`rampart_common::fsutil::write_secret`).
    pub fn to_pem(&self) -> Sensitive {
        Sensitive::new(pem("PRIVATE KEY", &self.pkcs8))
    }

    pub fn from_pem(text: &str) -> Result<SigningKey, ImageError> {
        let der = Zeroizing::new(unpem("PRIVATE KEY", text)?);
        Self::from_pkcs8(&der)
    }

    pub fn public_key(&self) -> PublicKey {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(b)
    }

    pub fn sign_digest(&self, digest: &Digest) -> ImageSignature {
        let sig = self.pair.sign(&signed_message(digest));
        ImageSignature {
            format: SIGNATURE_FORMAT.into(),
            hash_method: "sha256".into(),
            digest: *digest,
            key_type: "ed25519".into(),
            key_id: self.public_key().key_id(),
            signature: B64.encode(sig.as_ref()),
        }
    }

    /// `rampart image sign`: hash the file and sign its digest.
    pub fn sign_file(&self, path: &Path) -> Result<ImageSignature, ImageError> {
        let (digest, _) = sha256_file(path).map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(self.sign_digest(&digest))
    }
}

/// `rampart image keygen PRIVATE PUBLIC`: a new key, the private half written 0600 (PKCS#8
/// PEM), the public half as SPKI PEM. Returns the public key (its id goes to
/// `POST /v1/signing-keys`).
pub fn write_new_keypair(private: &Path, public: &Path) -> Result<PublicKey, ImageError> {
    let key = SigningKey::generate()?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Read { path, source }
    };
    rampart_common::fsutil::write_secret(private, key.to_pem().expose().as_bytes()).map_err(werr(private))?;
    rampart_common::fsutil::write_atomic(public, key.public_key().to_pem().as_bytes(), 0o644).map_err(werr(public))?;
    Ok(key.public_key())
}

/// `rampart image sign --key PRIVATE IMAGE`: writes `IMAGE.sig` beside the image and returns
/// the signature (whose fields also go to the image's `signature`/`signing_key` properties).
pub fn sign_image_file(private: &Path, image: &Path) -> Result<(ImageSignature, PathBuf), ImageError> {
    let text = Zeroizing::new(std::fs::read_to_string(private).map_err(|source| ImageError::Read {
        path: private.to_path_buf(),
        source,
    })?);
    let key = SigningKey::from_pem(&text)?;
    let sig = key.sign_file(image)?;
    let mut name = image.as_os_str().to_owned();
    name.push(".sig");
    let out = PathBuf::from(name);
    rampart_common::fsutil::write_atomic(&out, sig.to_json().as_bytes(), 0o644).map_err(|source| ImageError::Read {
        path: out.clone(),
        source,
    })?;
    Ok((sig, out))
}

/// A detached image signature (the `.sig` file, and the image's `signature`/`signing_key`
/// properties on the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSignature {
    pub format: String,
    pub hash_method: String,
    pub digest: Digest,
    pub key_type: String,
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature over [`signed_message`].
    pub signature: String,
}

impl ImageSignature {
    /// Whether `b64` is the base64 of a 64-byte Ed25519 signature (input checking).
    pub fn is_well_formed(b64: &str) -> bool {
        B64.decode(b64.trim()).is_ok_and(|b| b.len() == 64)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("signature serialises")
    }

    pub fn from_json(text: &str) -> Result<ImageSignature, ImageError> {
        serde_json::from_str(text)
            .map_err(|_| ImageError::Malformed("signature file is not valid JSON of the v1 format"))
    }
}

/// Per-project image signature policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignaturePolicy {
    /// Boot only images with a valid signature from a trusted key.
    #[default]
    Require,
    /// Boot anyway, but record why the signature did not verify.
    Warn,
    /// Do not check signatures (the digest is still checked).
    Off,
}

impl FromStr for SignaturePolicy {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "require" => Ok(Self::Require),
            "warn" => Ok(Self::Warn),
            "off" => Ok(Self::Off),
            _ => Err(ImageError::Malformed("policy must be require, warn or off")),
        }
    }
}

/// Why an image may not boot. Every variant has the public code `image_signature_invalid`;
/// none carries key material or image contents.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image digest mismatch: expected sha256:{expected}, node copy has sha256:{actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("image has no signature and the policy requires one")]
    Unsigned,
    #[error("signature is for sha256:{signed}, image is sha256:{actual}")]
    SignedDigestMismatch { signed: Digest, actual: Digest },
    #[error("signing key {key_id} is not trusted")]
    UntrustedKey { key_id: String },
    #[error("signature does not verify with key {key_id}")]
    BadSignature { key_id: String },
    #[error("unsupported signature: {0}")]
    Unsupported(String),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("key generation failed")]
    KeyGeneration,
}

impl ImageError {
    pub fn code(&self) -> &'static str {
        CODE_IMAGE_SIGNATURE_INVALID
    }
}

impl From<ImageError> for rampart_common::Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Read { .. } | ImageError::KeyGeneration => {
                rampart_common::Error::internal("verifying an image", e)
            }
            other => rampart_common::Error::PolicyViolation {
                message: other.to_string(),
                details: Some(serde_json::json!({ "code": CODE_IMAGE_SIGNATURE_INVALID })),
            },
        }
    }
}

/// Checks `signature` over `digest` against `trusted`. Returns the id of the key that verified.
pub fn verify_signature(
    digest: &Digest,
    signature: &ImageSignature,
    trusted: &[TrustedKey],
) -> Result<String, ImageError> {
    if signature.format != SIGNATURE_FORMAT {
        return Err(ImageError::Unsupported(format!("format {:?}", signature.format)));
    }
    if signature.hash_method != "sha256" || signature.key_type != "ed25519" {
        return Err(ImageError::Unsupported(format!(
            "{}/{}",
            signature.hash_method, signature.key_type
        )));
    }
    if signature.digest != *digest {
        return Err(ImageError::SignedDigestMismatch {
            signed: signature.digest,
            actual: *digest,
        });
    }
    let sig = B64
        .decode(signature.signature.trim())
        .map_err(|_| ImageError::Malformed("signature is not base64"))?;
    // Every trusted key whose id matches is tried: the id only selects, the signature decides.
    let candidates: Vec<&TrustedKey> = trusted.iter().filter(|k| k.key_id == signature.key_id).collect();
    if candidates.is_empty() {
        return Err(ImageError::UntrustedKey {
            key_id: signature.key_id.clone(),
        });
    }
    let msg = signed_message(digest);
    for k in candidates {
        let Ok(pk) = PublicKey::parse(&k.public_key) else {
            continue;
        };
        if pk.key_id() != k.key_id {
            continue;
        }
        if UnparsedPublicKey::new(&ED25519, pk.0).verify(&msg, &sig).is_ok() {
            return Ok(k.key_id.clone());
        }
    }
    Err(ImageError::BadSignature {
        key_id: signature.key_id.clone(),
    })
}

/// Proof that an image passed [`verify_before_boot`]. Its fields are private and it has no
/// public constructor, so code that starts a VM and demands a permit cannot be called with an
/// unverified image.
#[derive(Debug, Clone)]
pub struct BootPermit {
    path: PathBuf,
    digest: Digest,
    size: u64,
    key_id: Option<String>,
    warnings: Vec<String>,
}

impl BootPermit {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The trusted key that verified the signature (`None` under `warn`/`off` without one).
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    /// Signature problems tolerated by the `warn` policy; the agent audits them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// The check the agent runs before every boot: re-hash the node's copy of the image, compare it
/// with the digest recorded at upload, and (policy permitting) verify the signature against the
/// trusted keys. A digest mismatch is fatal under every policy: it means the node's copy is not
/// the image that was uploaded. Blocking (it reads the whole file): call it from
/// `spawn_blocking`.
pub fn verify_before_boot(
    image_path: &Path,
    expected_digest: &Digest,
    signature: Option<&ImageSignature>,
    trusted_keys: &[TrustedKey],
    policy: SignaturePolicy,
) -> Result<BootPermit, ImageError> {
    let (actual, size) = sha256_file(image_path).map_err(|source| ImageError::Read {
        path: image_path.to_path_buf(),
        source,
    })?;
    if actual != *expected_digest {
        tracing::warn!(image = %image_path.display(), expected = %expected_digest, actual = %actual, "image digest mismatch");
        return Err(ImageError::DigestMismatch {
            expected: *expected_digest,
            actual,
        });
    }
    let mut permit = BootPermit {
        path: image_path.to_path_buf(),
        digest: actual,
        size,
        key_id: None,
        warnings: Vec::new(),
    };
    if policy == SignaturePolicy::Off {
        return Ok(permit);
    }
    let result = match signature {
        None => Err(ImageError::Unsigned),
        Some(sig) => verify_signature(&actual, sig, trusted_keys),
    };
    match (result, policy) {
        (Ok(key_id), _) => permit.key_id = Some(key_id),
        (Err(e), SignaturePolicy::Warn) => {
            tracing::warn!(image = %image_path.display(), error = %e, "booting with an unverified image (policy warn)");
            permit.warnings.push(e.to_string());
        }
        (Err(e), _) => {
            tracing::warn!(image = %image_path.display(), error = %e, "image refused before boot");
            return Err(e);
        }
    }
    Ok(permit)
}

/// Async wrapper running [`verify_before_boot`] on the blocking pool.
pub async fn verify_before_boot_async(
    image_path: PathBuf,
    expected_digest: Digest,
    signature: Option<ImageSignature>,
    trusted_keys: Vec<TrustedKey>,
    policy: SignaturePolicy,
) -> Result<BootPermit, ImageError> {
    let path = image_path.clone();
    tokio::task::spawn_blocking(move || {
        verify_before_boot(&image_path, &expected_digest, signature.as_ref(), &trusted_keys, policy)
    })
    .await
    .unwrap_or_else(|e| {
        Err(ImageError::Read {
            path,
            source: io::Error::other(e.to_string()),
        })
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(label: &str, text: &str) -> Result<Vec<u8>, ImageError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or(ImageError::Malformed("PEM header not found"))? + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or(ImageError::Malformed("PEM footer not found"))?
        + start;
    let body: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(body)
        .map_err(|_| ImageError::Malformed("PEM body is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, bytes: &[u8]) -> (PathBuf, Digest) {
        let p = dir.join("image.raw");
        std::fs::write(&p, bytes).unwrap();
        let (d, _) = sha256_file(&p).unwrap();
        (p, d)
    }

    #[test]
    fn spec_12_1_1_streaming_hash_matches_one_shot_hash() {
        // Longer than one chunk, so the loop really streams.
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        let (d, n) = sha256_reader(&data[..]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d.0, <[u8; 32]>::from(Sha256::digest(&data)));
        let mut h = StreamingHasher::new();
        for c in data.chunks(7777) {
            h.update(c);
        }
        assert_eq!(h.finish(), (d, n));
        // Known vector: SHA-256("abc").
        let (abc, _) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(
            abc.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn spec_12_1_1_async_hash_matches_blocking_hash() {
        let data = vec![42u8; 3 * CHUNK / 2];
        assert_eq!(
            sha256_async(&data[..]).await.unwrap(),
            sha256_reader(&data[..]).unwrap()
        );
    }

    #[test]
    fn spec_12_1_1_signed_image_from_trusted_key_is_permitted() {
        let dir = tempfile::tempdir().unwrap();
        let (p, d) = image(dir.path(), b"kernel bytes");
        let key = SigningKey::generate().unwrap();
        let sig = key.sign_file(&p).unwrap();
        let trusted = [TrustedKey::new(&key.public_key())];
        let permit = verify_before_boot(&p, &d, Some(&sig), &trusted, SignaturePolicy::Require).unwrap();
        assert_eq!(permit.key_id(), Some(key.public_key().key_id().as_str()));
        assert_eq!(permit.size(), 12);
        assert!(permit.warnings().is_empty());
    }

    #[test]
    fn spec_12_1_1_tampered_image_is_refused_under_every_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (p, d) = image(dir.path(), b"kernel bytes");
        let key = SigningKey::generate().unwrap();
        let sig = key.sign_file(&p).unwrap();
        let trusted = [TrustedKey::new(&key.public_key())];
        std::fs::write(&p, b"kernel bytez").unwrap();
        for policy in [SignaturePolicy::Require, SignaturePolicy::Warn, SignaturePolicy::Off] {
            let e = verify_before_boot(&p, &d, Some(&sig), &trusted, policy).unwrap_err();
            assert!(matches!(e, ImageError::DigestMismatch { .. }), "{policy:?}: {e}");
            assert_eq!(e.code(), "image_signature_invalid");
        }
    }

    #[test]
    fn spec_12_1_1_untrusted_key_unsigned_and_forged_signatures_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p, d) = image(dir.path(), b"image");
        let trusted_key = SigningKey::generate().unwrap();
        let rogue = SigningKey::generate().unwrap();
        let trusted = [TrustedKey::new(&trusted_key.public_key())];
        let req = SignaturePolicy::Require;

        let e = verify_before_boot(&p, &d, Some(&rogue.sign_digest(&d)), &trusted, req).unwrap_err();
        assert!(matches!(e, ImageError::UntrustedKey { .. }), "{e}");

        assert!(matches!(
            verify_before_boot(&p, &d, None, &trusted, req).unwrap_err(),
            ImageError::Unsigned
        ));

        // A rogue signature relabelled with the trusted key's id.
        let mut forged = rogue.sign_digest(&d);
        forged.key_id = trusted_key.public_key().key_id();
        let e = verify_before_boot(&p, &d, Some(&forged), &trusted, req).unwrap_err();
        assert!(matches!(e, ImageError::BadSignature { .. }), "{e}");

        // A valid signature of another image.
        let other = trusted_key.sign_digest(&sha256_reader(&b"other"[..]).unwrap().0);
        let e = verify_before_boot(&p, &d, Some(&other), &trusted, req).unwrap_err();
        assert!(matches!(e, ImageError::SignedDigestMismatch { .. }), "{e}");

        // A digest edited in the signature file to match, signature bytes unchanged.
        let mut edited = other.clone();
        edited.digest = d;
        let e = verify_before_boot(&p, &d, Some(&edited), &trusted, req).unwrap_err();
        assert!(matches!(e, ImageError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn spec_12_1_1_warn_policy_boots_and_records_why_off_skips_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let (p, d) = image(dir.path(), b"image");
        let permit = verify_before_boot(&p, &d, None, &[], SignaturePolicy::Warn).unwrap();
        assert_eq!(permit.warnings().len(), 1);
        assert!(permit.key_id().is_none());
        let permit = verify_before_boot(&p, &d, None, &[], SignaturePolicy::Off).unwrap();
        assert!(permit.warnings().is_empty());
        assert_eq!(SignaturePolicy::default(), SignaturePolicy::Require);
    }

    #[test]
    fn spec_12_1_1_missing_image_is_refused() {
        let d = Digest([0; 32]);
        let e = verify_before_boot(Path::new("/nonexistent/x"), &d, None, &[], SignaturePolicy::Off).unwrap_err();
        assert!(matches!(e, ImageError::Read { .. }));
        assert_eq!(e.code(), CODE_IMAGE_SIGNATURE_INVALID);
    }

    #[test]
    fn spec_12_1_1_keys_and_signature_files_round_trip() {
        let key = SigningKey::generate().unwrap();
        let pem_text = key.to_pem();
        let again = SigningKey::from_pem(pem_text.expose()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let pk = key.public_key();
        assert_eq!(PublicKey::parse(&pk.to_pem()).unwrap(), pk);
        assert_eq!(PublicKey::parse(&pk.to_text()).unwrap(), pk);
        assert_eq!(pk.key_id().len(), 16);
        let d = Digest([7; 32]);
        let sig = key.sign_digest(&d);
        assert_eq!(ImageSignature::from_json(&sig.to_json()).unwrap(), sig);
        assert!(ImageSignature::from_json(r#"{"format":"x"}"#).is_err());
    }

    #[test]
    fn spec_12_1_1_cli_helpers_write_a_private_key_0600_and_a_verifiable_sig_file() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("key.pem"), dir.path().join("key.pub"));
        let pk = write_new_keypair(&private, &public).unwrap();
        assert_eq!(rampart_common::fsutil::mode_of(&private).unwrap(), 0o600);
        assert_eq!(
            PublicKey::parse(&std::fs::read_to_string(&public).unwrap()).unwrap(),
            pk
        );
        let (img, d) = image(dir.path(), b"image bytes");
        let (sig, sig_path) = sign_image_file(&private, &img).unwrap();
        assert_eq!(sig_path, dir.path().join("image.raw.sig"));
        let back = ImageSignature::from_json(&std::fs::read_to_string(&sig_path).unwrap()).unwrap();
        assert_eq!(back, sig);
        verify_before_boot(&img, &d, Some(&back), &[TrustedKey::new(&pk)], SignaturePolicy::Require).unwrap();
    }

    #[test]
    fn spec_13_4_7_signing_key_never_debug_prints_its_secret() {
        let key = SigningKey::generate().unwrap();
        let dbg = format!("{key:?}");
        let pem_text = key.to_pem();
        let body: String = pem_text.expose().lines().nth(1).unwrap().to_string();
        assert!(!dbg.contains(&body[..20]), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert_eq!(format!("{pem_text:?}"), "[redacted]");
    }

    #[test]
    fn spec_12_1_1_signature_made_with_openssl_verifies() {
        // Interop: users may sign with stock OpenSSL instead of `rampart image sign`.
        use rampart_common::testing::{Need, require};
        let have = std::process::Command::new("openssl").arg("version").output().is_ok();
        if !require(Need::Root, have, "openssl missing") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let kp = dir.path().join("key.pem");
        std::fs::write(&kp, key.to_pem().expose()).unwrap();
        let d = Digest([9; 32]);
        let mp = dir.path().join("msg");
        std::fs::write(&mp, signed_message(&d)).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(&kp)
            .arg("-in")
            .arg(&mp)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sig = ImageSignature {
            signature: B64.encode(&out.stdout),
            ..key.sign_digest(&d)
        };
        assert_eq!(
            verify_signature(&d, &sig, &[TrustedKey::new(&key.public_key())]).unwrap(),
            key.public_key().key_id()
        );
        // And OpenSSL reads our public key PEM.
        let pub_path = dir.path().join("pub.pem");
        std::fs::write(&pub_path, key.public_key().to_pem()).unwrap();
        let st = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-noout", "-in"])
            .arg(&pub_path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}
