//! A set checker in the style of Jepsen's: after a run with faults, every
//! request is classified by what the client heard (ok, failed, not sent,
//! unknown) and by what every replica holds. Requests go to their own
//! tenants (load with `tenants = 0`), so the counts of a request's tenants
//! tell its whole fate: each tenant holds its whole share or none of it,
//! all of them alike, at the coordinator and at every counter. Anything
//! else is an atomicity violation. Checking request by request means an
//! unknown outcome exempts only that request, never a neighbour's phantom.

use crate::api::{Api, WriteOutcome};
use crate::load::LoadReport;
use crate::table::{verdict, Table};

#[derive(Debug, Clone, Default)]
pub struct SetCheck {
    pub ok: usize,
    /// Answered with a 4xx or a 503.
    pub failed: usize,
    /// Of `failed`, refused with 503 (an aborted transaction, a full queue).
    pub failed_503: usize,
    /// Never sent: the connection was refused.
    pub not_sent: usize,
    pub unknown: usize,
    /// Acknowledged, yet missing at some replica.
    pub lost: Vec<String>,
    /// Definitely failed or never sent, yet present at some replica.
    pub unexpected: Vec<String>,
    /// Indeterminate and present everywhere.
    pub recovered: usize,
    /// Indeterminate and absent everywhere.
    pub unknown_absent: usize,
    /// Some but not all items of one request present, or replicas disagree.
    pub partial: Vec<String>,
    pub unreadable: Vec<String>,
}

impl SetCheck {
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.partial.is_empty()
            && self.unreadable.is_empty()
    }

    /// Unknown outcomes that the healed cluster settled one way or the other.
    pub fn resolved(&self) -> usize {
        self.recovered + self.unknown_absent
    }

    pub fn render(&self) -> String {
        let mut t = Table::new(["outcome", "requests"]);
        t.row(["ok".to_string(), self.ok.to_string()]);
        t.row(["failed".to_string(), self.failed.to_string()]);
        t.row(["  of which 503".to_string(), self.failed_503.to_string()]);
        t.row(["not sent".to_string(), self.not_sent.to_string()]);
        t.row(["unknown".to_string(), self.unknown.to_string()]);
        t.row(["  present".to_string(), self.recovered.to_string()]);
        t.row(["  absent".to_string(), self.unknown_absent.to_string()]);
        t.row(["lost".to_string(), self.lost.len().to_string()]);
        t.row(["unexpected".to_string(), self.unexpected.len().to_string()]);
        t.row(["partial".to_string(), self.partial.len().to_string()]);
        let mut out = t.render();
        for (label, list) in [
            ("lost", &self.lost),
            ("unexpected", &self.unexpected),
            ("partial", &self.partial),
            ("unreadable", &self.unreadable),
        ] {
            for line in list.iter().take(10) {
                out.push_str(&format!("{label}: {line}\n"));
            }
        }
        let ok = self.passed();
        out.push_str(&verdict(
            ok,
            if ok {
                "set check passed: nothing lost, nothing unexpected"
            } else {
                "set check FAILED"
            },
        ));
        out.push('\n');
        out
    }
}

/// A counter's own count once it no longer says it may be partial. The
/// coordinator calls a counter in sync a moment before the counter hears
/// so; a counter still partial after 10 s is an error.
async fn whole_count(api: &Api, url: &str, tenant: &str) -> Result<u64, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match api.counter_count_detail(url, tenant).await {
            Ok(c) if !c.partial => return Ok(c.count),
            Ok(c) if std::time::Instant::now() > deadline => {
                return Err(format!("still says it may be partial: {c:?}"))
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => return Err(e),
        }
    }
}

/// Reads every request's tenants from the coordinator and every counter URL.
/// The check runs on a healed cluster, where no counter may say its count
/// is partial.
pub async fn check(api: &Api, counters: &[String], report: &LoadReport) -> SetCheck {
    let mut result = SetCheck::default();
    if let Err(e) = api
        .wait_applied(counters, std::time::Duration::from_secs(30))
        .await
    {
        result.unreadable.push(e);
        return result;
    }
    for op in &report.ops {
        // (source, tenant, count, share) for every tenant of the request.
        let mut counts = Vec::new();
        for (tenant, share) in &op.shares {
            let mut sources = vec![("coordinator".to_string(), api.count(tenant).await)];
            for url in counters {
                sources.push((url.clone(), whole_count(api, url, tenant).await));
            }
            for (source, count) in sources {
                match count {
                    Ok(n) => counts.push((source, tenant.clone(), n, *share)),
                    Err(e) => result.unreadable.push(format!("{tenant} at {source}: {e}")),
                }
            }
        }
        let describe = || {
            let seen: Vec<String> = counts
                .iter()
                .map(|(source, tenant, n, share)| format!("{tenant}@{source}={n}/{share}"))
                .collect();
            format!(
                "{} items, first {}, {:?}: {}",
                op.items,
                op.first_id,
                op.outcome,
                seen.join(" ")
            )
        };
        let present = counts.iter().all(|(_, _, n, share)| n == share);
        let absent = counts.iter().all(|(_, _, n, _)| *n == 0);
        if !present && !absent {
            result.partial.push(describe());
        }
        match &op.outcome {
            WriteOutcome::Ok => {
                result.ok += 1;
                if !present {
                    result.lost.push(describe());
                }
            }
            WriteOutcome::Failed(status, _) => {
                result.failed += 1;
                if *status == 503 {
                    result.failed_503 += 1;
                }
                if !absent {
                    result.unexpected.push(describe());
                }
            }
            WriteOutcome::NotSent(_) => {
                result.not_sent += 1;
                if !absent {
                    result.unexpected.push(describe());
                }
            }
            WriteOutcome::Unknown(_) => {
                result.unknown += 1;
                if present {
                    result.recovered += 1;
                } else if absent {
                    result.unknown_absent += 1;
                }
            }
        }
    }
    result
}
