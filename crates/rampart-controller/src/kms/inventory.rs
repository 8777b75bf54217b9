//! The certificate inventory's rows, the revocation lists' revision, and the key and
//! certificate side of deleting projects and removing nodes: what runs inside another
//! operation's connection or transaction.

use rampart_common::Error;
use rampart_common::time::to_ms;
use rampart_db::{Conn, kms as db, meta};
use rampart_kms::CertificateAuthority;
use rampart_kms::ca::{CaRole, RevocationReason, cert_info};
use time::OffsetDateTime;
use uuid::Uuid;

/// In the project's delete transaction: refused while it has keys that are not destroyed
/// (schedule their deletion first); destroyed keys are removed; its certificates are revoked
/// and detached.
pub async fn before_project_delete(conn: &mut Conn, project: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    let live = db::count_live_keys(conn, project).await?;
    if live > 0 {
        return Err(Error::coded(
            http::StatusCode::CONFLICT,
            "project_has_keys",
            format!("the project still has {live} key(s) that are not destroyed; schedule their deletion first"),
        ));
    }
    db::delete_project_keys(conn, project).await?;
    if db::detach_project_certificates(conn, project, now).await? > 0 {
        bump_crl_number(conn).await?;
    }
    Ok(())
}

/// A certificate the controller has in hand, for the inventory.
pub struct NewCert<'a> {
    pub kind: &'a str,
    pub issuer_ca: Option<CaRole>,
    pub project: Option<Uuid>,
    pub node: Option<Uuid>,
    pub pem: &'a str,
    pub der: &'a [u8],
    pub created_by: Option<String>,
}

/// The inventory row of a certificate.
pub fn cert_row(c: NewCert<'_>, now: OffsetDateTime) -> Result<db::CertRow, Error> {
    let info = cert_info(c.der).map_err(|e| Error::internal("reading a certificate", e))?;
    Ok(db::CertRow {
        id: Uuid::new_v4().to_string(),
        kind: c.kind.into(),
        issuer_ca: c.issuer_ca.map(|r| r.as_str().to_string()),
        project_id: c.project.map(|p| p.to_string()),
        node_id: c.node.map(|n| n.to_string()),
        serial: info.serial,
        sha256: info.sha256,
        subject: info.subject,
        issuer: info.issuer,
        names: serde_json::to_string(&info.names).unwrap_or_else(|_| "[]".into()),
        not_before: to_ms(info.not_before),
        not_after: to_ms(info.not_after),
        pem: c.pem.to_string(),
        chain_pem: String::new(),
        chain_trust: None,
        revoked_at: None,
        revocation_reason: None,
        expiry_alarm_at: None,
        created_by: c.created_by,
        created_at: to_ms(now),
    })
}

/// Records a CA certificate if it is new: an internal root (`project` none) or a project's
/// issuing CA (issued by the tenant root, revoked with the project).
pub async fn record_ca(
    conn: &mut Conn,
    ca: &CertificateAuthority,
    project: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let row = cert_row(
        NewCert {
            kind: "ca",
            issuer_ca: Some(ca.role()),
            project,
            node: None,
            pem: ca.cert_pem(),
            der: ca.cert_der(),
            created_by: None,
        },
        now,
    )?;
    db::record_certificate(conn, &row).await?;
    Ok(())
}

/// Records an agent's certificate (at join and at renewal).
pub async fn record_agent_certificate(
    conn: &mut Conn,
    node: Uuid,
    pem: &str,
    der: &[u8],
    now: OffsetDateTime,
) -> Result<(), Error> {
    let row = cert_row(
        NewCert {
            kind: "agent",
            issuer_ca: Some(CaRole::Infrastructure),
            project: None,
            node: Some(node),
            pem,
            der,
            created_by: None,
        },
        now,
    )?;
    db::record_certificate(conn, &row).await?;
    Ok(())
}

/// Revokes a removed node's certificates (they are refused already; this puts them in the CRL).
pub async fn node_removed(conn: &mut Conn, node: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    if db::revoke_node_certificates(conn, node, now).await? > 0 {
        bump_crl_number(conn).await?;
    }
    Ok(())
}

/// Counts changes of the revocation lists (in `meta`), so every controller knows when its
/// cached CRL is stale.
pub const CRL_REVISION: &str = "crl_revision";

/// Records that a revocation list changed: the next CRL request makes a new CRL.
pub async fn bump_crl_number(conn: &mut Conn) -> Result<i64, Error> {
    let n = crl_revision(conn).await? + 1;
    meta::set(conn, CRL_REVISION, &n.to_string()).await?;
    Ok(n)
}

/// Revocation reasons (RFC 5280 §5.3.1) by their API names.
pub const REVOCATION_REASONS: &[&str] = &[
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
];

pub fn revocation_reason(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "key_compromise" => RevocationReason::KeyCompromise,
        "ca_compromise" => RevocationReason::CaCompromise,
        "affiliation_changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation_of_operation" => RevocationReason::CessationOfOperation,
        "privilege_withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// The current revision of the revocation lists (0 before the first revocation).
pub async fn crl_revision(conn: &mut Conn) -> Result<i64, Error> {
    Ok(meta::get(conn, CRL_REVISION)
        .await?
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_revocation_reason_the_api_names_maps_and_nothing_else_does() {
        for name in REVOCATION_REASONS {
            assert!(revocation_reason(name).is_some(), "{name}");
        }
        assert!(matches!(
            revocation_reason("key_compromise"),
            Some(RevocationReason::KeyCompromise)
        ));
        for bad in ["", "keyCompromise", "remove_from_crl", "aa_compromise"] {
            assert!(revocation_reason(bad).is_none(), "{bad}");
        }
    }
}
