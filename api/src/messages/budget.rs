//! Each project's share of the `AMBIENT_MESSAGES` stream.
//!
//! The stream is shared by every tenant and refuses new messages when full, so a per-session cap
//! alone lets one project (with many sessions) fill it for everyone. Every append therefore
//! first reserves its bytes against its project's budget, a counter in the key-value bucket
//! [`BUCKET`] updated with compare-and-set (so racing appends on any number of api replicas
//! cannot both take the last bytes). Purging a session's messages gives its bytes back.
//!
//! Budgets alone cannot keep several tenants together from filling the stream (a user owns up
//! to 50 projects). So when the stream is nearly full (past [`Pressure::reserve_from`]), only
//! projects that hold little ([`Pressure::heavy`]) may still append: whoever filled the stream is
//! refused first, and the other tenants keep the last part of it.
//!
//! The counter errs towards too high (a reservation whose publish failed and whose release
//! failed too), never silently towards too low; the periodic sweep recounts each project from
//! the stream itself (the byte totals every session's last message carries) and corrects it.

use async_nats::jetstream::{self, kv};

use crate::errors::Cause;

/// Key-value bucket of the budgets: key `<project>`, value the reserved bytes (decimal).
pub const BUCKET: &str = events::streams::api_buckets::MESSAGE_USAGE;
/// Compare-and-set attempts before an append gives up (503).
const ATTEMPTS: u32 = 30;

/// Why a reservation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The project's budget would be exceeded.
    #[error(
        "the project's session messages hold {used} of at most {max} bytes; this message needs {need} more (delete sessions to free space)"
    )]
    Full { used: u64, need: u64, max: u64 },
    /// The shared stream is nearly full and this project holds much of it.
    #[error(
        "the message store shared by all projects is nearly full ({used} of {capacity} bytes) and this project's messages hold {held} bytes; delete sessions to free space"
    )]
    StreamNearlyFull { used: u64, capacity: u64, held: u64 },
    /// The bucket did not answer.
    #[error("the message budget is unavailable: {0}")]
    Unavailable(#[source] Cause),
}

/// A project holding more than this is refused once an 8 GiB stream is nearly full.
pub const HEAVY_BYTES: u64 = 16 * 1024 * 1024;

/// How full the shared stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// Bytes it holds.
    pub used: u64,
    /// Bytes it may hold.
    pub capacity: u64,
}

impl Pressure {
    /// Past this many bytes only light projects may append: the last tenth of the stream.
    pub fn reserve_from(&self) -> u64 {
        self.capacity - self.capacity / 10
    }

    /// A project holding more than this is refused in the reserve: 1/512 of the stream (so 50
    /// light projects fit in the last tenth), at most [`HEAVY_BYTES`].
    pub fn heavy(&self) -> u64 {
        (self.capacity / 512).min(HEAVY_BYTES)
    }
}

/// The counter after reserving `need` bytes on `used` (of `max`), or why not, given how full
/// the stream is (pure).
pub fn reserve(used: u64, need: u64, max: u64, pressure: Option<Pressure>) -> Result<u64, BudgetError> {
    let total = match used.checked_add(need) {
        Some(total) if total <= max => total,
        _ => return Err(BudgetError::Full { used, need, max }),
    };
    if let Some(p) = pressure
        && p.used.saturating_add(need) > p.reserve_from()
        && total > p.heavy()
    {
        return Err(BudgetError::StreamNearlyFull { used: p.used, capacity: p.capacity, held: used });
    }
    Ok(total)
}

/// Per-project message budgets.
pub struct Budgets {
    kv: kv::Store,
    max_bytes: u64,
}

fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Budgets {
    /// Budgets of `max_bytes` per project, kept in [`BUCKET`] (`replicas` copies).
    pub async fn open(js: &jetstream::Context, max_bytes: u64, replicas: usize) -> anyhow::Result<Self> {
        let kv = crate::buckets::ensure_bucket(js, BUCKET, std::time::Duration::ZERO, replicas).await?;
        Ok(Self { kv, max_bytes })
    }

    /// The most a project's messages may hold.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Applies `step` to the project's counter with compare-and-set, retrying on a lost race;
    /// returns the new value.
    async fn change(&self, project: &str, step: impl Fn(u64) -> Result<u64, BudgetError>) -> Result<u64, BudgetError> {
        let unavailable = |e: Cause| BudgetError::Unavailable(e);
        for attempt in 0..ATTEMPTS {
            let current = self.kv.entry(project).await.map_err(|e| unavailable(e.into()))?;
            let written = match current.filter(|e| e.operation == kv::Operation::Put) {
                Some(entry) => {
                    let next = step(parse(&entry.value))?;
                    self.kv
                        .update(project, next.to_string().into(), entry.revision)
                        .await
                        .map(|_| next)
                        .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, Cause::from(e)))
                }
                None => {
                    let next = step(0)?;
                    self.kv
                        .create(project, next.to_string().into())
                        .await
                        .map(|_| next)
                        .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, Cause::from(e)))
                }
            };
            match written {
                Ok(next) => return Ok(next),
                Err((true, _)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt % 8) + 1)).await
                }
                Err((false, e)) => return Err(BudgetError::Unavailable(e)),
            }
        }
        Err(BudgetError::Unavailable("too many concurrent appends in this project; retry".into()))
    }

    /// Reserves `need` bytes for one message of `project`.
    pub async fn reserve(&self, project: &str, need: u64, pressure: Option<Pressure>) -> Result<(), BudgetError> {
        let max = self.max_bytes;
        self.change(project, |used| reserve(used, need, max, pressure)).await.map(|_| ())
    }

    /// Gives `bytes` back to `project` (a failed append, purged messages). Best effort: a
    /// failure leaves the counter high until the next recount.
    pub async fn release(&self, project: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Err(e) = self.change(project, |used| Ok(used.saturating_sub(bytes))).await {
            tracing::warn!(project, bytes, error = %e, "releasing message bytes failed; the next sweep recounts");
        }
    }

    /// The bytes reserved for `project` now.
    pub async fn used(&self, project: &str) -> Result<u64, BudgetError> {
        let entry = self.kv.entry(project).await.map_err(|e| BudgetError::Unavailable(e.into()))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| parse(&e.value)).unwrap_or(0))
    }

    /// Every project with a counter.
    pub async fn projects(&self) -> Result<Vec<String>, Cause> {
        use futures::TryStreamExt as _;
        let keys = self.kv.keys().await.map_err(Cause::from)?;
        keys.try_collect().await.map_err(Cause::from)
    }

    /// The counter's revision and value now (none when the project has no counter); pass it to
    /// [`Budgets::recount`] after counting the project's messages.
    pub async fn snapshot(&self, project: &str) -> Result<Option<(u64, u64)>, Cause> {
        let entry = self.kv.entry(project).await.map_err(Cause::from)?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| (e.revision, parse(&e.value))))
    }

    /// Sets `project`'s counter to `counted` (what the stream holds) unless it changed since
    /// `seen` was taken (an append or a purge raced the count: the next sweep tries again); a
    /// project with nothing left loses its key. Whether the counter was corrected.
    pub async fn recount(&self, project: &str, seen: Option<(u64, u64)>, counted: u64) -> Result<bool, Cause> {
        let done = match seen {
            Some((_, value)) if value == counted => return Ok(false),
            None if counted == 0 => return Ok(false),
            None => self.kv.create(project, counted.to_string().into()).await.map(|_| ()).map_err(Cause::from),
            Some((revision, _)) if counted == 0 => {
                self.kv.purge_expect_revision(project, Some(revision)).await.map_err(Cause::from)
            }
            Some((revision, _)) => {
                self.kv.update(project, counted.to_string().into(), revision).await.map(|_| ()).map_err(Cause::from)
            }
        };
        // A lost race is not a failure: the next sweep recounts.
        Ok(done.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_budget() {
        // (used, need, max) -> new total or full
        let cases: &[(u64, u64, u64, Option<u64>)] = &[
            (0, 10, 100, Some(10)),
            (90, 10, 100, Some(100)),
            (91, 10, 100, None),
            (100, 1, 100, None),
            (0, 101, 100, None),
            (u64::MAX - 1, 5, u64::MAX, None),
            (0, 0, 0, Some(0)),
        ];
        for &(used, need, max, want) in cases {
            let got = reserve(used, need, max, None).ok();
            assert_eq!(got, want, "reserve({used}, {need}, {max})");
        }
        let Err(BudgetError::Full { used, need, max }) = reserve(95, 10, 100, None) else { panic!("expected Full") };
        assert_eq!((used, need, max), (95, 10, 100));
    }

    #[test]
    fn a_nearly_full_stream_takes_only_light_projects() {
        const MIB: u64 = 1024 * 1024;
        let budget = 128 * MIB;
        let stream = |used| Some(Pressure { used, capacity: 8 * 1024 * MIB });
        // (project holds, stream holds) -> admitted
        let cases = [
            (0, 0, true),
            (100 * MIB, 7000 * MIB, true),  // below the reserve: the budget alone decides
            (100 * MIB, 7400 * MIB, false), // in the reserve: a heavy project is refused
            (HEAVY_BYTES - MIB, 7400 * MIB, true), // ...a light one is not
            (HEAVY_BYTES - MIB, 8 * 1024 * MIB, true), // the server's own cap is the last word
        ];
        for (held, used, admitted) in cases {
            assert_eq!(reserve(held, 1024, budget, stream(used)).is_ok(), admitted, "project {held}, stream {used}");
        }
        assert!(matches!(
            reserve(100 * MIB, 1024, budget, stream(7500 * MIB)),
            Err(BudgetError::StreamNearlyFull { .. })
        ));
        assert_eq!(Pressure { used: 0, capacity: 8 * 1024 * MIB }.heavy(), HEAVY_BYTES);
        assert_eq!(Pressure { used: 0, capacity: 512 * 1000 }.heavy(), 1000, "a smaller store, a smaller share");
    }

    #[test]
    fn a_counter_that_does_not_parse_reads_as_empty() {
        assert_eq!(parse(b"123"), 123);
        assert_eq!(parse(b""), 0);
        assert_eq!(parse(b"x"), 0);
        assert_eq!(parse(b"-5"), 0);
    }
}
