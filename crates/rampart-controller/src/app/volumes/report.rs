//! What a node reports of its storage: its pools (kept for placement and
//! `GET /v1/storage/pools`) and each volume's observed state, which moves the volume through
//! `rampart_storage::transition`: `ready` makes a new volume `available`; `wiping` makes a
//! deleting one `wiping`; `wiped` with a **verified** report for this very volume makes it
//! `deleted`, stores the report, writes the `volume.wipe` audit event and drops the volume from
//! the document (12.3.4-1/3). `wiped` without a verified report, or `error` during a wipe,
//! makes it `error` with `wipe_unverified`: never `deleted`.

use rampart_api::storage::{ObservedVolume, StorageStatus, VolumeReport};
use rampart_audit::record::{Actor, AuditResult, AuthMethod, NewRecord, Target};
use rampart_common::Error;
use rampart_db::volumes::{self as db, VolumeRow};
use rampart_storage::{Event, VolumeErrorCode, VolumeStatus};
use uuid::Uuid;

use crate::state::AppState;

/// What a report does to a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Move to this status (with an error code for `error`).
    To(VolumeStatus, Option<VolumeErrorCode>),
    /// The verified wipe is in: `deleted`.
    Wiped,
    /// Only the progress moved.
    Progress,
    None,
}

/// The pure decision for one volume: its status now, whether that is an `error` of a failed
/// wipe (`wipe_retry`: only such a volume may still be finished by a verified wipe), whether
/// its type is multi-attach, and what its node observed.
pub fn decide(from: VolumeStatus, wipe_retry: bool, multi: bool, r: &VolumeReport) -> Change {
    let step = |s: VolumeStatus, e: Event| rampart_storage::transition(s, e, multi).ok();
    let wipe_failed = |s: VolumeStatus| match step(s, Event::Failed(VolumeErrorCode::WipeUnverified)) {
        Some((to, code)) if s != VolumeStatus::Error => Change::To(to, code),
        _ => Change::None,
    };
    let in_wipe = matches!(from, VolumeStatus::Deleting | VolumeStatus::Wiping);
    let wipe_failed_before = from == VolumeStatus::Error && wipe_retry;
    match r.state {
        ObservedVolume::Creating => {
            if from == VolumeStatus::Creating {
                Change::Progress
            } else {
                Change::None
            }
        }
        ObservedVolume::Ready => match step(from, Event::Created) {
            Some((to, code)) if from == VolumeStatus::Creating => Change::To(to, code),
            _ => Change::None,
        },
        ObservedVolume::Wiping => match from {
            VolumeStatus::Deleting => match step(from, Event::WipeStarted) {
                Some((to, code)) => Change::To(to, code),
                None => Change::None,
            },
            VolumeStatus::Wiping => Change::Progress,
            _ => Change::None,
        },
        ObservedVolume::Wiped => {
            let verified = r.wipe_report.as_ref().is_some_and(|w| w.verified && w.volume == r.id);
            if !verified {
                return if in_wipe { wipe_failed(from) } else { Change::None };
            }
            // Walk the legal path to `deleted`: an earlier unverified wipe is retried, a
            // deletion not yet seen wiping starts it; only `wiping` → `deleted` ends it.
            let mut s = from;
            if from == VolumeStatus::Error && !wipe_retry {
                return Change::None;
            }
            if wipe_failed_before {
                match step(s, Event::Retry) {
                    Some((to, _)) => s = to,
                    None => return Change::None,
                }
            }
            if s == VolumeStatus::Deleting {
                match step(s, Event::WipeStarted) {
                    Some((to, _)) => s = to,
                    None => return Change::None,
                }
            }
            match step(s, Event::WipeVerified) {
                Some((VolumeStatus::Deleted, _)) => Change::Wiped,
                _ => Change::None,
            }
        }
        ObservedVolume::Error => {
            if in_wipe {
                wipe_failed(from)
            } else {
                match step(from, Event::Failed(VolumeErrorCode::CreateFailed)) {
                    Some((to, code)) if from != VolumeStatus::Error => Change::To(to, code),
                    _ => Change::None,
                }
            }
        }
    }
}

