//! Budgets and rate limits (`LlmBudget`): reserved before a request goes upstream,
//! reconciled with the usage the provider reports.
//!
//! ```text
//!  LlmBudget ──compile()──▶ Budget (limits, prices, store)   pure, in config::compile
//!        │  merge(): last good version per budget; counters and Redis clients carried over
//!        ▼
//!  BudgetTable (in the Snapshot) ── by proxy ──▶ admit(Ask) ──▶ Reservation | Refusal (429/503)
//!                                                   │ in-process: local::Counters (no lock across I/O)
//!                                                   │ Redis: one Lua script per admission
//!                                                   ▼
//!  response body ──tap::wrap──▶ usage read on the side ──▶ Reservation::settle(actual)  (on Drop)
//! ```
//!
//! Amounts are integers: requests, tokens, or millionths of a dollar. A rolling window is a
//! sliding window over two fixed buckets (`prev * weight + cur`); calendar windows (`day`,
//! `month`, UTC) are one bucket each. A reservation is released or replaced exactly once: by
//! the response tap when the body ends (or the client goes away), or on drop.

pub mod local;
pub mod redis;
pub mod tap;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use globset::GlobSet;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use window::Window;

use crate::crd::ObjectKey;
use crate::crd::StoreUnavailable;
use crate::formats::Format;

/// Output tokens reserved when a request names no maximum.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;
/// Kind name in problems.
pub const KIND: &str = "LlmBudget";

/// Budgets of one compilation.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Budgets that compiled cleanly.
    pub good: BTreeMap<ObjectKey, Arc<Budget>>,
    /// Budgets with problems (they keep their last good version, if any).
    pub failed: BTreeSet<ObjectKey>,
}

/// A decimal string (`"500.00"`, `"0.125"`) in millionths.
pub fn parse_micros(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let (whole, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    whole.checked_mul(1_000_000)?.checked_add(frac)
}

/// Millionths as a decimal string with two to six decimals (`123.45`).
pub fn format_micros(micros: u64) -> String {
    let s = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let trimmed = s.trim_end_matches('0');
    match trimmed.split_once('.') {
        Some((w, f)) if f.len() < 2 => format!("{w}.{f:0<2}"),
        _ => trimmed.to_owned(),
    }
}

/// What admission reads of a JSON request body: the model, the output allowance (in any
/// format) and the OpenAI stream flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `model`, trimmed, when it is a non-empty string.
    pub model: Option<String>,
    /// `max_completion_tokens`, `max_tokens`, `max_output_tokens`,
    /// `generationConfig.maxOutputTokens` or `inferenceConfig.maxTokens`, the first given.
    pub max_output: Option<u64>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
}

/// The members [`Facts`] reads; every other member is skipped without being built.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default, rename = "generationConfig")]
    generation_config: Option<PeekGeneration>,
    #[serde(default, rename = "inferenceConfig")]
    inference_config: Option<PeekInference>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<PeekStreamOptions>,
}

#[derive(serde::Deserialize)]
struct PeekGeneration {
    #[serde(default, rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct PeekInference {
    #[serde(default, rename = "maxTokens")]
    max_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct PeekStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl Facts {
    /// Read a body without building it. `None` when it is not a JSON object whose members
    /// have the expected types (or names one twice): [`Facts::of`] decides those.
    pub fn peek(body: &[u8]) -> Option<Self> {
        // A struct also deserializes from an array: only objects are read here.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let p: Peek<'_> = serde_json::from_slice(body).ok()?;
        Some(Self {
            model: p
                .model
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty()),
            max_output: p
                .max_completion_tokens
                .or(p.max_tokens)
                .or(p.max_output_tokens)
                .or(p.generation_config.and_then(|g| g.max_output_tokens))
                .or(p.inference_config.and_then(|i| i.max_tokens)),
            stream: p.stream == Some(true),
            include_usage: p.stream_options.and_then(|o| o.include_usage) == Some(true),
        })
    }

    /// Read a parsed body.
    pub fn of(body: &serde_json::Value) -> Self {
        use serde_json::Value;
        let u64_at = |v: Option<&Value>| v.and_then(Value::as_u64);
        Self {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
            max_output: u64_at(body.get("max_completion_tokens"))
                .or_else(|| u64_at(body.get("max_tokens")))
                .or_else(|| u64_at(body.get("max_output_tokens")))
                .or_else(|| {
                    u64_at(
                        body.get("generationConfig")
                            .and_then(|g| g.get("maxOutputTokens")),
                    )
                })
                .or_else(|| u64_at(body.get("inferenceConfig").and_then(|i| i.get("maxTokens")))),
            stream: body.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true),
        }
    }
}

