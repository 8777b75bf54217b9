//! `rampart conformance [--json|--html]`: the live conformance report of the cloud the CLI is
//! logged in to (`GET /v1/conformance`): a table by default, the JSON document, or a
//! self-contained HTML page an auditor can file. Exit 0 when no probed clause fails, 1 otherwise.

use clap::Args;
use rampart_api::conformance::ConformanceReport;

use super::session::client;
use crate::Failure;

#[derive(Args)]
pub struct ConformanceArgs {
    /// The JSON report instead of a table.
    #[arg(long, conflicts_with = "html")]
    json: bool,
    /// A self-contained HTML page (no script, no external resource).
    #[arg(long)]
    html: bool,
}

pub async fn conformance(a: ConformanceArgs) -> Result<(), Failure> {
    let report: ConformanceReport = client()
        .map_err(Failure::Runtime)?
        .get("/v1/conformance")
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.into()))?
        );
    } else if a.html {
        print!("{}", html(&report));
    } else {
        print!("{}", table(&report));
    }
    if report.failed > 0 {
        Err(Failure::Exit(1))
    } else {
        Ok(())
    }
}

fn table(r: &ConformanceReport) -> String {
    let mut out = format!("{:<16} {:<14} {}\n", "CLAUSE", "STATUS", "EVIDENCE");
    for c in &r.clauses {
        out.push_str(&format!("{:<16} {:<14} {}\n", c.id, c.status, c.evidence));
    }
    out.push_str(&format!(
        "\n{} clauses, {} probed live: {} pass, {} fail ({} ms)\n",
        r.clauses.len(),
        r.probed,
        r.passed,
        r.failed,
        r.duration_ms
    ));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(r: &ConformanceReport) -> String {
    let mut rows = String::new();
    for c in &r.clauses {
        rows.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&c.status),
            escape(&c.id),
            escape(&c.requirement),
            escape(&c.status),
            escape(&c.evidence),
            c.tests.iter().map(|t| escape(t)).collect::<Vec<_>>().join("<br>")
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Rampart conformance {at}</title>\n\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}\
         tr.pass td:nth-child(3){{background:#cfc}}tr.fail td:nth-child(3){{background:#fcc}}</style></head><body>\n\
         <h1>Conformance with the CSA Cloud OS Security Specification v2.0</h1>\n\
         <p>Generated {at}: {n} clauses, {probed} probed live, {passed} pass, {failed} fail.</p>\n\
         <table><tr><th>clause</th><th>requirement</th><th>status</th><th>evidence</th><th>tests</th></tr>\n{rows}</table></body></html>\n",
        at = escape(&rampart_common::time::rfc3339(r.generated_at)),
        n = r.clauses.len(),
        probed = r.probed,
        passed = r.passed,
        failed = r.failed,
    )
}
