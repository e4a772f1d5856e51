//! A set checker in the style of Jepsen's: after a run with faults, every
//! request is classified by what the client heard (ok, failed, unknown) and
//! by what every replica holds. Requests go to their own tenant (load with
//! `tenants = 0`), so one count tells a request's whole fate, and a count
//! between 0 and the request's size is an atomicity violation.

use crate::api::{Api, WriteOutcome};
use crate::load::LoadReport;
use crate::table::{verdict, Table};

#[derive(Debug, Clone, Default)]
pub struct SetCheck {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged, yet missing at some replica.
    pub lost: Vec<String>,
    /// Definitely failed, yet present at some replica.
    pub unexpected: Vec<String>,
    /// Indeterminate and present.
    pub recovered: usize,
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

    pub fn render(&self) -> String {
        let mut t = Table::new(["outcome", "requests"]);
        t.row(["ok".to_string(), self.ok.to_string()]);
        t.row(["failed".to_string(), self.failed.to_string()]);
        t.row(["unknown".to_string(), self.unknown.to_string()]);
        t.row(["recovered".to_string(), self.recovered.to_string()]);
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

/// Reads every request's tenant from the coordinator and every counter URL.
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
        let mut counts = Vec::new();
        let mut sources = vec![("coordinator".to_string(), api.count(&op.tenant).await)];
        for url in counters {
            sources.push((url.clone(), api.counter_count(url, &op.tenant).await));
        }
        for (source, count) in sources {
            match count {
                Ok(n) => counts.push((source, n)),
                Err(e) => result
                    .unreadable
                    .push(format!("{} at {source}: {e}", op.tenant)),
            }
        }
        let size = op.items as u64;
        let describe = || {
            format!(
                "{} ({} items, first {}): {:?}",
                op.tenant, op.items, op.first_id, counts
            )
        };
        if counts.iter().any(|(_, n)| *n != 0 && *n != size)
            || (counts.iter().any(|(_, n)| *n == 0) && counts.iter().any(|(_, n)| *n == size))
        {
            result.partial.push(describe());
        }
        let present = counts.iter().all(|(_, n)| *n == size);
        let absent = counts.iter().all(|(_, n)| *n == 0);
        match &op.outcome {
            WriteOutcome::Ok => {
                result.ok += 1;
                if !present {
                    result.lost.push(describe());
                }
            }
            WriteOutcome::Failed(..) => {
                result.failed += 1;
                if !absent {
                    result.unexpected.push(describe());
                }
            }
            WriteOutcome::Unknown(_) => {
                result.unknown += 1;
                if present {
                    result.recovered += 1;
                }
            }
        }
    }
    result
}