/// What one counter is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    /// Each caller.
    Identity,
    /// The whole proxy.
    Proxy,
    /// Each provider-qualified model.
    Model,
    /// Each caller and model.
    IdentityModel,
}

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Requests.
    Requests,
    /// Input + output tokens.
    Tokens,
    /// Millionths of a US dollar.
    MicroUsd,
}

impl Unit {
    /// The spec field of the unit.
    pub fn field(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::MicroUsd => "usd",
        }
    }

    /// The unit's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::MicroUsd => "USD",
        }
    }

    /// An amount as status shows it.
    pub fn show(self, n: u64) -> String {
        match self {
            Unit::MicroUsd => format_micros(n),
            _ => n.to_string(),
        }
    }
}

/// One compiled limit.
#[derive(Clone, Debug)]
pub struct Limit {
    /// Name in status, metrics and refusals.
    pub name: String,
    /// Counter key.
    pub per: Per,
    /// What it counts.
    pub unit: Unit,
    /// The limit, in the unit.
    pub max: u64,
    /// Window.
    pub window: Window,
    /// Model filter (provider-qualified IDs).
    pub models: Option<GlobSet>,
    /// Identity filter.
    pub identities: Option<GlobSet>,
    /// Output tokens reserved when a request names no maximum.
    pub default_output: u64,
    /// Equal for two compilations of the same limit definition (counters carry over).
    pub identity_hash: u64,
    /// In-process counters (the store, or the fallback while Redis is unreachable).
    pub counters: Arc<local::Counters>,
    /// Its `portcullis_budget_consumed_total` series, looked up once.
    pub consumed: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl Limit {
    fn counts(&self, identity: &str, model: &str) -> bool {
        self.identities
            .as_ref()
            .is_none_or(|g| g.is_match(identity))
            && self.models.as_ref().is_none_or(|g| g.is_match(model))
    }
}

/// Dollars per million tokens, in millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    /// Input tokens.
    pub input: u64,
    /// Cached input tokens.
    pub cached_input: u64,
    /// Output tokens.
    pub output: u64,
}

/// A provider's price list: the first matching glob wins.
#[derive(Clone, Debug, Default)]
pub struct Prices(pub Vec<(GlobSet, Price)>);

impl Prices {
    /// The price of a model (the provider's own name).
    pub fn get(&self, model: &str) -> Option<Price> {
        self.0
            .iter()
            .find(|(g, _)| g.is_match(model))
            .map(|(_, p)| *p)
    }
}

/// Where a budget's counters live, as compiled.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In this process.
    InProcess,
    /// A Redis server at this URL (never logged: it may hold a password).
    Redis(String),
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::InProcess => f.write_str("InProcess"),
            StoreSpec::Redis(_) => f.write_str("Redis(<url redacted>)"),
        }
    }
}

/// One compiled `LlmBudget`.
#[derive(Clone, Debug)]
pub struct Budget {
    /// The object.
    pub key: ObjectKey,
    /// `metadata.generation` compiled.
    pub generation: Option<i64>,
    /// Proxies counted (`None`: every proxy of the namespace).
    pub targets: Option<Vec<ObjectKey>>,
    /// Limits.
    pub limits: Vec<Arc<Limit>>,
    /// Prices by proxy and prefix.
    pub prices: HashMap<ObjectKey, HashMap<String, Arc<Prices>>>,
    /// Store, as compiled.
    pub store: StoreSpec,
    /// The Redis client (set when the budget enters a snapshot).
    pub redis: Option<Arc<redis::RedisStore>>,
    /// While the store is unreachable.
    pub on_unavailable: StoreUnavailable,
}

impl Budget {
    fn covers(&self, proxy: &ObjectKey) -> bool {
        match &self.targets {
            Some(t) => t.contains(proxy),
            None => proxy.namespace == self.key.namespace,
        }
    }
}

