//! The verifier behind `POST /v1/audit/verify` and `rampart audit verify --data-dir`.
//!
//! It streams records in seq order (one page at a time from any store) against the checkpoints
//! and reports each problem by record seq and kind:
//!
//! | kind | found by |
//! |---|---|
//! | `modified` | a record whose hash is not `SHA-256(prev_hash ‖ canonical body)`; a record whose hash was recomputed (the next record's `prev_hash` no longer matches, or a checkpoint's `last_hash`/Merkle root does not); a row that no longer decodes; a seq out of order |
//! | `missing` | a gap in the seqs; records before the first kept record that no purge boundary accounts for |
//! | `truncated` | fewer records than the newest trusted checkpoint attests (`seq` = first absent seq) |
//! | `bad_signature` | a checkpoint whose Ed25519 signature does not verify or whose key is not trusted (`seq` = the checkpoint's `tree_size`, `checkpoint` = its number) |
//!
//! A checkpoint that fails its signature is ignored for every other check. What a local
//! verifier cannot see: an attacker holding the signing key, or one who deletes the newest
//! checkpoints together with the records after the previous one. The checkpoints shipped to the
//! external log manager close that gap: pass the newest one as [`VerifyOptions::trusted_head`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointKind, KeyRing};
use crate::hash::Hash;
use crate::merkle::CompactRange;
use crate::record::{AuditRecord, RowError, compute_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Modified,
    Missing,
    Truncated,
    BadSignature,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    pub seq: u64,
    pub kind: ProblemKind,
    /// The checkpoint concerned, for checkpoint problems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// What exactly did not match (never record contents).
    pub detail: String,
}

/// The body of `POST /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    /// Records examined.
    pub checked: u64,
    pub problems: Vec<Problem>,
    /// Problems found beyond [`VerifyOptions::max_problems`] and left out of the list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub problems_omitted: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints_trusted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub max_problems: usize,
    /// The newest checkpoint as received by an external witness (the log manager).
    pub trusted_head: Option<Checkpoint>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            max_problems: 1000,
            trusted_head: None,
        }
    }
}

pub struct Verifier {
    max_problems: usize,
    problems: Vec<Problem>,
    omitted: u64,
    checked: u64,
    trusted: Vec<Checkpoint>,
    /// Trusted checkpoints by the tree size they attest.
    by_size: BTreeMap<u64, Vec<usize>>,
    started: bool,
    /// Next seq expected; everything below has been seen or reported.
    expected: u64,
    /// Hash the next record must link to; `None` right after a gap.
    link: Option<Hash>,
    /// Merkle state over records 1..expected-1, when every leaf is known.
    tree: Option<CompactRange>,
    /// Highest seq already reported as modified or missing (to keep one cause, one problem).
    last_flagged: u64,
    /// Seq of the last record (or boundary) whose state a checkpoint confirmed.
    confirmed: u64,
}

impl Verifier {
    pub fn new(checkpoints: &[Checkpoint], keys: &KeyRing, opts: VerifyOptions) -> Self {
        let mut v = Verifier {
            max_problems: opts.max_problems,
            problems: Vec::new(),
            omitted: 0,
            checked: 0,
            trusted: Vec::new(),
            by_size: BTreeMap::new(),
            started: false,
            expected: 1,
            link: Some(Hash::ZERO),
            tree: Some(CompactRange::new()),
            last_flagged: 0,
            confirmed: 0,
        };
        let mut sorted: Vec<&Checkpoint> = checkpoints.iter().collect();
        sorted.sort_by_key(|c| c.body.seq);
        let mut prev: Option<&Checkpoint> = None;
        for cp in sorted {
            if let Some(p) = prev {
                if cp.body.seq == p.body.seq {
                    v.problem(
                        cp.body.tree_size,
                        ProblemKind::Modified,
                        Some(cp.body.seq),
                        "duplicate checkpoint number".into(),
                    );
                } else if cp.body.seq != p.body.seq + 1 {
                    for missing in p.body.seq + 1..cp.body.seq {
                        v.problem(
                            p.body.tree_size + 1,
                            ProblemKind::Missing,
                            Some(missing),
                            format!("checkpoint {missing} is absent"),
                        );
                    }
                } else if cp.body.prev != p.digest() {
                    v.problem(
                        p.body.tree_size,
                        ProblemKind::Modified,
                        Some(p.body.seq),
                        format!("checkpoint {} does not link to checkpoint {}", cp.body.seq, p.body.seq),
                    );
                }
            } else if cp.body.seq == 1 && cp.body.prev != Hash::ZERO {
                v.problem(
                    cp.body.tree_size,
                    ProblemKind::Modified,
                    Some(1),
                    "first checkpoint links to a predecessor".into(),
                );
            }
            prev = Some(cp);
            v.admit(cp, keys);
        }
        if let Some(head) = opts.trusted_head {
            v.admit(&head, keys);
        }
        v
    }

