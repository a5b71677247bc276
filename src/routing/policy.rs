//! What a failed attempt means: the kind of failure (from the status, headers and body the
//! provider answered, or from the transport), and whether the proxy's `retry` lets it be
//! tried again, on the same target or on another one.
//!
//! Pure functions, no I/O: the attempt loop ([`super::attempt`]) acts on their verdicts.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::crd::{ProviderType, RetryOn};

/// Tries in all when `retry.attempts` is not set and there is more than one target.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// The retry rules of one request (the proxy's `spec.retry`, or a virtual model's override).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all across targets, the first included (≥ 1).
    pub attempts: u32,
    /// Which failures are tried again.
    pub on: RetrySet,
    /// Longest wait for an attempt's first byte (`None`: the provider's timeout).
    pub first_byte_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// No retry at all: one try, as a model served by one provider gets by default.
    pub const fn single() -> Self {
        Self {
            attempts: 1,
            on: RetrySet::ALL,
            first_byte_timeout: None,
        }
    }

    /// The default for virtual models and pools: three tries on every kind of failure.
    pub const fn default_multi() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            on: RetrySet::ALL,
            first_byte_timeout: None,
        }
    }
}

/// A set of [`RetryOn`] kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RetrySet(u8);

impl RetrySet {
    /// Every kind.
    pub const ALL: RetrySet = RetrySet(0b1111);

    fn bit(on: RetryOn) -> u8 {
        match on {
            RetryOn::RateLimited => 1,
            RetryOn::ServerError => 2,
            RetryOn::Timeout => 4,
            RetryOn::ConnectError => 8,
        }
    }

    /// The set of these kinds.
    pub fn of(kinds: &[RetryOn]) -> Self {
        RetrySet(kinds.iter().fold(0, |acc, k| acc | Self::bit(*k)))
    }

    /// Whether the set holds a kind.
    pub fn contains(self, on: RetryOn) -> bool {
        self.0 & Self::bit(on) != 0
    }
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Throttled for now (429 and the providers' throttling errors).
    RateLimited,
    /// Quota or credit used up: the same target will not answer soon, another one may.
    QuotaExhausted,
    /// The upstream failed (5xx, Anthropic's 529 overloaded).
    ServerError,
    /// No first byte in time.
    Timeout,
    /// The connection failed or was reset before the first byte.
    ConnectError,
    /// The request itself was refused (a 4xx other than 408 and 429): the same request fails
    /// everywhere, so it is never tried again.
    Rejected,
}

impl FailureKind {
    /// The outcome label in metrics and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::QuotaExhausted => "quota_exhausted",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::ConnectError => "connect_error",
            Self::Rejected => "rejected",
        }
    }

    /// The `retry.on` kind that covers it (`None`: never retried).
    pub fn retry_on(self) -> Option<RetryOn> {
        match self {
            Self::RateLimited | Self::QuotaExhausted => Some(RetryOn::RateLimited),
            Self::ServerError => Some(RetryOn::ServerError),
            Self::Timeout => Some(RetryOn::Timeout),
            Self::ConnectError => Some(RetryOn::ConnectError),
            Self::Rejected => None,
        }
    }

    /// Whether it counts towards ejecting the target (a refused request says nothing about
    /// the target's health).
    pub fn counts_against_target(self) -> bool {
        !matches!(self, Self::Rejected)
    }
}

/// A failed attempt: its kind and the delay the provider asked for, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// `retry-after` (or the provider's own retry delay).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without a delay.
    pub const fn of(kind: FailureKind) -> Self {
        Self {
            kind,
            retry_after: None,
        }
    }
}

/// What the attempt loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try the same target again, after this wait.
    Retry(Duration),
    /// Try another target (the same one only if no other is left, never for quota).
    NextTarget,
    /// Give this answer to the client.
    Fail,
}

/// The first retry wait on the same target when the provider named none; doubles per try.
pub const BASE_BACKOFF: Duration = Duration::from_millis(50);