/// Every budget being served, by proxy.
#[derive(Clone, Debug, Default)]
pub struct BudgetTable {
    /// Budgets by object.
    pub budgets: BTreeMap<ObjectKey, Arc<Budget>>,
    by_proxy: HashMap<ObjectKey, Vec<Arc<Budget>>>,
}

/// Merge a compilation into the budgets being served: good budgets replace their old
/// version (keeping its counters and Redis client where unchanged), failed ones keep their
/// last good version, deleted ones go.
pub fn merge<'a>(
    previous: &BudgetTable,
    compiled: &Compiled,
    proxies: impl Iterator<Item = &'a ObjectKey>,
) -> BudgetTable {
    let mut budgets = BTreeMap::new();
    for (key, budget) in &compiled.good {
        let old = previous.budgets.get(key);
        let mut next = Budget::clone(budget);
        next.limits = next
            .limits
            .iter()
            .map(|l| {
                let carried =
                    old.and_then(|o| o.limits.iter().find(|p| p.identity_hash == l.identity_hash));
                match carried {
                    Some(p) => Arc::new(Limit {
                        counters: p.counters.clone(),
                        ..Limit::clone(l)
                    }),
                    None => l.clone(),
                }
            })
            .collect();
        next.redis = match &next.store {
            StoreSpec::InProcess => None,
            StoreSpec::Redis(url) => Some(
                old.and_then(|o| o.redis.clone())
                    .filter(|r| r.url() == url)
                    .unwrap_or_else(|| Arc::new(redis::RedisStore::new(url.clone()))),
            ),
        };
        budgets.insert(key.clone(), Arc::new(next));
    }
    for key in &compiled.failed {
        if let Some(old) = previous.budgets.get(key) {
            budgets.insert(key.clone(), old.clone());
        }
    }
    let mut by_proxy: HashMap<ObjectKey, Vec<Arc<Budget>>> = HashMap::new();
    for proxy in proxies {
        let list: Vec<_> = budgets
            .values()
            .filter(|b| b.covers(proxy))
            .cloned()
            .collect();
        if !list.is_empty() {
            by_proxy.insert(proxy.clone(), list);
        }
    }
    BudgetTable { budgets, by_proxy }
}

/// The lines `portcullis check` prints for a budget.
pub fn describe(budget: &Budget) -> String {
    let targets = match &budget.targets {
        Some(t) => t
            .iter()
            .map(ObjectKey::proxy_id)
            .collect::<Vec<_>>()
            .join(", "),
        None => format!("every LlmProxy of namespace {}", budget.key.namespace),
    };
    let store = match budget.store {
        StoreSpec::InProcess => "in-process",
        StoreSpec::Redis(_) => "redis",
    };
    let mut out = format!(
        "LlmBudget {}: counts {targets}; store {store}\n",
        budget.key
    );
    for l in &budget.limits {
        let window = match l.window {
            Window::Rolling(ms) => format!("rolling {}s", ms / 1000),
            Window::Day => "calendar day (UTC)".to_owned(),
            Window::Month => "calendar month (UTC)".to_owned(),
        };
        out.push_str(&format!(
            "  {:<24} {} {} per {}, {window}\n",
            l.name,
            l.unit.show(l.max),
            match l.unit {
                Unit::Requests => "requests",
                Unit::Tokens => "tokens",
                Unit::MicroUsd => "USD",
            },
            match l.per {
                Per::Identity => "identity",
                Per::Proxy => "proxy",
                Per::Model => "model",
                Per::IdentityModel => "identityModel",
            }
        ));
    }
    out
}

/// What a request asks of the budgets.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The proxy.
    pub proxy: ObjectKey,
    /// Caller identity.
    pub identity: String,
    /// Provider prefix.
    pub prefix: String,
    /// Model, as the provider names it.
    pub model: String,
    /// Input tokens, estimated from the request.
    pub input_tokens: u64,
    /// The request's own output maximum (`max_tokens` and the like).
    pub max_output: Option<u64>,
    /// An embeddings request: its answer holds vectors, not generated tokens, so no output
    /// allowance is reserved and none is estimated from the answer's bytes.
    pub embeddings: bool,
}

impl Ask {
    fn qualified(&self) -> String {
        format!("{}:{}", self.prefix, self.model)
    }