    fn admit(&mut self, cp: &Checkpoint, keys: &KeyRing) {
        if let Err(e) = cp.verify_signature(keys) {
            self.problem(
                cp.body.tree_size,
                ProblemKind::BadSignature,
                Some(cp.body.seq),
                e.to_string(),
            );
            return;
        }
        let consistent = cp.body.version == 1 && cp.body.tree().is_some_and(|t| t.root() == cp.body.root);
        if !consistent {
            self.problem(
                cp.body.tree_size,
                ProblemKind::BadSignature,
                Some(cp.body.seq),
                "signed checkpoint is internally inconsistent".into(),
            );
            return;
        }
        if self.trusted.iter().any(|t| t == cp) {
            return;
        }
        self.by_size
            .entry(cp.body.tree_size)
            .or_default()
            .push(self.trusted.len());
        self.trusted.push(cp.clone());
    }

    fn problem(&mut self, seq: u64, kind: ProblemKind, checkpoint: Option<u64>, detail: String) {
        if self.problems.len() >= self.max_problems {
            self.omitted += 1;
        } else {
            self.problems.push(Problem {
                seq,
                kind,
                checkpoint,
                detail,
            });
        }
    }

    fn flag(&mut self, seq: u64, kind: ProblemKind, detail: String) {
        self.problem(seq, kind, None, detail);
        self.last_flagged = self.last_flagged.max(seq);
    }

    fn missing(&mut self, from: u64, to_inclusive: u64, why: &str) {
        for s in from..=to_inclusive {
            if self.problems.len() >= self.max_problems {
                self.omitted += to_inclusive - s + 1;
                break;
            }
            self.problems.push(Problem {
                seq: s,
                kind: ProblemKind::Missing,
                checkpoint: None,
                detail: why.to_string(),
            });
        }
        self.last_flagged = self.last_flagged.max(to_inclusive);
    }

    /// The newest trusted boundary whose first kept record is at or before `seq`.
    fn start_for(&self, seq: u64) -> Option<&Checkpoint> {
        self.trusted
            .iter()
            .filter(|c| c.body.kind == CheckpointKind::Boundary && c.body.tree_size < seq)
            .max_by_key(|c| c.body.tree_size)
    }

    fn start(&mut self, first_seq: u64) {
        self.started = true;
        if first_seq == 1 {
            return;
        }
        match self.start_for(first_seq).cloned() {
            Some(b) => {
                self.expected = b.body.tree_size + 1;
                self.link = Some(b.body.last_hash);
                self.tree = b.body.tree();
                self.confirmed = b.body.tree_size;
            }
            None => {
                // No purge explains the absence: report it, and continue from the state of
                // any trusted checkpoint that ends right before the first record.
                self.missing(1, first_seq - 1, "no purge boundary accounts for this record");
                let state = self
                    .by_size
                    .get(&(first_seq - 1))
                    .and_then(|i| i.first())
                    .map(|&i| self.trusted[i].clone());
                self.expected = first_seq;
                self.link = state.as_ref().map(|c| c.body.last_hash);
                self.tree = state.and_then(|c| c.body.tree());
            }
        }
    }

    /// Feeds the next stored row, in ascending seq order.
    pub fn push_row(&mut self, row: Result<AuditRecord, RowError>) {
        match row {
            Ok(r) => self.push(&r),
            Err(e) => {
                let seq = u64::try_from(e.seq).unwrap_or(0);
                self.checked += 1;
                if !self.started {
                    self.start(seq.max(1));
                }
                if seq < self.expected {
                    self.flag(seq, ProblemKind::Modified, "row out of order".into());
                    return;
                }
                if seq > self.expected {
                    self.missing(self.expected, seq - 1, "gap in sequence numbers");
                }
                self.flag(seq, ProblemKind::Modified, format!("row does not decode ({})", e.field));
                self.link = None;
                self.tree = None;
                self.expected = seq + 1;
            }
        }
    }

