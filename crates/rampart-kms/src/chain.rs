//! Chain checks of imported third-party certificates (13.3-2). An import is accepted when the
//! leaf verifies, for server or client authentication and at the given time, through the
//! supplied intermediates to a trust anchor: the operating system's roots, Rampart's own CAs,
//! or a self-signed root supplied with the chain (reported as such, since anyone can make one).
//! Signatures, validity periods, CA constraints and key usages are checked by rustls-webpki.

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use crate::ca::{CertInfo, cert_info};

/// Debian's bundle of the roots the operating system trusts (package `ca-certificates`).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most certificates accepted in one import (leaf and chain).
pub const MAX_CHAIN: usize = 10;

/// Where the chain of an imported certificate ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainTrust {
    /// A root the operating system trusts.
    System,
    /// One of Rampart's internal CAs.
    Internal,
    /// A self-signed root that came with the chain: consistent, but trusted by nobody yet.
    SuppliedRoot,
}

impl ChainTrust {
    pub fn as_str(self) -> &'static str {
        match self {
            ChainTrust::System => "system",
            ChainTrust::Internal => "internal",
            ChainTrust::SuppliedRoot => "supplied_root",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("no PEM certificate found")]
    Empty,
    #[error("at most {MAX_CHAIN} certificates per import")]
    TooLong,
    #[error("certificate {index} does not parse: {reason}")]
    Parse { index: usize, reason: String },
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the certificate chain does not verify: {0}")]
    Invalid(String),
}

/// An accepted import: the leaf's facts, the chain as given (PEM), where it ends.
#[derive(Debug, Clone)]
pub struct CheckedChain {
    pub leaf: CertInfo,
    pub leaf_pem: String,
    pub chain_pem: String,
    pub trust: ChainTrust,
    /// Subject of the trust anchor the chain ends in.
    pub anchor: String,
}

/// Every certificate in a PEM text, in order.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, ChainError> {
    let mut out = Vec::new();
    for (index, item) in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).enumerate() {
        let item = item.map_err(|e| ChainError::Parse {
            index,
            reason: e.to_string(),
        })?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
        if out.len() > MAX_CHAIN {
            return Err(ChainError::TooLong);
        }
    }
    if out.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(out)
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// The roots of [`SYSTEM_ROOTS`], DER (empty when the bundle is absent).
pub fn system_roots() -> Vec<Vec<u8>> {
    std::fs::read_to_string(SYSTEM_ROOTS)
        .ok()
        .and_then(|pem| parse_pem_certs(&pem).ok())
        .unwrap_or_default()
}