    fn key(&self, per: Per, qualified: &str) -> String {
        let identity = if self.identity.is_empty() {
            "anonymous"
        } else {
            &self.identity
        };
        let key = match per {
            Per::Identity => identity.to_owned(),
            Per::Proxy => self.proxy.proxy_id(),
            Per::Model => qualified.to_owned(),
            Per::IdentityModel => format!("{identity}/{qualified}"),
        };
        bounded_key(key)
    }
}

/// Keys longer than 200 bytes are shortened to a prefix and a hash, so no caller can make a
/// counter key (or a Redis key) of unbounded size.
fn bounded_key(key: String) -> String {
    if key.len() <= 200 {
        return key;
    }
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    let mut cut = 180;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}#{:016x}", &key[..cut], h.finish())
}

/// One limit's part of a reservation.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The limit.
    pub limit: Arc<Limit>,
    /// Counter key.
    pub key: String,
    /// Amount reserved.
    pub need: u64,
    /// Bucket it went into (set on admission).
    pub bucket: i64,
}

/// Where one budget's part of a reservation was counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In-process counters.
    Local,
    /// Redis.
    Redis,
}

#[derive(Debug)]
struct Hold {
    budget: Arc<Budget>,
    backend: Backend,
    entries: Vec<Entry>,
}

/// Usage the provider reported (or the gateway estimated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actual {
    /// Input tokens not served from a cache (cache writes included).
    pub input: u64,
    /// Input tokens read from a cache.
    pub cached_input: u64,
    /// Output tokens.
    pub output: u64,
}

/// How a request ended, for settlement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// The upstream answered (otherwise nothing is counted).
    pub reached_upstream: bool,
    /// Usage the provider reported.
    pub usage: Option<Actual>,
    /// Response bytes sent (the output estimate when no usage was reported).
    pub bytes_out: u64,
}

/// Amounts held for one admitted request; settled exactly once.
pub struct Reservation {
    holds: Vec<Hold>,
    ask: Ask,
    prices: Option<Arc<Prices>>,
    settled: bool,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

impl Reservation {
    /// Replace the reservation with what the request really used.
    pub fn settle(mut self, outcome: Outcome) {
        self.settle_inner(outcome);
    }

