//! Finding invocations beyond what one index answers: every failed one
//! (two statuses, two index scans merged in the list's order), and text in
//! an invocation's logs, event, output or error (a bounded scan: at most
//! `scan` records per call, continued from its cursor).
//!
//! Both keep the list's cursor: `(created_at_ms, id)` newest first, a page
//! after a cursor holds only records strictly older, so a page of the
//! merge or of the scan continues exactly where the last one stopped.

use shoal_store::{Backend, InvocationCursor, InvocationFilter, InvocationPage, InvocationRecord};
use shoal_types::InvocationStatus;

use crate::error::Result;

/// The statuses of `failed=true`: the user's code failed or ran out of time.
pub const FAILED_STATUSES: [InvocationStatus; 2] =
    [InvocationStatus::Failed, InvocationStatus::TimedOut];

/// Most records one text search looks at.
pub const MAX_SCAN: usize = 10_000;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub filter: InvocationFilter,
    /// Failed or timed out (the filter's `status` must be unset).
    pub failed: bool,
    /// Text to find (case-insensitive) in the logs, event, output or error.
    pub text: Option<String>,
    /// Records looked at, at most, when `text`, `token` or `user` is set
    /// (1..=MAX_SCAN).
    pub scan: usize,
    /// Only invocations started by this token (id), or by its origin's:
    /// not indexed, so found by the same bounded scan as `text`.
    pub token: Option<String>,
    /// Only invocations started by a token of this user (a bounded scan).
    pub user: Option<String>,
}

/// A page of a search.
#[derive(Debug, Clone)]
pub struct Found {
    pub page: InvocationPage,
    /// Records looked at (the text search's work), when `text` was set.
    pub scanned: Option<usize>,
}

pub(crate) async fn search(
    backend: &Backend,
    s: &Search,
    after: Option<&InvocationCursor>,
    limit: usize,
) -> Result<Found> {
    let text = s.text.as_deref().filter(|t| !t.is_empty());
    if text.is_none() && s.token.is_none() && s.user.is_none() {
        return Ok(Found {
            page: list(backend, s, after, limit).await?,
            scanned: None,
        });
    }
    let needle = text.map(str::to_lowercase);
    let started_by = |r: &InvocationRecord| {
        s.token.as_ref().is_none_or(|t| r.token.as_ref() == Some(t))
            && s.user.as_ref().is_none_or(|u| r.user.as_ref() == Some(u))
    };
    let budget = s.scan.clamp(1, MAX_SCAN);
    let mut scanned = 0;
    let mut found = Vec::new();
    let mut cursor = after.cloned();
    loop {
        let want = (budget - scanned).min(500);
        let page = list(backend, s, cursor.as_ref(), want).await?;
        for record in page.records {
            scanned += 1;
            let hit = started_by(&record)
                && match &needle {
                    None => true,
                    Some(needle) => {
                        matches(&record, needle)
                            || backend
                                .invocations
                                .logs(&record.id)
                                .await?
                                .is_some_and(|l| contains(&String::from_utf8_lossy(&l), needle))
                    }
                };
            cursor = Some(InvocationCursor::after(&record));
            if hit {
                found.push(record);
                if found.len() == limit {
                    // More may follow: the next page starts after this one.
                    let next = cursor;
                    return Ok(Found {
                        page: InvocationPage {
                            records: found,
                            next,
                        },
                        scanned: Some(scanned),
                    });
                }
            }
        }
        if page.next.is_none() {
            cursor = None;
            break;
        }
        if scanned >= budget {
            break;
        }
    }
    Ok(Found {
        page: InvocationPage {
            records: found,
            next: cursor,
        },
        scanned: Some(scanned),
    })
}

/// One page of the index scan (or of the merge of the failed statuses').
async fn list(
    backend: &Backend,
    s: &Search,
    after: Option<&InvocationCursor>,
    limit: usize,
) -> Result<InvocationPage> {
    let inv = &backend.invocations;
    if !s.failed {
        return Ok(inv.list_invocations(&s.filter, after, limit).await?);
    }
    let mut merged: Vec<InvocationRecord> = Vec::new();
    let mut more = false;
    for status in FAILED_STATUSES {
        let filter = InvocationFilter {
            status: Some(status),
            ..s.filter.clone()
        };
        let page = inv.list_invocations(&filter, after, limit).await?;
        more |= page.next.is_some();
        merged.extend(page.records);
    }
    merged.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
    more |= merged.len() > limit;
    merged.truncate(limit);
    let next = more
        .then(|| merged.last().map(InvocationCursor::after))
        .flatten();
    Ok(InvocationPage {
        records: merged,
        next,
    })
}

fn matches(r: &InvocationRecord, needle: &str) -> bool {
    contains(&r.input, needle)
        || r.output.as_deref().is_some_and(|o| contains(o, needle))
        || r.error.as_ref().is_some_and(|e| {
            contains(&e.message, needle)
                || e.exception.as_deref().is_some_and(|x| contains(x, needle))
                || e.traceback.as_deref().is_some_and(|t| contains(t, needle))
        })
}

/// Case-insensitive `contains`; `needle` is lowercase already.
fn contains(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        true
    } else if hay.is_ascii() && needle.is_ascii() {
        hay.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn contains_ignores_case_in_ascii_and_beyond() {
        assert!(contains("Traceback: KeyError 'Photo'", "keyerror 'photo'"));
        assert!(!contains("short", "longer than it"));
        assert!(contains("ÉCOLE fermée", "école"));
        assert!(contains("anything", ""));
    }
}
