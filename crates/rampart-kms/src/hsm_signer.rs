//! An ECDSA P-256 key held in the HSM that rcgen signs certificates and CRLs with (12.3.1,
//! 13.3-2): the internal CA's private key never exists outside the token.
//!
//! SoftHSM 2.6.1 generates P-256 keys (CKM_EC_KEY_PAIR_GEN) and signs with raw CKM_ECDSA over
//! a digest, but has no CKM_ECDSA_SHA256 (C_SignInit answers CKR_MECHANISM_INVALID, checked):
//! the SHA-256 of the to-be-signed bytes is computed here (hashing is public), the token signs
//! it, and its `r || s` output is DER-encoded as X.509 expects (ECDSA-Sig-Value).

use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use sha2::{Digest, Sha256};

use crate::error::HsmError;
use crate::pkcs11::Pkcs11Backend;

/// DER of the OID of prime256v1 (secp256r1), the CKA_EC_PARAMS of a P-256 key.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

pub struct HsmSigningKey {
    backend: Arc<Pkcs11Backend>,
    private: ObjectHandle,
    /// Uncompressed point `04 || X || Y`, what rcgen puts in SubjectPublicKeyInfo.
    public_point: Vec<u8>,
    label: String,
}

impl std::fmt::Debug for HsmSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSigningKey").field("label", &self.label).finish()
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); some modules return
/// the bare point. Accept both for an uncompressed P-256 point.
pub fn ec_point_from_attribute(v: &[u8]) -> Option<Vec<u8>> {
    match v {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 && rest[0] == 0x04 => Some(rest.to_vec()),
        [0x04, ..] if v.len() == 65 => Some(v.to_vec()),
        _ => None,
    }
}

fn der_integer(out: &mut Vec<u8>, unsigned_be: &[u8]) {
    let mut i = 0;
    while i + 1 < unsigned_be.len() && unsigned_be[i] == 0 {
        i += 1;
    }
    let body = &unsigned_be[i..];
    let pad = body[0] & 0x80 != 0;
    out.push(0x02);
    out.push((body.len() + pad as usize) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(body);
}

/// `r || s` (32 + 32 bytes) to `SEQUENCE { INTEGER r, INTEGER s }`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let mut body = Vec::with_capacity(72);
    der_integer(&mut body, &raw[..32]);
    der_integer(&mut body, &raw[32..]);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    Some(out)
}

impl HsmSigningKey {
    /// Loads the P-256 key pair labelled `label`, generating it in the token on first use.
    pub fn load_or_generate(backend: Arc<Pkcs11Backend>, label: &str) -> Result<HsmSigningKey, HsmError> {
        if let Some(key) = Self::load(backend.clone(), label)? {
            return Ok(key);
        }
        {
            let s = backend.session();
            let id = label.as_bytes().to_vec();
            s.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(P256_PARAMS.to_vec()),
                    Attribute::Verify(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(id.clone()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Modifiable(false),
                    Attribute::Copyable(false),
                    Attribute::Sign(true),
                    Attribute::Derive(false),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(id),
                ],
            )
            .map_err(HsmError::device("C_GenerateKeyPair"))?;
        }
        tracing::info!(label, "generated a CA signing key in the HSM");
        Self::load(backend, label)?.ok_or_else(|| HsmError::Config(format!("{label}: generated key pair not found")))
    }

    /// The P-256 key pair labelled `label`, if the token holds one (never generates).
    pub fn load(backend: Arc<Pkcs11Backend>, label: &str) -> Result<Option<HsmSigningKey>, HsmError> {
        let (private, public) = {
            let s = backend.session();
            let find = |class| {
                s.find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())])
                    .map_err(HsmError::device("C_FindObjects"))
            };
            let privs = find(ObjectClass::PRIVATE_KEY)?;
            let pubs = find(ObjectClass::PUBLIC_KEY)?;
            match (privs.as_slice(), pubs.as_slice()) {
                ([p], [q]) => (*p, *q),
                ([], []) => return Ok(None),
                (p, q) => {
                    return Err(HsmError::AmbiguousRootKey {
                        label: label.to_string(),
                        count: p.len().max(q.len()),
                    });
                }
            }
        };
        let point = {
            let s = backend.session();
            let attrs = s
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(HsmError::device("C_GetAttributeValue"))?;
            attrs
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(v) => ec_point_from_attribute(&v),
                    _ => None,
                })
                .ok_or_else(|| HsmError::Config(format!("{label}: not an uncompressed P-256 public key")))?
        };
        Ok(Some(HsmSigningKey {
            backend,
            private,
            public_point: point,
            label: label.to_string(),
        }))
    }

    /// Whether the token would hand out the private key (it must not).
    pub fn private_key_exportable(&self) -> Result<bool, HsmError> {
        let s = self.backend.session();
        let attrs = s
            .get_attributes(self.private, &[AttributeType::Value, AttributeType::Extractable])
            .map_err(HsmError::device("C_GetAttributeValue"))?;
        Ok(attrs
            .iter()
            .any(|a| matches!(a, Attribute::Value(_) | Attribute::Extractable(true))))
    }
}

