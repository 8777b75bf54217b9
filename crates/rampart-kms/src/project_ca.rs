//! Each project's issuing CA (13.3-2). The tenant root signs one intermediate per project,
//! made at the project's first certificate; the intermediate signs the project's leaves.
//! It carries a **critical** RFC 5280 NameConstraints extension: the permitted DNS subtrees
//! are the project's zones ([`TenantNamePolicy::zones`]) and every IPv4 and IPv6 address is
//! excluded, so a validator refuses any leaf under it naming another project, the world or
//! an address, even one the policy check at issue time let through by mistake. Its
//! pathLenConstraint is 0 and its key usages are keyCertSign and cRLSign only.
//!
//! The key is kept like the tenant root's: in the HSM (label `rampart:project-ca:<id>`,
//! marker `tls/project-ca/<id>-key.hsm`) when the root's key is there, otherwise in
//! `tls/project-ca/<id>-key.pem` (0600). The certificate is `project-ca/<id>.pem`. It is
//! signed again (same key) when the project's zones change or when it would expire before
//! the longest leaf could.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_common::fsutil;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints, PublicKeyData,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::ca::{CaError, CaKeyMode, CaRole, CertificateAuthority, io, random_serial};
use crate::hsm_signer::{CaKey, HsmSigningKey};
use crate::pkcs11::Pkcs11Backend;

pub const PROJECT_CA_LABEL_PREFIX: &str = "rampart:project-ca:";
/// The longest lifetime of a tenant leaf (`days` of an issue): a project CA expiring sooner
/// than that is signed again.
pub const LONGEST_LEAF_DAYS: i64 = 397;

/// Where a project CA's certificate and key are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectCaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub marker: PathBuf,
    pub label: String,
}

impl ProjectCaPaths {
    pub fn new(data_dir: &Path, project: Uuid) -> ProjectCaPaths {
        let keys = data_dir.join("tls").join("project-ca");
        ProjectCaPaths {
            cert: data_dir.join("project-ca").join(format!("{project}.pem")),
            key: keys.join(format!("{project}-key.pem")),
            marker: keys.join(format!("{project}-key.hsm")),
            label: format!("{PROJECT_CA_LABEL_PREFIX}{project}"),
        }
    }
}

/// The name constraints of a project CA: the zones permitted, every address excluded.
pub fn project_name_constraints(zones: &[String]) -> NameConstraints {
    NameConstraints {
        permitted_subtrees: zones.iter().map(|z| GeneralSubtree::DnsName(z.clone())).collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    }
}

/// The certificate parameters of `project`'s issuing CA for `zones`, valid until `not_after`.
pub fn project_ca_params(
    project: Uuid,
    zones: &[String],
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Rampart");
    dn.push(DnType::CommonName, format!("Rampart project CA {project}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(project_name_constraints(zones));
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::minutes(5);
    params.not_after = not_after;
    params
}

/// What decides whether a project CA certificate can be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectCaFacts {
    /// The raw subject of its issuer.
    pub issuer: Vec<u8>,
    /// Its public key (the uncompressed point for P-256).
    pub public_key: Vec<u8>,
    /// The permitted DNS subtrees of a critical NameConstraints extension (empty without one).
    pub permitted_dns: Vec<String>,
    pub not_after: OffsetDateTime,
}

pub fn project_ca_facts(der: &[u8]) -> Result<ProjectCaFacts, CaError> {
    use x509_parser::prelude::*;
    let bad = |e: &dyn std::fmt::Display| CaError::BadCertificate(e.to_string());
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(&e))?;
    let mut permitted_dns = Vec::new();
    if let Some(nc) = cert.name_constraints().map_err(|e| bad(&e))?
        && nc.critical
    {
        for s in nc.value.permitted_subtrees.iter().flatten() {
            if let GeneralName::DNSName(d) = s.base {
                permitted_dns.push(d.to_string());
            }
        }
    }
    Ok(ProjectCaFacts {
        issuer: cert.issuer().as_raw().to_vec(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        permitted_dns,
        not_after: OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).map_err(|e| bad(&e))?,
    })
}