    /// Feeds the next record, in ascending seq order.
    pub fn push(&mut self, r: &AuditRecord) {
        self.checked += 1;
        if !self.started {
            self.start(r.seq);
        }
        if r.seq < self.expected {
            self.flag(
                r.seq,
                ProblemKind::Modified,
                "sequence number repeated or out of order".into(),
            );
            return;
        }
        if r.seq > self.expected {
            self.missing(self.expected, r.seq - 1, "gap in sequence numbers");
            self.link = None;
            self.tree = None;
        }
        let self_consistent = compute_hash(r).is_ok_and(|h| h == r.hash);
        if !self_consistent {
            self.flag(r.seq, ProblemKind::Modified, "record does not match its hash".into());
        } else if let Some(link) = self.link
            && link != r.prev_hash
        {
            // The record itself is intact, so the one before it changed (and had its hash
            // recomputed), or, at a purge boundary, this record is not the attested successor.
            let culprit = if r.seq - 1 > self.confirmed { r.seq - 1 } else { r.seq };
            if culprit > self.last_flagged {
                self.flag(
                    culprit,
                    ProblemKind::Modified,
                    "chain link to the next record is broken".into(),
                );
            }
        }
        if let Some(tree) = &mut self.tree {
            tree.push(&r.hash);
        }
        self.link = Some(r.hash);
        self.expected = r.seq + 1;
        self.check_checkpoints_at(r.seq, &r.hash);
    }

    fn check_checkpoints_at(&mut self, seq: u64, hash: &Hash) {
        let Some(idx) = self.by_size.get(&seq).cloned() else {
            return;
        };
        let root = self.tree.as_ref().map(|t| t.root());
        for i in idx {
            let cp = &self.trusted[i];
            let (n, last_hash, cp_root) = (cp.body.seq, cp.body.last_hash, cp.body.root);
            let matches = last_hash == *hash && root.is_none_or(|r| r == cp_root);
            if matches {
                self.confirmed = self.confirmed.max(seq);
            } else if self.last_flagged <= self.confirmed {
                // Nothing in the range since the last confirmation explains the mismatch: the
                // records were rewritten with recomputed hashes.
                let first = self.confirmed + 1;
                self.flag(
                    seq,
                    ProblemKind::Modified,
                    format!("records {first}..={seq} do not match signed checkpoint {n}"),
                );
            }
        }
    }

    pub fn finish(mut self) -> VerifyReport {
        let last_seen = self.expected - 1;
        let attested = self.trusted.iter().map(|c| c.body.tree_size).max().unwrap_or(0);
        if !self.started && attested > 0 {
            // No record at all: everything after the newest boundary is gone.
            let from = self
                .trusted
                .iter()
                .filter(|c| c.body.kind == CheckpointKind::Boundary)
                .map(|c| c.body.tree_size)
                .max()
                .unwrap_or(0);
            if attested > from {
                let newest = self.newest_number();
                self.problem(
                    from + 1,
                    ProblemKind::Truncated,
                    newest,
                    format!("the store is empty but checkpoints attest records up to {attested}"),
                );
            }
        } else if attested > last_seen {
            let newest = self.newest_number();
            self.problem(
                last_seen + 1,
                ProblemKind::Truncated,
                newest,
                format!("records end at {last_seen} but checkpoints attest records up to {attested}"),
            );
        }
        self.problems.sort_by_key(|p| (p.seq, p.kind, p.checkpoint));
        VerifyReport {
            ok: self.problems.is_empty() && self.omitted == 0,
            checked: self.checked,
            checkpoints_trusted: self.trusted.len() as u64,
            problems: self.problems,
            problems_omitted: self.omitted,
        }
    }

    fn newest_number(&self) -> Option<u64> {
        self.trusted.iter().max_by_key(|c| c.body.tree_size).map(|c| c.body.seq)
    }
}

/// Verifies a whole stream at once.
pub fn verify<I>(rows: I, checkpoints: &[Checkpoint], keys: &KeyRing, opts: VerifyOptions) -> VerifyReport
where
    I: IntoIterator<Item = Result<AuditRecord, RowError>>,
{
    let mut v = Verifier::new(checkpoints, keys, opts);
    for row in rows {
        v.push_row(row);
    }
    v.finish()
}