impl PublicKeyData for HsmSigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for HsmSigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest = Sha256::digest(msg);
        let raw = self
            .backend
            .session()
            .sign(&Mechanism::Ecdsa, self.private, &digest)
            .map_err(|e| {
                tracing::error!(label = %self.label, error = %e, "HSM signing failed");
                rcgen::Error::RemoteKeyError
            })?;
        ecdsa_raw_to_der(&raw).ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// The internal CA's key, wherever it lives: `CertificateAuthority` can hold an
/// `Issuer<'static, CaKey>` and stay one type whether the module can sign or not.
#[derive(Debug)]
pub enum CaKey {
    /// A key file (`tls/ca-key.pem`), when the HSM cannot hold EC keys.
    File(Box<rcgen::KeyPair>),
    Hsm(HsmSigningKey),
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.der_bytes(),
            CaKey::Hsm(k) => k.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            CaKey::File(k) => k.algorithm(),
            CaKey::Hsm(k) => k.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Hsm(k) => k.sign(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_12_4_2_ecdsa_signature_der_golden() {
        // High bit set in r: a zero byte keeps the INTEGER positive.
        let mut raw = [0u8; 64];
        raw[0] = 0x80;
        raw[31] = 1;
        raw[63] = 2; // s = 2: leading zeros stripped.
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let mut expected = vec![0x30, 0x26, 0x02, 0x21, 0x00, 0x80];
        expected.extend_from_slice(&[0u8; 30]);
        expected.extend_from_slice(&[0x01, 0x02, 0x01, 0x02]);
        assert_eq!(hex::encode(&der), hex::encode(&expected));
        assert_eq!(hex::encode(ecdsa_raw_to_der(&[0u8; 64]).unwrap()), "3006020100020100");
        assert!(ecdsa_raw_to_der(&[1u8; 63]).is_none());
    }

    #[test]
    fn ec_point_attribute_forms() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&point);
        assert_eq!(ec_point_from_attribute(&wrapped).unwrap(), point);
        assert_eq!(ec_point_from_attribute(&point).unwrap(), point);
        assert!(ec_point_from_attribute(&point[..33]).is_none());
    }
}

#[cfg(test)]
mod hsm_tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use x509_parser::prelude::*;

    fn verify(cert_der: &[u8], issuer_point: &[u8]) {
        let (_, cert) = X509Certificate::from_der(cert_der).unwrap();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, issuer_point);
        key.verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .expect("signature verifies under the HSM key");
        let mut tampered = cert.tbs_certificate.as_ref().to_vec();
        let n = tampered.len() / 2;
        tampered[n] ^= 1;
        assert!(key.verify(&tampered, &cert.signature_value.data).is_err());
    }

    #[test]
    fn spec_12_3_1_ca_key_in_the_hsm_signs_certificates_for_rcgen() {
        let Some(b) = crate::testutil::backend() else { return };
        let ca_key = HsmSigningKey::load_or_generate(b.clone(), "rampart:ca").unwrap();
        assert!(!ca_key.private_key_exportable().unwrap());
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Rampart HSM CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = params.clone().self_signed(&ca_key).unwrap();
        verify(ca_cert.der(), ca_key.der_bytes());

        let issuer = Issuer::new(params, CaKey::Hsm(ca_key));
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = CertificateParams::new(vec!["api.rampart.test".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let (_, ca_parsed) = X509Certificate::from_der(ca_cert.der()).unwrap();
        let ca_point = ca_parsed.public_key().subject_public_key.data.to_vec();
        verify(leaf_cert.der(), &ca_point);
        let (_, leaf_parsed) = X509Certificate::from_der(leaf_cert.der()).unwrap();
        assert_eq!(leaf_parsed.issuer(), ca_parsed.subject());

        // Loading again finds the same key in the token (no second CA key).
        let again = HsmSigningKey::load_or_generate(b, "rampart:ca").unwrap();
        assert_eq!(again.der_bytes(), &ca_point[..]);
    }
}