fn subject_and_not_after(der: &[u8]) -> Result<(Vec<u8>, OffsetDateTime), CaError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    Ok((cert.subject().as_raw().to_vec(), not_after))
}

/// Whether a project CA must be signed again: another issuer, other zones, or an expiry that
/// a leaf would outlive while the root could still sign a longer one.
pub fn needs_new_certificate(
    facts: &ProjectCaFacts,
    root_subject: &[u8],
    root_not_after: OffsetDateTime,
    zones: &[String],
    now: OffsetDateTime,
) -> bool {
    facts.issuer != root_subject
        || facts.permitted_dns != zones
        || (facts.not_after < now + Duration::days(LONGEST_LEAF_DAYS) && root_not_after > facts.not_after)
}

impl CertificateAuthority {
    /// The issuing CA of `project` under this tenant root, name-constrained to `zones`:
    /// loaded from `data_dir`, made on first use, signed again when it no longer fits
    /// ([`needs_new_certificate`]). The bool says whether its certificate is new. A new key
    /// goes where the root's key is (the HSM when `hsm` is given and the root is there).
    pub fn load_or_create_project_ca(
        &self,
        data_dir: &Path,
        project: Uuid,
        zones: &[String],
        days: u32,
        now: OffsetDateTime,
        hsm: Option<&Arc<Pkcs11Backend>>,
    ) -> Result<(CertificateAuthority, bool), CaError> {
        if self.role != CaRole::Tenant {
            return Err(CaError::BadCertificate("only the tenant CA signs project CAs".into()));
        }
        if zones.is_empty() {
            return Err(CaError::BadName("a project CA needs at least one zone".into()));
        }
        let p = ProjectCaPaths::new(data_dir, project);
        let key_dir = p.key.parent().expect("key dir");
        fsutil::ensure_private_dir(&data_dir.join("tls")).map_err(io("create", key_dir))?;
        fsutil::ensure_private_dir(key_dir).map_err(io("create", key_dir))?;
        let cert_dir = p.cert.parent().expect("cert dir");
        std::fs::create_dir_all(cert_dir).map_err(io("create", cert_dir))?;

        let in_hsm = p.marker.exists() || (!p.key.exists() && self.mode == CaKeyMode::Hsm);
        let (key, mode) = if in_hsm {
            let Some(backend) = hsm else {
                return Err(CaError::HsmRequired { marker: p.marker });
            };
            if !p.marker.exists() {
                // Marker first, as for the roots: the label is fixed, so a crash before the
                // certificate is finished by the next call, never a second key.
                fsutil::write_secret(&p.marker, format!("{}\n", p.label).as_bytes()).map_err(io("write", &p.marker))?;
            }
            let key = HsmSigningKey::load_or_generate(backend.clone(), &p.label)?;
            (CaKey::Hsm(key), CaKeyMode::Hsm)
        } else if p.key.exists() {
            let pem = std::fs::read_to_string(&p.key).map_err(io("read", &p.key))?;
            (CaKey::File(Box::new(KeyPair::from_pem(&pem)?)), CaKeyMode::File)
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            fsutil::write_secret(&p.key, key.serialize_pem().as_bytes()).map_err(io("write", &p.key))?;
            (CaKey::File(Box::new(key)), CaKeyMode::File)
        };

        let (root_subject, root_not_after) = subject_and_not_after(&self.cert_der)?;
        if p.cert.exists() {
            let pem = std::fs::read_to_string(&p.cert).map_err(io("read", &p.cert))?;
            let facts = project_ca_facts(&crate::ca::pem_to_der(&pem)?)?;
            if facts.public_key != key.der_bytes() {
                return Err(CaError::KeyMismatch {
                    label: p.label,
                    cert: p.cert,
                });
            }
            if !needs_new_certificate(&facts, &root_subject, root_not_after, zones, now) {
                let ca = Self::from_cert_and_key(CaRole::Tenant, &pem, key, mode)?;
                return Ok((ca, false));
            }
        }
        let not_after = (now + Duration::days(days as i64)).min(root_not_after);
        let params = project_ca_params(project, zones, now, not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        fsutil::write_atomic(&p.cert, cert.pem().as_bytes(), 0o644).map_err(io("write", &p.cert))?;
        tracing::info!(%project, key = mode.as_str(), zones = ?zones, not_after = %not_after, "signed a project issuing CA");
        Ok((
            CertificateAuthority {
                role: CaRole::Tenant,
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
                issuer: Issuer::new(params, key),
                mode,
            },
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaError, SignedCertificate, TenantNamePolicy, TenantUsage, cert_info};
    use rampart_common::fsutil;
    use rustls_pki_types::{CertificateDer, UnixTime};

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn tenant_root(dir: &Path) -> CertificateAuthority {
        CertificateAuthority::load_or_create_in(dir, CaRole::Tenant, 3650, now(), None)
            .unwrap()
            .0
    }

    fn csr(name: &str) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    /// Path validation by rustls-webpki for server authentication: `leaf` under `intermediate`
    /// under the trust anchor `root`.
    fn validate(root: &[u8], intermediate: &[u8], leaf: &[u8]) -> Result<(), webpki::Error> {
        let root = CertificateDer::from(root);
        let anchors = [webpki::anchor_from_trusted_cert(&root).unwrap()];
        let leaf = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[CertificateDer::from(intermediate)],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    /// `(critical, permitted DNS, excluded IP subtrees as address/mask bytes, path length,
    /// key cert sign, CRL sign, digital signature)` of a CA certificate, read with x509-parser.
    type Constraints = (bool, Vec<String>, Vec<Vec<u8>>, Option<u32>, bool, bool, bool);

    fn constraints(der: &[u8]) -> Constraints {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let nc = cert.name_constraints().unwrap().expect("a NameConstraints extension");
        let permitted = nc
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .map(|s| match s.base {
                GeneralName::DNSName(d) => d.to_string(),
                ref other => panic!("permitted subtree that is not a DNS name: {other:?}"),
            })
            .collect();
        let excluded = nc
            .value
            .excluded_subtrees
            .iter()
            .flatten()
            .map(|s| match s.base {
                GeneralName::IPAddress(ip) => ip.to_vec(),
                ref other => panic!("excluded subtree that is not an address range: {other:?}"),
            })
            .collect();
        let bc = cert.basic_constraints().unwrap().expect("basic constraints").value;
        assert!(bc.ca);
        let ku = cert.key_usage().unwrap().expect("key usage").value;
        (
            nc.critical,
            permitted,
            excluded,
            bc.path_len_constraint,
            ku.key_cert_sign(),
            ku.crl_sign(),
            ku.digital_signature(),
        )
    }

    #[test]
    fn spec_13_3_2_each_project_has_its_own_issuing_ca_with_name_constraints() {
        let dir = tempfile::tempdir().unwrap();
        let root = tenant_root(dir.path());
        let (a_id, b_id) = (Uuid::new_v4(), Uuid::new_v4());
        let a = TenantNamePolicy::for_project(a_id, "proj-a", "default", "rampart.internal");
        let b = TenantNamePolicy::for_project(b_id, "proj-b", "default", "rampart.internal");
        let (ca_a, created) = root
            .load_or_create_project_ca(dir.path(), a_id, a.zones(), 3650, now(), None)
            .unwrap();
        assert!(created);
        let (ca_b, _) = root
            .load_or_create_project_ca(dir.path(), b_id, b.zones(), 3650, now(), None)
            .unwrap();
        let expected_a = vec![
            format!("{a_id}.rampart.internal"),
            "proj-a.default.rampart.internal".to_string(),
        ];
        let all_v4 = vec![0u8; 8];
        let all_v6 = vec![0u8; 32];
        assert_eq!(
            constraints(ca_a.cert_der()),
            (
                true,
                expected_a,
                vec![all_v4.clone(), all_v6.clone()],
                Some(0),
                true,
                true,
                false
            )
        );
        assert_eq!(
            constraints(ca_b.cert_der()).1,
            vec![
                format!("{b_id}.rampart.internal"),
                "proj-b.default.rampart.internal".to_string()
            ]
        );
        // Two projects, two issuers, both under the tenant root.
        let (info_a, info_b, info_root) = (
            cert_info(ca_a.cert_der()).unwrap(),
            cert_info(ca_b.cert_der()).unwrap(),
            cert_info(root.cert_der()).unwrap(),
        );
        assert_ne!(info_a.subject, info_b.subject);
        assert_ne!(ca_a.public_key_of_cert().unwrap(), ca_b.public_key_of_cert().unwrap());
        assert_eq!(
            (info_a.issuer.as_str(), info_b.issuer.as_str()),
            (info_root.subject.as_str(), info_root.subject.as_str())
        );
        assert!(info_a.subject.contains(&a_id.to_string()), "{}", info_a.subject);
        // The root allows exactly one CA under it.
        use x509_parser::prelude::*;
        let (_, parsed) = X509Certificate::from_der(root.cert_der()).unwrap();
        assert_eq!(
            parsed.basic_constraints().unwrap().unwrap().value.path_len_constraint,
            Some(1)
        );
        // Kept like the root's key: a 0600 file here, the certificate public.
        let p = ProjectCaPaths::new(dir.path(), a_id);
        assert_eq!(fsutil::mode_of(&p.key).unwrap(), 0o600);
        assert_eq!(fsutil::mode_of(&p.cert).unwrap(), 0o644);
        // Loaded again: the same CA; other zones (a renamed project): same key, new certificate.
        let (again, created) = root
            .load_or_create_project_ca(dir.path(), a_id, a.zones(), 3650, now(), None)
            .unwrap();
        assert!(!created);
        assert_eq!(again.sha256(), ca_a.sha256());
        let renamed = TenantNamePolicy::for_project(a_id, "proj-z", "default", "rampart.internal");
        let (moved, created) = root
            .load_or_create_project_ca(dir.path(), a_id, renamed.zones(), 3650, now(), None)
            .unwrap();
        assert!(created);
        assert_ne!(moved.sha256(), ca_a.sha256());
        assert_eq!(moved.public_key_of_cert().unwrap(), ca_a.public_key_of_cert().unwrap());
        assert!(
            constraints(moved.cert_der())
                .1
                .contains(&"proj-z.default.rampart.internal".to_string())
        );
        // Only the tenant root signs project CAs.
        let (infra, _) = CertificateAuthority::load_or_create(dir.path(), 3650, now()).unwrap();
        assert!(matches!(
            infra.load_or_create_project_ca(dir.path(), a_id, a.zones(), 3650, now(), None),
            Err(CaError::BadCertificate(_))
        ));
    }

    #[test]
    fn spec_13_3_2_a_leaf_outside_the_constraints_fails_path_validation() {
        let dir = tempfile::tempdir().unwrap();
        let root = tenant_root(dir.path());
        let a_id = Uuid::new_v4();
        let a = TenantNamePolicy::for_project(a_id, "proj-a", "default", "rampart.internal");
        let (ca_a, _) = root
            .load_or_create_project_ca(dir.path(), a_id, a.zones(), 3650, now(), None)
            .unwrap();
        // What the platform issues for A validates against root + A's CA, and not without it.
        let own = vec![
            "api.proj-a.default.rampart.internal".to_string(),
            format!("db.{a_id}.rampart.internal"),
        ];
        let SignedCertificate { cert_der: leaf, .. } = ca_a
            .sign_tenant_csr(&csr(&own[0]), &own, &a, &[TenantUsage::ServerAuth], 90, now())
            .unwrap();
        validate(root.cert_der(), ca_a.cert_der(), &leaf).expect("A's leaf validates");
        let wild = vec!["*.web.proj-a.default.rampart.internal".to_string()];
        let SignedCertificate {
            cert_der: wild_leaf, ..
        } = ca_a
            .sign_tenant_csr(&csr(&wild[0]), &wild, &a, &[TenantUsage::ServerAuth], 90, now())
            .unwrap();
        validate(root.cert_der(), ca_a.cert_der(), &wild_leaf).expect("A's wildcard leaf validates");
        let other = tenant_root(tempfile::tempdir().unwrap().path());
        assert!(validate(other.cert_der(), ca_a.cert_der(), &leaf).is_err());

        // A's key is not at hand (in production it is in the HSM), so a test CA under the
        // same root carries the same extension, made by the same code, and signs what the
        // policy would never let through. The validator refuses each of them by the names.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = project_ca_params(a_id, a.zones(), now(), now() + Duration::days(30));
        let forger_cert = params.signed_by(&key, &root.issuer).unwrap();
        let extension = |der: &[u8]| {
            use x509_parser::prelude::*;
            let (_, c) = X509Certificate::from_der(der).unwrap();
            let e = c
                .extensions()
                .iter()
                .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS)
                .expect("name constraints");
            (e.critical, e.value.to_vec())
        };
        assert_eq!(
            extension(forger_cert.der()),
            extension(ca_a.cert_der()),
            "the same extension, byte for byte"
        );
        let forger = Issuer::new(params, key);
        let forge = |san: rcgen::SanType| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![san];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            p.not_before = now() - Duration::minutes(5);
            p.not_after = now() + Duration::days(30);
            p.signed_by(&key, &forger).unwrap().der().to_vec()
        };
        let dns = |n: &str| rcgen::SanType::DnsName(n.to_string().try_into().unwrap());
        // The control: inside A's zones the forger's leaf validates, so a refusal below is the
        // names' doing and nothing else.
        validate(
            root.cert_der(),
            forger_cert.der(),
            &forge(dns("x.proj-a.default.rampart.internal")),
        )
        .expect("a name inside the constraints validates");
        for (what, san) in [
            ("another project", dns("billing.proj-b.default.rampart.internal")),
            ("a look-alike suffix", dns("xproj-a.default.rampart.internal")),
            ("a parent zone", dns("rampart.internal")),
            ("the world", dns("www.example.com")),
            ("localhost", dns("localhost")),
            (
                "an IPv4 address",
                rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ),
            ("an IPv6 address", rcgen::SanType::IpAddress("::1".parse().unwrap())),
        ] {
            let e = validate(root.cert_der(), forger_cert.der(), &forge(san)).unwrap_err();
            assert!(matches!(e, webpki::Error::NameConstraintViolation), "{what}: {e:?}");
        }
    }

    #[test]
    fn spec_13_3_2_an_old_tenant_root_with_path_length_0_is_signed_again_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        // A tenant root as earlier versions made it: pathLenConstraint 0.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Rampart");
        params
            .distinguished_name
            .push(DnType::CommonName, "Rampart tenant CA 0123abcd");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now() - Duration::days(10);
        params.not_after = now() + Duration::days(1000);
        let old = params.self_signed(&key).unwrap();
        fsutil::ensure_private_dir(&dir.path().join("tls")).unwrap();
        fsutil::write_secret(&CaRole::Tenant.key_path(dir.path()), key.serialize_pem().as_bytes()).unwrap();
        fsutil::write_atomic(&CaRole::Tenant.cert_path(dir.path()), old.pem().as_bytes(), 0o644).unwrap();
        let old_leaf = {
            let issuer = Issuer::new(params, KeyPair::from_pem(&key.serialize_pem()).unwrap());
            let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::new(vec!["old.example.test".to_string()]).unwrap();
            p.not_before = now() - Duration::days(1);
            p.not_after = now() + Duration::days(30);
            p.use_authority_key_identifier_extension = true;
            p.signed_by(&leaf_key, &issuer).unwrap().der().to_vec()
        };
        let root = tenant_root(dir.path());
        let (old_info, new_info) = (cert_info(old.der()).unwrap(), cert_info(root.cert_der()).unwrap());
        assert_eq!(new_info.subject, old_info.subject);
        assert_eq!(
            (new_info.not_before, new_info.not_after),
            (old_info.not_before, old_info.not_after)
        );
        assert_ne!(new_info.sha256, old_info.sha256);
        assert_eq!(
            std::fs::read_to_string(CaRole::Tenant.cert_path(dir.path())).unwrap(),
            root.cert_pem(),
            "written over the old file"
        );
        // What the old root signed still validates under the new certificate, and a project CA
        // is now accepted under it.
        let anchor = CertificateDer::from(root.cert_der());
        let leaf = CertificateDer::from(old_leaf.as_slice());
        webpki::EndEntityCert::try_from(&leaf)
            .unwrap()
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[webpki::anchor_from_trusted_cert(&anchor).unwrap()],
                &[],
                UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .expect("an old leaf chains to the re-signed root");
        let id = Uuid::new_v4();
        let policy = TenantNamePolicy::for_project(id, "p", "d", "rampart.internal");
        let (ca, _) = root
            .load_or_create_project_ca(dir.path(), id, policy.zones(), 3650, now(), None)
            .unwrap();
        let name = vec!["a.p.d.rampart.internal".to_string()];
        let signed = ca
            .sign_tenant_csr(&csr(&name[0]), &name, &policy, &[TenantUsage::ServerAuth], 30, now())
            .unwrap();
        validate(root.cert_der(), ca.cert_der(), &signed.cert_der).expect("a project CA under the re-signed root");
    }

    #[test]
    fn spec_13_3_2_project_ca_key_in_the_hsm_writes_no_key_file() {
        let Some(b) = crate::testutil::backend() else { return };
        let dir = tempfile::tempdir().unwrap();
        let (root, _) =
            CertificateAuthority::load_or_create_in(dir.path(), CaRole::Tenant, 3650, now(), Some(&b)).unwrap();
        assert_eq!(root.key_mode(), CaKeyMode::Hsm);
        let id = Uuid::new_v4();
        let policy = TenantNamePolicy::for_project(id, "p", "d", "rampart.internal");
        let (ca, _) = root
            .load_or_create_project_ca(dir.path(), id, policy.zones(), 3650, now(), Some(&b))
            .unwrap();
        assert_eq!(ca.key_mode(), CaKeyMode::Hsm);
        let p = ProjectCaPaths::new(dir.path(), id);
        assert!(!p.key.exists(), "no key file");
        assert_eq!(std::fs::read_to_string(&p.marker).unwrap().trim(), p.label);
        let key = HsmSigningKey::load(b.clone(), &p.label)
            .unwrap()
            .expect("the key is in the token");
        assert!(!key.private_key_exportable().unwrap());
        let name = vec!["a.p.d.rampart.internal".to_string()];
        let signed = ca
            .sign_tenant_csr(&csr(&name[0]), &name, &policy, &[TenantUsage::ServerAuth], 30, now())
            .unwrap();
        validate(root.cert_der(), ca.cert_der(), &signed.cert_der).expect("HSM-signed leaf validates");
        // Without the token the project CA does not load.
        assert!(matches!(
            root.load_or_create_project_ca(dir.path(), id, policy.zones(), 3650, now(), None),
            Err(CaError::HsmRequired { .. })
        ));
    }
}
