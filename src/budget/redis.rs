//! The Redis store: one budget shared by every replica. Each admission is one `EVALSHA` of
//! [`ADMIT`] (check every limit, then count in all of them, atomically) and each settlement
//! one of [`SETTLE`]. Keys name their bucket and expire with their window.
//!
//! Key: `portcullis:budget:{namespace/name}:{limit}:{counter key}:{bucket}`. The braces are
//! a hash tag: every key of one budget is in one slot, so the scripts also run on a Redis
//! Cluster.
//!
//! While the server does not answer, the store is marked down for [`DOWN_FOR`]: requests in
//! that time go straight to `onStoreUnavailable` instead of each waiting for [`TIMEOUT`].

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Entry, Refusal};
use crate::crd::ObjectKey;

/// Longest wait for Redis on the request path before `onStoreUnavailable` decides.
pub const TIMEOUT: Duration = Duration::from_millis(750);
/// How long a failed store is skipped before the next request tries it again.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// Check every limit (`prev * weight + cur + need <= max`); if all fit, count in every one
/// and leave a marker of this admission (for [`RELEASE`], while it lives).
/// KEYS: cur₁, prev₁, cur₂, prev₂, …, marker.  ARGV: per limit max, need, weight
/// (millionths), ttl (ms). Returns `{1, cur₁, prev₁, …}` (after counting), or
/// `{0, i, used, prev, cur}` for the first limit without room.
pub const ADMIT: &str = r"
local n = (#KEYS - 1) / 2
local seen = {}
for i = 1, n do
  local a = (i - 1) * 4
  local max = tonumber(ARGV[a + 1])
  local need = tonumber(ARGV[a + 2])
  local w = tonumber(ARGV[a + 3])
  local cur = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local used = math.ceil(prev * w / 1000000) + cur
  if used + need > max then
    return {0, i, used, prev, cur}
  end
  seen[i] = {cur, prev}
end
local out = {1}
for i = 1, n do
  local a = (i - 1) * 4
  local v = redis.call('INCRBY', KEYS[2 * i - 1], ARGV[a + 2])
  redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[a + 4])
  out[#out + 1] = v
  out[#out + 1] = seen[i][2]
end
redis.call('SET', KEYS[#KEYS], '1', 'PX', 30000)
return out
";

/// Undo an admission whose answer never came (a timeout, a dropped connection): only if its
/// marker is still there, so an admission is undone at most once and one that never ran is
/// left alone. KEYS: cur₁, cur₂, …, marker.  ARGV: need₁, need₂, …
pub const RELEASE: &str = r"
if redis.call('DEL', KEYS[#KEYS]) == 1 then
  for i = 1, #KEYS - 1 do
    local v = redis.call('DECRBY', KEYS[i], ARGV[i])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 1
";

/// How long after a lost answer its admission is still undone (the marker's lifetime is
/// 30 s; retries stop well before).
const RELEASE_TRIES: u32 = 10;

/// Add each delta to its bucket's key, if that key still lives (never below zero).
pub const SETTLE: &str = r"
for i, k in ipairs(KEYS) do
  local d = tonumber(ARGV[i])
  if d ~= 0 and redis.call('EXISTS', k) == 1 then
    local v = redis.call('INCRBY', k, d)
    if v < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
  end
end
return 1
";

/// What Redis decided.
#[derive(Debug)]
pub enum Admission {
    /// Counted in every limit.
    Admitted,
    /// A limit has no room.
    Refused(Refusal),
}

/// A client of one Redis server (URL from a Secret; never logged).
pub struct RedisStore {
    url: String,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    admit: redis::Script,
    settle: redis::Script,
    release: std::sync::Arc<redis::Script>,
    /// Until when (`window::now_ms`) the store counts as down.
    down_until_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore(<url redacted>)")
    }
}

fn key(budget: &ObjectKey, e: &Entry, bucket: i64) -> String {
    format!(
        "portcullis:budget:{{{budget}}}:{}:{}:{bucket}",
        e.limit.name, e.key
    )
}

impl RedisStore {
    /// A client; it connects on first use.
    pub fn new(url: String) -> Self {
        Self {
            url,
            conn: tokio::sync::OnceCell::new(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            release: std::sync::Arc::new(redis::Script::new(RELEASE)),
            down_until_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn is_down(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .down_until_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mark_down(&self, now_ms: u64) {
        self.down_until_ms.store(
            now_ms + DOWN_FOR.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The URL it was made for (to reuse the client across reloads).
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn connection(&self) -> Result<ConnectionManager, ()> {
        self.conn
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.url.as_str()).map_err(|_| ())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                ConnectionManager::new_lazy_with_config(client, config).map_err(|_| ())
            })
            .await
            .cloned()
    }

    /// Reserve every entry in one round trip. `Err(())`: the store is unreachable.
    pub async fn admit(
        &self,
        budget: &ObjectKey,
        entries: &mut [Entry],
        now_ms: u64,
    ) -> Result<Admission, ()> {
        if self.is_down(now_ms) {
            return Err(());
        }
        let Ok(mut conn) = self.connection().await else {
            self.mark_down(now_ms);
            return Err(());
        };
        let mut invocation = self.admit.prepare_invoke();
        for e in entries.iter_mut() {
            let pos = e.limit.window.position(now_ms);
            e.bucket = pos.bucket;
            invocation
                .key(key(budget, e, pos.bucket))
                .key(key(budget, e, pos.bucket - 1));
        }
        let marker = format!(
            "portcullis:budget:{{{budget}}}:admission:{}",
            uuid::Uuid::new_v4()
        );
        invocation.key(&marker);
        for e in entries.iter() {
            let pos = e.limit.window.position(now_ms);
            invocation
                .arg(e.limit.max)
                .arg(e.need)
                .arg((pos.prev_weight * 1_000_000.0) as u64)
                .arg(e.limit.window.ttl_ms());
        }
        let reply: Vec<i64> = match tokio::time::timeout(
            TIMEOUT,
            invocation.invoke_async(&mut conn),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                tracing::warn!(budget = %budget, error = ?e.kind(), "budget store (Redis) failed");
                self.mark_down(now_ms);
                self.undo_later(conn, budget, entries, marker);
                return Err(());
            }
            Err(_) => {
                tracing::warn!(budget = %budget, "budget store (Redis) timed out");
                self.mark_down(now_ms);
                self.undo_later(conn, budget, entries, marker);
                return Err(());
            }
        };
        let at = |i: usize| reply.get(i).copied().unwrap_or_default().max(0) as u64;
        if at(0) == 1 {
            for (i, e) in entries.iter().enumerate() {
                e.limit
                    .counters
                    .mirror(&e.key, e.bucket, at(2 + 2 * i), at(1 + 2 * i));
            }
            return Ok(Admission::Admitted);
        }
        let i = (at(1) as usize).saturating_sub(1);
        let Some(e) = entries.get(i) else {
            return Err(());
        };
        let (used, prev, cur) = (at(2), at(3), at(4));
        e.limit.counters.mirror(&e.key, e.bucket, prev, cur);
        Ok(Admission::Refused(Refusal::Limited {
            budget: budget.clone(),
            limit: e.limit.name.clone(),
            unit: e.limit.unit,
            max: e.limit.max,
            used,
            need: e.need,
            retry_after_ms: e
                .limit
                .window
                .wait_ms(now_ms, prev, cur, e.need, e.limit.max),
        }))
    }

    /// The answer to an admission was lost: it may have been counted or not. Undo it in the
    /// background if it was ([`RELEASE`]), so a request refused (`deny`) or counted in the
    /// process (`allow`) is not also counted in Redis.
    fn undo_later(
        &self,
        mut conn: ConnectionManager,
        budget: &ObjectKey,
        entries: &[Entry],
        marker: String,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let counted: Vec<(String, u64)> = entries
            .iter()
            .map(|e| (key(budget, e, e.bucket), e.need))
            .collect();
        let script = self.release.clone();
        let budget = budget.clone();
        rt.spawn(async move {
            let mut invocation = script.prepare_invoke();
            for (k, need) in &counted {
                invocation.key(k).arg(*need);
            }
            invocation.key(&marker);
            for _ in 0..RELEASE_TRIES {
                tokio::time::sleep(DOWN_FOR / 2).await;
                let done: Result<Result<i64, _>, _> =
                    tokio::time::timeout(TIMEOUT * 2, invocation.invoke_async(&mut conn)).await;
                if matches!(done, Ok(Ok(_))) {
                    return;
                }
            }
            tracing::warn!(budget = %budget, "budget store (Redis): an admission whose answer was lost could not be undone; it stays counted until its window ends");
        });
    }

    /// Replace reservations with usage, in one round trip.
    pub async fn settle(&self, budget: &ObjectKey, deltas: &[(Entry, i64)]) {
        if deltas.iter().all(|(_, d)| *d == 0) {
            return;
        }
        let Ok(mut conn) = self.connection().await else {
            return;
        };
        let mut invocation = self.settle.prepare_invoke();
        for (e, d) in deltas {
            invocation.key(key(budget, e, e.bucket)).arg(*d);
            e.limit.counters.adjust(&e.key, e.bucket, *d);
        }
        let done: Result<Result<i64, _>, _> =
            tokio::time::timeout(TIMEOUT * 4, invocation.invoke_async(&mut conn)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(budget = %budget, "budget store (Redis): a settlement was not written; the reservation stays counted");
        }
    }
}