pub(super) fn code_str(c: VolumeErrorCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "error".into())
}

/// The error a node's report puts on a volume or snapshot going to `error` with `code`: the
/// code, and the node's own words when it gave them.
pub(super) fn node_error(r: &VolumeReport, code: Option<VolumeErrorCode>) -> Option<(String, String)> {
    let message = r.error.as_ref().map(|f| format!("{}: {}", f.code, f.message));
    code.map(|c| {
        (
            code_str(c),
            message.unwrap_or_else(|| "the node reported an error".into()),
        )
    })
}

/// Whether `row` is an `error` of a failed wipe.
fn wipe_retry(row: &VolumeRow) -> bool {
    row.error_code.as_deref() == Some(code_str(VolumeErrorCode::WipeUnverified).as_str())
}

fn node_actor(node: Uuid) -> Actor {
    Actor {
        id: Some(node.to_string()),
        name: None,
        domain: None,
        auth_method: AuthMethod::Certificate,
    }
}

/// Takes in the storage section of `node`'s report. A report without one changes nothing.
pub async fn record(state: &AppState, node: Uuid, s: Option<&StorageStatus>) -> Result<(), Error> {
    let Some(s) = s else {
        return Ok(());
    };
    let now = state.now();
    let pools: Vec<(String, String, u64)> = s
        .pools
        .iter()
        .filter_map(|p| serde_json::to_string(p).ok().map(|j| (p.name.clone(), j, p.free_bytes)))
        .collect();
    // The audit events of finished wipes go first, outside the transaction (the trail may
    // share the database): a volume is never `deleted` without its wipe in the trail, and a
    // failed commit after them only leaves the node reporting again (at worst a second record).
    let mut wiped: Vec<VolumeRow> = Vec::new();
    {
        let mut conn = state.db.conn().await?;
        for r in &s.volumes {
            if let Some(row) = db::volume_by_id(&mut conn, r.id)
                .await?
                .filter(|v| v.node_id == Some(node))
                && decide(super::status_of(&row), wipe_retry(&row), row.multi_attach, r) == Change::Wiped
            {
                wiped.push(row);
            }
        }
    }
    for row in &wiped {
        let Some(report) = s
            .volumes
            .iter()
            .find(|r| r.id == row.id)
            .and_then(|r| r.wipe_report.as_ref())
        else {
            continue;
        };
        let details = serde_json::to_value(report).map_err(|e| Error::internal("encoding a wipe report", e))?;
        let rec = NewRecord::new(
            now,
            node_actor(node),
            "volume.wipe",
            Target::new("volume", Some(row.id.to_string()), Some(row.project_id.to_string())),
            AuditResult::success(200),
        )
        .detail("requested_by", row.requested_by.clone().unwrap_or_default())
        .detail("report", details);
        state.audit.append_system(rec).await?;
    }
    let mut tx = state.db.begin().await?;
    db::record_pools(&mut tx, node, &pools, now).await?;
    let mut republish = false;
    for r in &s.volumes {
        let Some(row) = db::volume_by_id(&mut tx, r.id)
            .await?
            .filter(|v| v.node_id == Some(node))
        else {
            continue;
        };
        let from = super::status_of(&row);
        match decide(from, wipe_retry(&row), row.multi_attach, r) {
            Change::None => {}
            Change::Progress => db::set_progress(&mut tx, row.id, r.progress.map(i64::from)).await?,
            Change::To(to, code) => {
                let error = node_error(r, code);
                db::set_status(
                    &mut tx,
                    row.id,
                    to.as_str(),
                    error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
                    now,
                )
                .await?;
                db::set_progress(&mut tx, row.id, r.progress.map(i64::from)).await?;
                republish |= super::desired::presence(from, row.error_code.as_deref())
                    != super::desired::presence(to, code.map(code_str).as_deref());
                tracing::info!(volume = %row.id, %node, from = %from, to = %to, "volume status from its node");
            }
            // Only when its audit record was written above.
            Change::Wiped if wiped.iter().any(|w| w.id == row.id) => {
                let report = r.wipe_report.as_ref().expect("decide checked the report");
                let json = serde_json::to_string(report).map_err(|e| Error::internal("encoding a wipe report", e))?;
                db::finish_wipe(&mut tx, row.id, &json, now).await?;
                republish = true;
                tracing::info!(volume = %row.id, %node, "volume wiped (verified) and deleted; its space is released");
            }
            Change::Wiped => {}
        }
    }
    if republish {
        crate::publish::node(&state.config, &mut tx, node).await?;
    }
    rampart_db::Db::commit(tx).await?;
    if republish {
        state.notify_node_changes();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_api::storage::{WipeMethod, WipeReport};

    fn report(state: ObservedVolume, verified: Option<bool>, id: Uuid) -> VolumeReport {
        VolumeReport {
            id,
            state,
            size_bytes: 0,
            allocated_bytes: 0,
            progress: None,
            error: None,
            wipe_report: verified.map(|v| WipeReport {
                volume: id,
                method: WipeMethod::CryptoEraseAndZero,
                verified: v,
                bytes: 1,
                started_at: time::OffsetDateTime::UNIX_EPOCH,
                finished_at: time::OffsetDateTime::UNIX_EPOCH,
                requested_by: "a@default".into(),
            }),
        }
    }

    #[test]
    fn spec_12_3_4_3_only_a_verified_wipe_of_this_volume_deletes_it() {
        use ObservedVolume as O;
        use VolumeStatus as S;
        let id = Uuid::new_v4();
        assert_eq!(
            decide(S::Creating, false, false, &report(O::Ready, None, id)),
            Change::To(S::Available, None)
        );
        assert_eq!(
            decide(S::Deleting, false, false, &report(O::Wiping, None, id)),
            Change::To(S::Wiping, None)
        );
        assert_eq!(
            decide(S::Wiping, false, false, &report(O::Wiped, Some(true), id)),
            Change::Wiped
        );
        assert_eq!(
            decide(S::Deleting, false, false, &report(O::Wiped, Some(true), id)),
            Change::Wiped
        );
        let unverified = Change::To(S::Error, Some(VolumeErrorCode::WipeUnverified));
        assert_eq!(
            decide(S::Wiping, false, false, &report(O::Wiped, Some(false), id)),
            unverified
        );
        assert_eq!(decide(S::Wiping, false, false, &report(O::Wiped, None, id)), unverified);
        assert_eq!(decide(S::Wiping, false, false, &report(O::Error, None, id)), unverified);
        // A report for another volume proves nothing about this one.
        let mut other = report(O::Wiped, Some(true), id);
        other.id = Uuid::new_v4();
        assert_eq!(decide(S::Wiping, false, false, &other), unverified);
        // A verified retry after a failed one finishes the deletion; a failed create does not
        // end that way.
        assert_eq!(
            decide(S::Error, true, false, &report(O::Wiped, Some(true), id)),
            Change::Wiped
        );
        assert_eq!(
            decide(S::Error, false, false, &report(O::Wiped, Some(true), id)),
            Change::None
        );
        // No report ever deletes a volume in service.
        for s in [S::Creating, S::Available, S::InUse] {
            assert_eq!(
                decide(s, false, false, &report(O::Wiped, Some(true), id)),
                Change::None,
                "{s}"
            );
        }
        assert_eq!(
            decide(S::Creating, false, false, &report(O::Error, None, id)),
            Change::To(S::Error, Some(VolumeErrorCode::CreateFailed))
        );
    }
}