/// Checks `pem` (leaf first, then its chain) at `now` against `system` and `internal` roots
/// (DER) and any self-signed root inside `pem`.
pub fn check_import(
    pem: &str,
    system: &[Vec<u8>],
    internal: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<CheckedChain, ChainError> {
    let ders = parse_pem_certs(pem)?;
    let infos = ders
        .iter()
        .enumerate()
        .map(|(index, d)| {
            cert_info(d).map_err(|e| ChainError::Parse {
                index,
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = &infos[0];
    if leaf.not_after <= now {
        return Err(ChainError::Expired);
    }
    if leaf.not_before > now {
        return Err(ChainError::NotYetValid);
    }
    let leaf_der = CertificateDer::from(ders[0].as_slice());
    let ee = EndEntityCert::try_from(&leaf_der).map_err(|e| ChainError::Invalid(format!("{e:?}")))?;
    let intermediates: Vec<CertificateDer<'_>> = ders[1..].iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let supplied_roots: Vec<&Vec<u8>> = ders[1..]
        .iter()
        .zip(&infos[1..])
        .filter(|(_, i)| i.subject == i.issuer)
        .map(|(d, _)| d)
        .collect();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.unix_timestamp().max(0) as u64));
    let attempt = |roots: &[&Vec<u8>]| -> Result<String, String> {
        let certs: Vec<CertificateDer<'_>> = roots.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
        let anchors: Vec<TrustAnchor<'_>> = certs.iter().filter_map(|c| anchor_from_trusted_cert(c).ok()).collect();
        if anchors.is_empty() {
            return Err("no trust anchor".into());
        }
        let mut last = String::new();
        for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
            match ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                time,
                usage,
                None,
                None,
            ) {
                Ok(path) => {
                    let anchor_subject = path.anchor().subject.as_ref().to_vec();
                    // The anchor's subject, readable: find the root whose DER subject matches.
                    let name = roots
                        .iter()
                        .filter_map(|d| {
                            use x509_parser::prelude::*;
                            let (_, c) = X509Certificate::from_der(d).ok()?;
                            // webpki keeps the Name without its outer SEQUENCE header.
                            let raw = c.subject().as_raw();
                            (raw.ends_with(&anchor_subject) && raw.len() - anchor_subject.len() <= 4)
                                .then(|| c.subject().to_string())
                        })
                        .next()
                        .unwrap_or_default();
                    return Ok(name);
                }
                Err(e) => last = format!("{e:?}"),
            }
        }
        Err(last)
    };
    let system_refs: Vec<&Vec<u8>> = system.iter().collect();
    let internal_refs: Vec<&Vec<u8>> = internal.iter().collect();
    let mut reasons = Vec::new();
    for (trust, roots) in [
        (ChainTrust::Internal, &internal_refs),
        (ChainTrust::System, &system_refs),
        (ChainTrust::SuppliedRoot, &supplied_roots),
    ] {
        match attempt(roots) {
            Ok(anchor) => {
                return Ok(CheckedChain {
                    leaf: leaf.clone(),
                    leaf_pem: to_pem(&ders[0]),
                    chain_pem: ders[1..].iter().map(|d| to_pem(d)).collect(),
                    trust,
                    anchor,
                });
            }
            Err(e) => reasons.push(format!("{}: {e}", trust.as_str())),
        }
    }
    Err(ChainError::Invalid(reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use time::Duration;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    struct Pki {
        root_pem: String,
        inter_pem: String,
        leaf_pem: String,
    }

    fn pki(leaf_days: i64) -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::new(vec![]).unwrap();
        root.distinguished_name
            .push(rcgen::DnType::CommonName, "Third Party Root");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, root_key);
        let inter_key = KeyPair::generate().unwrap();
        let mut inter = CertificateParams::new(vec![]).unwrap();
        inter
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Third Party Issuing CA");
        inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let inter_cert = inter.signed_by(&inter_key, &root_issuer).unwrap();
        let inter_issuer = Issuer::new(inter, inter_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["shop.example.com".to_string()]).unwrap();
        leaf.not_before = now() - Duration::days(1);
        leaf.not_after = now() + Duration::days(leaf_days);
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &inter_issuer).unwrap();
        Pki {
            root_pem: root_cert.pem(),
            inter_pem: inter_cert.pem(),
            leaf_pem: leaf_cert.pem(),
        }
    }

    #[test]
    fn spec_13_3_2_import_checks_the_whole_chain() {
        let p = pki(30);
        // Complete chain with its root: accepted, marked as ending in a supplied root.
        let full = format!("{}{}{}", p.leaf_pem, p.inter_pem, p.root_pem);
        let ok = check_import(&full, &[], &[], now()).unwrap();
        assert_eq!(ok.trust, ChainTrust::SuppliedRoot);
        assert!(ok.anchor.contains("Third Party Root"), "{}", ok.anchor);
        assert_eq!(ok.leaf.names, vec!["shop.example.com".to_string()]);
        assert_eq!(parse_pem_certs(&ok.chain_pem).unwrap().len(), 2);
        // The root known to the system: trusted as such, even without it in the chain.
        let root_der = parse_pem_certs(&p.root_pem).unwrap();
        let sys = check_import(&format!("{}{}", p.leaf_pem, p.inter_pem), &root_der, &[], now()).unwrap();
        assert_eq!(sys.trust, ChainTrust::System);
        // Missing intermediate: refused.
        let e = check_import(&format!("{}{}", p.leaf_pem, p.root_pem), &[], &[], now()).unwrap_err();
        assert!(matches!(e, ChainError::Invalid(_)), "{e:?}");
        // A leaf alone: no anchor.
        assert!(matches!(
            check_import(&p.leaf_pem, &[], &[], now()).unwrap_err(),
            ChainError::Invalid(_)
        ));
        // An intermediate of another PKI: refused.
        let other = pki(30);
        let e = check_import(
            &format!("{}{}{}", p.leaf_pem, other.inter_pem, other.root_pem),
            &[],
            &[],
            now(),
        )
        .unwrap_err();
        assert!(matches!(e, ChainError::Invalid(_)), "{e:?}");
    }

    #[test]
    fn spec_13_3_2_import_refuses_expired_and_garbage() {
        let p = pki(1);
        let full = format!("{}{}{}", p.leaf_pem, p.inter_pem, p.root_pem);
        assert_eq!(
            check_import(&full, &[], &[], now() + Duration::days(2)).unwrap_err(),
            ChainError::Expired
        );
        assert_eq!(
            check_import("nothing here", &[], &[], now()).unwrap_err(),
            ChainError::Empty
        );
        let mut tampered = parse_pem_certs(&p.leaf_pem).unwrap().remove(0);
        let n = tampered.len() - 5;
        tampered[n] ^= 1;
        let e = check_import(
            &format!("{}{}{}", to_pem(&tampered), p.inter_pem, p.root_pem),
            &[],
            &[],
            now(),
        );
        assert!(e.is_err(), "a flipped signature byte must not verify");
    }
}