/// The decision for a failure, given the policy and the time left before the request's
/// deadline.
pub fn decide(policy: &RetryPolicy, failure: Failure, remaining: Duration) -> Decision {
    let Some(on) = failure.kind.retry_on() else {
        return Decision::Fail;
    };
    if !policy.on.contains(on) {
        return Decision::Fail;
    }
    match (failure.kind, failure.retry_after) {
        // Honour the provider's delay when it fits; a longer one means another target.
        (FailureKind::RateLimited, Some(after)) if after <= remaining => Decision::Retry(after),
        _ => Decision::NextTarget,
    }
}

/// Cap on how much of an error body is read to classify it.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Classify an upstream's error answer. `body` is at most [`ERROR_BODY_LIMIT`] bytes of it.
pub fn classify(
    provider: ProviderType,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Failure {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let retry_after = retry_after(headers, SystemTime::now())
        .or_else(|| json.as_ref().and_then(google_retry_delay));
    let kind = match status.as_u16() {
        429 => {
            if quota_exhausted(provider, json.as_ref(), retry_after.is_some()) {
                FailureKind::QuotaExhausted
            } else {
                FailureKind::RateLimited
            }
        }
        408 => FailureKind::Timeout,
        // Bedrock answers throttling as a 400 with ThrottlingException in some SDK paths.
        400 if error_type(json.as_ref()).is_some_and(|t| t.contains("ThrottlingException")) => {
            FailureKind::RateLimited
        }
        500..=599 => FailureKind::ServerError,
        _ => FailureKind::Rejected,
    };
    Failure { kind, retry_after }
}

/// Whether a 429 means "quota used up" rather than "slow down".
fn quota_exhausted(provider: ProviderType, json: Option<&Value>, has_delay: bool) -> bool {
    let Some(json) = json else { return false };
    let error = json.get("error").unwrap_or(json);
    let field = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or("");
    // Gemini / Vertex: RESOURCE_EXHAUSTED with a RetryInfo delay is a rate limit; without one
    // it is a quota that will not come back soon. (Seen natively in `status`, and in `code`
    // once the Model Router has put the error in OpenAI's shape.)
    let google_quota = (field("status") == "RESOURCE_EXHAUSTED"
        || field("code") == "RESOURCE_EXHAUSTED")
        && !has_delay;
    match provider {
        ProviderType::Gemini | ProviderType::Vertexai => google_quota,
        ProviderType::Bedrock => {
            error_type(Some(json)).is_some_and(|t| t.contains("ServiceQuotaExceeded"))
                || field("code").contains("ServiceQuotaExceeded")
        }
        // OpenAI and its family (Azure, OpenRouter, ...) name it `insufficient_quota`.
        _ => {
            field("code") == "insufficient_quota"
                || field("type") == "insufficient_quota"
                || google_quota
        }
    }
}

/// Bedrock's error type: the `__type` field or the message's exception name.
fn error_type(json: Option<&Value>) -> Option<&str> {
    let json = json?;
    json.get("__type")
        .or_else(|| json.get("error").and_then(|e| e.get("type")))
        .and_then(Value::as_str)
}

/// `retry-after-ms`, then `retry-after` (seconds or an HTTP date), as a duration from `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e10)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let raw = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && (0.0..1e9).contains(&secs))
            .then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate_parse(raw)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form a server may send.
fn httpdate_parse(raw: &str) -> Option<SystemTime> {
    let mut parts = raw.split_ascii_whitespace();
    let (_day, d, mon, y, time, gmt) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if gmt != "GMT" || parts.next().is_some() {
        return None;
    }
    let day: u64 = d.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == mon)? as u64
        + 1;
    let year: u64 = y.parse().ok()?;
    let mut hms = time.split(':').map(|v| v.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1970..10000).contains(&year) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

/// Gemini / Vertex: `error.details[] @type RetryInfo { retryDelay: "12s" }`.
fn google_retry_delay(json: &Value) -> Option<Duration> {
    let details = json.get("error")?.get("details")?.as_array()?;
    details.iter().find_map(|d| {
        let is_retry_info = d
            .get("@type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"));
        let delay = d.get("retryDelay")?.as_str()?;
        let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
        (is_retry_info && secs.is_finite() && (0.0..1e9).contains(&secs))
            .then(|| Duration::from_secs_f64(secs))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    #[test]
    fn openai_insufficient_quota_moves_on_a_plain_429_is_a_rate_limit() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let f = classify(ProviderType::Openai, status(429), &HeaderMap::new(), body);
        assert_eq!(f.kind, FailureKind::QuotaExhausted);
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        let f = classify(
            ProviderType::Azure,
            status(429),
            &headers(&[("retry-after", "2")]),
            body,
        );
        assert_eq!(
            f,
            Failure {
                kind: FailureKind::RateLimited,
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn gemini_resource_exhausted_without_delay_is_quota_with_delay_a_rate_limit() {
        let quota = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        for t in [ProviderType::Gemini, ProviderType::Vertexai] {
            let f = classify(t, status(429), &HeaderMap::new(), quota);
            assert_eq!(f.kind, FailureKind::QuotaExhausted, "{t}");
        }
        let delayed = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}"#;
        let f = classify(
            ProviderType::Gemini,
            status(429),
            &HeaderMap::new(),
            delayed,
        );
        assert_eq!(
            f,
            Failure {
                kind: FailureKind::RateLimited,
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn statuses() {
        let none = HeaderMap::new();
        let kind = |code| classify(ProviderType::Anthropic, status(code), &none, b"").kind;
        assert_eq!(kind(500), FailureKind::ServerError);
        assert_eq!(kind(503), FailureKind::ServerError);
        assert_eq!(kind(529), FailureKind::ServerError);
        assert_eq!(kind(408), FailureKind::Timeout);
        assert_eq!(kind(429), FailureKind::RateLimited);
        for code in [400, 401, 403, 404, 413, 422] {
            assert_eq!(kind(code), FailureKind::Rejected, "{code}");
        }
        let throttled = br#"{"__type":"ThrottlingException","message":"slow down"}"#;
        let f = classify(ProviderType::Bedrock, status(400), &none, throttled);
        assert_eq!(f.kind, FailureKind::RateLimited);
        let quota = br#"{"__type":"ServiceQuotaExceededException"}"#;
        let f = classify(ProviderType::Bedrock, status(429), &none, quota);
        assert_eq!(f.kind, FailureKind::QuotaExhausted);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250")]), now),
            Some(Duration::from_millis(250))
        );
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        let date = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:37 GMT")]);
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(60)));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1e300")]), now),
            None
        );
    }

    #[test]
    fn decisions() {
        let policy = RetryPolicy::default_multi();
        let left = Duration::from_secs(10);
        let limited = |after: Option<u64>| Failure {
            kind: FailureKind::RateLimited,
            retry_after: after.map(Duration::from_secs),
        };
        assert_eq!(
            decide(&policy, limited(Some(2)), left),
            Decision::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            decide(&policy, limited(Some(60)), left),
            Decision::NextTarget
        );
        assert_eq!(decide(&policy, limited(None), left), Decision::NextTarget);
        assert_eq!(
            decide(&policy, Failure::of(FailureKind::QuotaExhausted), left),
            Decision::NextTarget
        );
        assert_eq!(
            decide(&policy, Failure::of(FailureKind::ServerError), left),
            Decision::NextTarget
        );
        assert_eq!(
            decide(&policy, Failure::of(FailureKind::Rejected), left),
            Decision::Fail
        );
        let only_5xx = RetryPolicy {
            on: RetrySet::of(&[RetryOn::ServerError]),
            ..policy
        };
        assert_eq!(decide(&only_5xx, limited(Some(1)), left), Decision::Fail);
        assert_eq!(
            decide(&only_5xx, Failure::of(FailureKind::Timeout), left),
            Decision::Fail
        );
        assert_eq!(
            decide(&only_5xx, Failure::of(FailureKind::ServerError), left),
            Decision::NextTarget
        );
    }
}