    fn settle_inner(&mut self, outcome: Outcome) {
        if self.settled {
            return;
        }
        self.settled = true;
        let actual = match (outcome.reached_upstream, outcome.usage) {
            (false, _) => Actual::default(),
            (true, Some(u)) => u,
            (true, None) => Actual {
                input: self.ask.input_tokens,
                cached_input: 0,
                output: if self.ask.embeddings {
                    0
                } else {
                    outcome.bytes_out.div_ceil(4)
                },
            },
        };
        let price = self.prices.as_ref().and_then(|p| p.get(&self.ask.model));
        for hold in std::mem::take(&mut self.holds) {
            let deltas: Vec<(Entry, i64)> = hold
                .entries
                .into_iter()
                .map(|e| {
                    let used = match e.limit.unit {
                        Unit::Requests => u64::from(outcome.reached_upstream),
                        Unit::Tokens => actual.input + actual.cached_input + actual.output,
                        Unit::MicroUsd => price.map_or(e.need, |p| cost(p, actual)),
                    };
                    if let Some(m) = &self.metrics {
                        e.limit
                            .consumed
                            .get_or_init(|| {
                                m.budget_consumed
                                    .get_or_create(&crate::telemetry::BudgetLabels {
                                        budget: hold.budget.key.to_string(),
                                        limit: e.limit.name.clone(),
                                    })
                                    .clone()
                            })
                            .inc_by(used);
                    }
                    let delta = used as i64 - e.need as i64;
                    (e, delta)
                })
                .collect();
            match hold.backend {
                Backend::Local => {
                    for (e, delta) in &deltas {
                        e.limit.counters.adjust(&e.key, e.bucket, *delta);
                    }
                }
                Backend::Redis => {
                    if let Some(store) = hold.budget.redis.clone() {
                        let budget = hold.budget.key.clone();
                        if let Ok(rt) = tokio::runtime::Handle::try_current() {
                            rt.spawn(async move { store.settle(&budget, &deltas).await });
                        }
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("holds", &self.holds)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Never settled: the request never produced a response, so nothing is counted.
        self.settle_inner(Outcome::default());
    }
}

/// Give back everything a hold reserved (a later budget refused the request).
fn release(hold: Hold) {
    match hold.backend {
        Backend::Local => {
            for e in &hold.entries {
                e.limit.counters.adjust(&e.key, e.bucket, -(e.need as i64));
            }
        }
        Backend::Redis => {
            if let (Some(store), Ok(rt)) = (
                hold.budget.redis.clone(),
                tokio::runtime::Handle::try_current(),
            ) {
                let budget = hold.budget.key.clone();
                let deltas: Vec<(Entry, i64)> = hold
                    .entries
                    .into_iter()
                    .map(|e| {
                        let d = -(e.need as i64);
                        (e, d)
                    })
                    .collect();
                rt.spawn(async move { store.settle(&budget, &deltas).await });
            }
        }
    }
}

/// Cost of some usage, in millionths of a dollar (rounded up).
pub fn cost(p: Price, a: Actual) -> u64 {
    let total = u128::from(a.input) * u128::from(p.input)
        + u128::from(a.cached_input) * u128::from(p.cached_input)
        + u128::from(a.output) * u128::from(p.output);
    u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Why a request was not admitted.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// A limit has no room.
    Limited {
        /// The budget.
        budget: ObjectKey,
        /// The limit.
        limit: String,
        /// What it counts.
        unit: Unit,
        /// The limit.
        max: u64,
        /// Used now (sliding estimate).
        used: u64,
        /// What the request would reserve (more than `max`: it can never fit).
        need: u64,
        /// Milliseconds until there is room.
        retry_after_ms: u64,
    },
    /// The shared store cannot be reached and the budget says `deny`.
    StoreUnavailable {
        /// The budget.
        budget: ObjectKey,
    },
    /// A USD limit counts a model without a price (fail closed).
    Unpriced {
        /// The budget.
        budget: ObjectKey,
        /// The limit.
        limit: String,
        /// The model.
        model: String,
    },
}

/// `1s`, `6m0s`, `20ms`: OpenAI's `x-ratelimit-reset-*` format.
pub fn openai_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

impl Refusal {
    /// The limit that refused, for the audit event and metrics.
    pub fn limit(&self) -> String {
        match self {
            Refusal::Limited { budget, limit, .. } | Refusal::Unpriced { budget, limit, .. } => {
                format!("{budget}/{limit}")
            }
            Refusal::StoreUnavailable { budget } => format!("{budget}/store"),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unpriced { .. } => StatusCode::FORBIDDEN,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Limited {
                budget,
                limit,
                unit,
                max,
                need,
                ..
            } if need > max => format!(
                "budget limit `{limit}` of LlmBudget {budget} allows {} {} per window and this request alone reserves {}: it can never fit; ask for fewer output tokens (max_tokens) or send less",
                unit.show(*max),
                unit.name(),
                unit.show(*need),
            ),
            Refusal::Limited {
                budget,
                limit,
                unit,
                max,
                used,
                retry_after_ms,
                ..
            } => format!(
                "budget limit `{limit}` of LlmBudget {budget} reached: {} of {} {} used in its window; retry after {}",
                unit.show(*used),
                unit.show(*max),
                unit.name(),
                openai_duration(*retry_after_ms)
            ),
            Refusal::StoreUnavailable { budget } => format!(
                "the budget store of LlmBudget {budget} is unreachable and its onStoreUnavailable is deny; retry later"
            ),
            Refusal::Unpriced {
                budget,
                limit,
                model,
            } => format!(
                "model `{model}` has no price for the USD limit `{limit}` of LlmBudget {budget}: its LlmProvider needs spec.pricing for it"
            ),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refusal::Limited {
                unit: Unit::MicroUsd,
                ..
            } => "insufficient_quota",
            Refusal::Limited { .. } => "rate_limit_exceeded",
            Refusal::StoreUnavailable { .. } => "budget_store_unavailable",
            Refusal::Unpriced { .. } => "model_not_priced",
        }
    }

    /// The refusal in the error shape of a route.
    pub fn response(&self, format: Format) -> Response {
        let status = self.status();
        let message = self.message();
        let body = match format {
            Format::OpenAi => json!({"error": {
                "message": message,
                "type": match self {
                    Refusal::Limited { unit: Unit::Requests, .. } => "requests",
                    Refusal::Limited { unit: Unit::Tokens, .. } => "tokens",
                    Refusal::Limited { .. } => "insufficient_quota",
                    Refusal::StoreUnavailable { .. } => "api_error",
                    Refusal::Unpriced { .. } => "permission_error",
                },
                "param": null,
                "code": self.code(),
            }}),
            Format::Anthropic => json!({"type": "error", "error": {
                "type": match status.as_u16() { 429 => "rate_limit_error", 403 => "permission_error", _ => "api_error" },
                "message": message,
            }}),
            Format::Gemini => json!({"error": {
                "code": status.as_u16(),
                "message": message,
                "status": match status.as_u16() { 429 => "RESOURCE_EXHAUSTED", 403 => "PERMISSION_DENIED", _ => "UNAVAILABLE" },
            }}),
            Format::Bedrock | Format::Cohere => json!({"message": message}),
        };
        let mut response = (status, body.to_string()).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if format == Format::Bedrock {
            h.insert(
                "x-amzn-errortype",
                HeaderValue::from_static(match status.as_u16() {
                    429 => "ThrottlingException",
                    403 => "AccessDeniedException",
                    _ => "ServiceUnavailableException",
                }),
            );
        }
        if let Refusal::Limited {
            unit,
            max,
            used,
            need,
            retry_after_ms,
            limit,
            ..
        } = self
        {
            // A request that can never fit gets no `retry-after`: waiting would not help.
            if need <= max {
                let secs = retry_after_ms.div_ceil(1000).max(1);
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                h.insert("retry-after-ms", HeaderValue::from(*retry_after_ms));
            }
            let suffix = match unit {
                Unit::Requests => "requests",
                Unit::Tokens => "tokens",
                Unit::MicroUsd => "usd",
            };
            let pairs = [
                (format!("x-ratelimit-limit-{suffix}"), unit.show(*max)),
                (
                    format!("x-ratelimit-remaining-{suffix}"),
                    unit.show(max.saturating_sub(*used)),
                ),
                (
                    format!("x-ratelimit-reset-{suffix}"),
                    openai_duration(*retry_after_ms),
                ),
            ];
            for (name, value) in pairs {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::try_from(name),
                    HeaderValue::from_str(&value),
                ) {
                    h.insert(n, v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(limit) {
                h.insert("x-portcullis-budget-limit", v);
            }
        }
        response
    }
}

impl BudgetTable {
    /// Whether any budget counts requests of this proxy.
    pub fn applies(&self, proxy: &ObjectKey) -> bool {
        self.by_proxy.contains_key(proxy)
    }

    /// Reserve what the request may use in every limit that counts it, or refuse.
    pub async fn admit(
        &self,
        ask: Ask,
        metrics: Option<Arc<crate::telemetry::Metrics>>,
    ) -> Result<Option<Reservation>, Refusal> {
        let Some(budgets) = self.by_proxy.get(&ask.proxy) else {
            return Ok(None);
        };
        let qualified = ask.qualified();
        let identity = if ask.identity.is_empty() {
            "anonymous"
        } else {
            ask.identity.as_str()
        };
        let mut holds: Vec<Hold> = Vec::new();
        let mut reservation_prices = None;
        // Dropped on a refusal: releases what earlier budgets held.
        struct Release(Vec<Hold>);
        impl Drop for Release {
            fn drop(&mut self) {
                for hold in self.0.drain(..) {
                    release(hold);
                }
            }
        }
        let now = window::now_ms();
        for budget in budgets {
            let prices = budget
                .prices
                .get(&ask.proxy)
                .and_then(|p| p.get(&ask.prefix))
                .cloned();
            let price = prices.as_ref().and_then(|p| p.get(&ask.model));
            let mut entries = Vec::new();
            for limit in &budget.limits {
                if !limit.counts(identity, &qualified) {
                    continue;
                }
                let out = if ask.embeddings {
                    0
                } else {
                    ask.max_output.unwrap_or(limit.default_output)
                };
                let need = match limit.unit {
                    Unit::Requests => 1,
                    Unit::Tokens => ask.input_tokens.saturating_add(out),
                    Unit::MicroUsd => match price {
                        Some(p) => cost(
                            p,
                            Actual {
                                input: ask.input_tokens,
                                cached_input: 0,
                                output: out,
                            },
                        ),
                        None => {
                            drop(Release(holds));
                            return Err(refused(
                                &metrics,
                                Refusal::Unpriced {
                                    budget: budget.key.clone(),
                                    limit: limit.name.clone(),
                                    model: qualified,
                                },
                            ));
                        }
                    },
                };
                entries.push(Entry {
                    limit: limit.clone(),
                    key: ask.key(limit.per, &qualified),
                    need,
                    bucket: 0,
                });
            }
            if entries.is_empty() {
                continue;
            }
            if reservation_prices.is_none() {
                reservation_prices = prices;
            }
            let backend = match &budget.redis {
                None => local::admit(&budget.key, &mut entries, now).map(|()| Backend::Local),
                Some(store) => match store.admit(&budget.key, &mut entries, now).await {
                    Ok(redis::Admission::Admitted) => Ok(Backend::Redis),
                    Ok(redis::Admission::Refused(r)) => Err(r),
                    Err(()) => match budget.on_unavailable {
                        StoreUnavailable::Deny => Err(Refusal::StoreUnavailable {
                            budget: budget.key.clone(),
                        }),
                        StoreUnavailable::Allow => {
                            local::admit(&budget.key, &mut entries, now).map(|()| Backend::Local)
                        }
                    },
                },
            };
            match backend {
                Ok(backend) => holds.push(Hold {
                    budget: budget.clone(),
                    backend,
                    entries,
                }),
                Err(refusal) => {
                    drop(Release(holds));
                    return Err(refused(&metrics, refusal));
                }
            }
        }
        if holds.is_empty() {
            return Ok(None);
        }
        Ok(Some(Reservation {
            holds,
            prices: reservation_prices,
            settled: false,
            metrics,
            ask,
        }))
    }
}

fn refused(metrics: &Option<Arc<crate::telemetry::Metrics>>, refusal: Refusal) -> Refusal {
    if let Some(m) = metrics {
        let (budget, limit) = match &refusal {
            Refusal::Limited { budget, limit, .. } | Refusal::Unpriced { budget, limit, .. } => {
                (budget.to_string(), limit.clone())
            }
            Refusal::StoreUnavailable { budget } => (budget.to_string(), "store".to_owned()),
        };
        m.budget_refusals
            .get_or_create(&crate::telemetry::BudgetLabels { budget, limit })
            .inc();
    }
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, unit: Unit, max: u64) -> Arc<Limit> {
        Arc::new(Limit {
            name: name.to_owned(),
            per: Per::Proxy,
            unit,
            max,
            window: Window::Rolling(60_000),
            models: None,
            identities: None,
            default_output: 100,
            identity_hash: 0,
            counters: Arc::default(),
            consumed: Default::default(),
        })
    }

    fn table(limits: Vec<Arc<Limit>>) -> BudgetTable {
        let key = ObjectKey::new("ai", "b");
        let budget = Budget {
            key: key.clone(),
            generation: Some(1),
            targets: None,
            limits,
            prices: HashMap::new(),
            store: StoreSpec::InProcess,
            redis: None,
            on_unavailable: StoreUnavailable::Deny,
        };
        let compiled = Compiled {
            good: [(key, Arc::new(budget))].into_iter().collect(),
            failed: Default::default(),
        };
        merge(
            &BudgetTable::default(),
            &compiled,
            [ObjectKey::new("ai", "p")].iter(),
        )
    }

    fn ask(input: u64, max_output: Option<u64>) -> Ask {
        Ask {
            proxy: ObjectKey::new("ai", "p"),
            identity: "alice".into(),
            prefix: "openai".into(),
            model: "m".into(),
            input_tokens: input,
            max_output,
            embeddings: false,
        }
    }

    fn used(l: &Limit) -> u64 {
        l.counters
            .top(l.window, window::now_ms(), 1)
            .first()
            .map_or(0, |u| u.used)
    }

    #[tokio::test]
    async fn reservations_settle_to_usage_and_are_never_counted_twice() {
        let t = table(vec![limit("tokens", Unit::Tokens, 1000)]);
        let l = t.budgets.values().next().map(|b| b.limits[0].clone());
        let Some(l) = l else { panic!("no limit") };
        let r = t.admit(ask(50, Some(500)), None).await;
        let Ok(Some(r)) = r else { panic!("{r:?}") };
        assert_eq!(used(&l), 550);
        r.settle(Outcome {
            reached_upstream: true,
            usage: Some(Actual {
                input: 40,
                cached_input: 10,
                output: 20,
            }),
            bytes_out: 0,
        });
        assert_eq!(used(&l), 70);
        // A reservation dropped without a response counts nothing.
        let r = t.admit(ask(50, Some(500)), None).await;
        assert!(matches!(r, Ok(Some(_))));
        drop(r);
        assert_eq!(used(&l), 70);
        // No usage reported: the input estimate and the bytes sent (4 per token).
        let Ok(Some(r)) = t.admit(ask(50, Some(500)), None).await else {
            panic!()
        };
        r.settle(Outcome {
            reached_upstream: true,
            usage: None,
            bytes_out: 400,
        });
        assert_eq!(used(&l), 70 + 50 + 100);
        // Without max_tokens the limit's default allowance is reserved; a request that cannot
        // fit is refused with the time until it would.
        let refused = t.admit(ask(900, None), None).await;
        let Err(Refusal::Limited {
            used: now,
            max,
            retry_after_ms,
            ..
        }) = refused
        else {
            panic!("{refused:?}")
        };
        assert_eq!((now, max), (220, 1000));
        assert!(retry_after_ms > 0);
    }

    #[tokio::test]
    async fn a_refusal_by_one_limit_releases_what_the_others_took() {
        let t = table(vec![
            limit("requests", Unit::Requests, 10),
            limit("tokens", Unit::Tokens, 100),
        ]);
        let Some(b) = t.budgets.values().next().cloned() else {
            panic!()
        };
        let r = t.admit(ask(10, Some(200)), None).await;
        assert!(
            matches!(&r, Err(Refusal::Limited { limit, .. }) if limit == "tokens"),
            "{r:?}"
        );
        assert_eq!(used(&b.limits[0]), 0, "the request count was given back");
        assert!(matches!(
            t.admit(ask(10, Some(20)), None).await,
            Ok(Some(_))
        ));
    }

    #[test]
    fn refusals_speak_each_routes_shape() {
        let r = Refusal::Limited {
            budget: ObjectKey::new("ai", "b"),
            limit: "rpm".into(),
            unit: Unit::Requests,
            max: 5,
            used: 5,
            need: 1,
            retry_after_ms: 1500,
        };
        let openai = r.response(Format::OpenAi);
        assert_eq!(openai.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = openai.headers();
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["x-ratelimit-limit-requests"], "5");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "2s");
        let bedrock = r.response(Format::Bedrock);
        assert_eq!(bedrock.headers()["x-amzn-errortype"], "ThrottlingException");
        let down = Refusal::StoreUnavailable {
            budget: ObjectKey::new("ai", "b"),
        };
        assert_eq!(
            down.response(Format::Gemini).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(openai_duration(360_000), "6m0s");
        assert_eq!(openai_duration(20), "20ms");
    }

    #[test]
    fn counter_keys_are_bounded() {
        let long = "x".repeat(10_000);
        let key = bounded_key(long.clone());
        assert!(key.len() < 210);
        assert_ne!(bounded_key(format!("{long}y")), key);
        assert_eq!(bounded_key("alice".into()), "alice");
    }

    #[test]
    fn peeked_facts_are_the_parsed_facts() {
        let bodies = [
            r#"{"model":" gpt-x ","max_tokens":12,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","max_completion_tokens":5,"max_tokens":9,"stream_options":{"include_usage":true}}"#,
            r#"{"contents":[],"generationConfig":{"maxOutputTokens":77,"temperature":0.1}}"#,
            r#"{"modelId":"x","inferenceConfig":{"maxTokens":3}}"#,
            r#"{"model":"","max_output_tokens":4}"#,
            r#"{"model":null,"max_tokens":null}"#,
        ];
        for body in bodies {
            let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!(
                Facts::peek(body.as_bytes()),
                Some(Facts::of(&value)),
                "{body}"
            );
        }
        // What the peek cannot read exactly is left to the whole parse.
        for body in [
            r#"{"max_tokens":1.5}"#,
            r#"{"model":1}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"["model"]"#,
            r#"{"stream":"yes"}"#,
        ] {
            assert_eq!(Facts::peek(body.as_bytes()), None, "{body}");
        }
        let last: serde_json::Value =
            serde_json::from_str(r#"{"model":"a","model":"b","max_tokens":-1}"#)
                .unwrap_or_default();
        assert_eq!(Facts::of(&last).model.as_deref(), Some("b"));
        assert_eq!(Facts::of(&last).max_output, None);
    }
}
