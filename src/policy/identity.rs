//! Client identity: API keys (hashed at compile time, compared in constant time), JWTs from
//! an external identity provider (JWKS cached, fetched again on an unknown `kid`), and
//! Kubernetes ServiceAccount tokens (`TokenReview`, cached for the token's remaining
//! lifetime, at most [`REVIEW_TTL`]).
//!
//! [`compile`] is pure; [`Runtime`] holds the caches and does the I/O. No credential is ever
//! logged or put in an error: failures carry a reason only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use globset::GlobSet;
use http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use super::PolicyProblem;
use crate::crd::ClientAuthSpec;

/// Longest a `TokenReview` answer is trusted.
pub const REVIEW_TTL: Duration = Duration::from_secs(120);
/// How long a refused token is remembered (so a retry storm does not hammer the API server).
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How long a JWKS is used before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// A JWKS is fetched at most this often when tokens name unknown key IDs.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(2);
/// Largest JWK set read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Cache entries kept at most (per cache); the cache is cleared when it grows past this.
const MAX_CACHE: usize = 10_000;
/// Failures from one address allowed per window before answers are slowed down.
const FREE_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(3);

/// `clientAuth`, compiled.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    /// Identity → SHA-256 of the key.
    pub api_keys: Option<ApiKeys>,
    /// ServiceAccount tokens.
    pub kubernetes: Option<KubernetesAuth>,
    /// External JWTs.
    pub jwt: Option<JwtAuth>,
}

/// Client keys, held only as hashes.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<(String, [u8; 32])>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(id, _)| id))
            .finish()
    }
}

impl ApiKeys {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity whose key this is. Every entry is compared, in constant time.
    pub fn identify(&self, presented: &str) -> Option<&str> {
        let hash = sha256(presented.as_bytes());
        let mut found = None;
        for (identity, key) in &self.0 {
            if bool::from(key.ct_eq(&hash)) {
                found = Some(identity.as_str());
            }
        }
        found
    }
}

/// `clientAuth.kubernetes`, compiled.
#[derive(Clone, Debug)]
pub struct KubernetesAuth {
    /// Audiences asked of `TokenReview`.
    pub audiences: Vec<String>,
    /// `namespace/name` globs.
    pub service_accounts: GlobSet,
}

/// `clientAuth.jwt`, compiled.
#[derive(Clone, Debug)]
pub struct JwtAuth {
    /// Required `iss`.
    pub issuer: String,
    /// JWKS URL.
    pub jwks_uri: String,
    /// Accepted `aud` values (empty: not checked).
    pub audiences: Vec<String>,
    /// Claim naming the caller.
    pub identity_claim: String,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The identity matched by `access` rules and written in audit events.
    pub name: String,
    /// `anonymous`, `apiKey`, `jwt` or `kubernetes`.
    pub method: &'static str,
}

impl Identity {
    /// The caller of a proxy without `clientAuth`.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".to_owned(),
            method: "anonymous",
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Compile `clientAuth`; problems name the field and never a key.
pub fn compile(
    namespace: &str,
    spec: &ClientAuthSpec,
    secrets: super::SecretLookup<'_>,
    problems: &mut Vec<PolicyProblem>,
) -> ClientAuth {
    let mut out = ClientAuth::default();
    if spec.api_keys.is_none() && spec.kubernetes.is_none() && spec.jwt.is_none() {
        problems.push((
            "spec.clientAuth".to_owned(),
            "InvalidSpec",
            "clientAuth names no method: set apiKeys, kubernetes or jwt (or remove clientAuth to accept anonymous callers)".to_owned(),
        ));
    }
    if let Some(api_keys) = &spec.api_keys {
        let field = "spec.clientAuth.apiKeys.secretRef";
        let secret = format!("{namespace}/{}", api_keys.secret_ref.name);
        match secrets(&api_keys.secret_ref.name) {
            None => problems.push((
                field.to_owned(),
                "SecretNotFound",
                format!("Secret {secret} not found; create it with one entry per client: `identity: key`"),
            )),
            Some(data) => {
                let mut keys = Vec::new();
                for (identity, value) in data {
                    match std::str::from_utf8(value).map(str::trim) {
                        Ok(v) if !v.is_empty() => keys.push((identity.clone(), sha256(v.as_bytes()))),
                        _ => problems.push((
                            field.to_owned(),
                            "InvalidSecret",
                            format!("entry `{identity}` of Secret {secret} is empty or not UTF-8 text"),
                        )),
                    }
                }
                if data.is_empty() {
                    problems.push((
                        field.to_owned(),
                        "InvalidSecret",
                        format!("Secret {secret} holds no keys; add one entry per client: `identity: key`"),
                    ));
                }
                out.api_keys = Some(ApiKeys(keys));
            }
        }
    }
    if let Some(k) = &spec.kubernetes {
        if k.service_accounts.is_empty() {
            problems.push((
                "spec.clientAuth.kubernetes.serviceAccounts".to_owned(),
                "InvalidSpec",
                "list the ServiceAccounts allowed to call, as `namespace/name` globs (`ai/*`)"
                    .to_owned(),
            ));
        }
        for (i, sa) in k.service_accounts.iter().enumerate() {
            if !sa.contains('/') {
                problems.push((
                    format!("spec.clientAuth.kubernetes.serviceAccounts[{i}]"),
                    "InvalidSpec",
                    format!("`{sa}` must be `namespace/name` (globs allowed: `ai/*`)"),
                ));
            }
        }
        out.kubernetes = Some(KubernetesAuth {
            audiences: k.audiences.clone().unwrap_or_default(),
            service_accounts: super::globs(
                &k.service_accounts,
                "spec.clientAuth.kubernetes.serviceAccounts",
                problems,
            ),
        });
    }
    if let Some(j) = &spec.jwt {
        match url::Url::parse(&j.jwks_uri) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.username().is_empty()
                    && u.password().is_none() => {}
            _ => problems.push((
                "spec.clientAuth.jwt.jwksUri".to_owned(),
                "InvalidSpec",
                "jwksUri must be an absolute http(s) URL without credentials".to_owned(),
            )),
        }
        if j.issuer.trim().is_empty() {
            problems.push((
                "spec.clientAuth.jwt.issuer".to_owned(),
                "InvalidSpec",
                "issuer is required (the `iss` claim tokens must carry)".to_owned(),
            ));
        }
        out.jwt = Some(JwtAuth {
            issuer: j.issuer.clone(),
            jwks_uri: j.jwks_uri.clone(),
            audiences: j.audiences.clone().unwrap_or_default(),
            identity_claim: j
                .identity_claim
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "sub".to_owned()),
        });
    }
    out
}

/// The credential a client presented: `Authorization: Bearer`, `x-api-key`, `api-key` or
/// `x-goog-api-key`.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some((scheme, token)) = v.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some(token.trim().to_owned());
        }
    }
    ["x-api-key", "api-key", "x-goog-api-key"]
        .into_iter()
        .filter_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Why a caller was refused (no credential detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential was sent.
    Missing,
    /// A credential was sent and no method accepted it.
    Invalid,
    /// A method could not be checked (JWKS or API server unreachable).
    Unavailable,
}

impl AuthFailure {
    /// Label for metrics and audit.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Invalid => "invalid_credentials",
            Self::Unavailable => "verifier_unavailable",
        }
    }
}

/// One issuer's key set, and the state of its fetches.
#[derive(Default)]
struct Jwks {
    /// The last good set and when it was fetched.
    set: Option<(JwkSet, Instant)>,
    /// Consecutive failed fetches, and when the last one failed.
    failed: Option<(u32, Instant)>,
}

/// Wait after `n` consecutive failed JWKS fetches before the next: 1 s, 2 s, 4 s … 60 s.
fn jwks_backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// TokenReview calls allowed per second, and the burst above it: every distinct JWT-shaped
/// string a caller invents would otherwise cost the API server a call.
const TOKEN_REVIEW_RATE: f64 = 20.0;
const TOKEN_REVIEW_BURST: f64 = 50.0;

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full() -> Self {
        Self {
            tokens: TOKEN_REVIEW_BURST,
            at: Instant::now(),
        }
    }

    /// Take one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * TOKEN_REVIEW_RATE;
        self.tokens = (self.tokens + refill).min(TOKEN_REVIEW_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A cached `TokenReview` answer: the username (when authenticated) and until when.
type Review = (Option<String>, Instant);

struct Failures {
    count: u32,
    since: Instant,
}

/// Caches and clients of identity checks, for the life of the process.
pub struct Runtime {
    http: reqwest::Client,
    /// Per issuer (JWKS URI, from configuration): the map's lock is never held across I/O;
    /// each issuer's own lock makes one fetch at a time for that issuer.
    jwks: Mutex<HashMap<String, Arc<Mutex<Jwks>>>>,
    kube: Mutex<Option<kube::Client>>,
    reviews: Mutex<HashMap<[u8; 32], Review>>,
    review_calls: Mutex<Bucket>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl Runtime {
    /// A runtime using `http` for JWKS fetches. The Kubernetes client is created on first use
    /// (only proxies with `clientAuth.kubernetes` need a cluster).
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            jwks: Mutex::new(HashMap::new()),
            kube: Mutex::new(None),
            reviews: Mutex::new(HashMap::new()),
            review_calls: Mutex::new(Bucket::full()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Identify the caller of a proxy with `auth`.
    pub async fn authenticate(
        &self,
        auth: &ClientAuth,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthFailure> {
        let Some(token) = presented(headers) else {
            return Err(AuthFailure::Missing);
        };
        if let Some(keys) = &auth.api_keys
            && let Some(id) = keys.identify(&token)
        {
            return Ok(Identity {
                name: id.to_owned(),
                method: "apiKey",
            });
        }
        let looks_like_jwt = token.split('.').count() == 3;
        let mut failure = AuthFailure::Invalid;
        if let Some(jwt) = &auth.jwt
            && looks_like_jwt
        {
            match self.verify_jwt(jwt, &token).await {
                Ok(name) => {
                    return Ok(Identity {
                        name,
                        method: "jwt",
                    });
                }
                Err(f) => failure = f,
            }
        }
        if let Some(k) = &auth.kubernetes
            && looks_like_jwt
        {
            match self.review(k, &token).await {
                Ok(name) => {
                    return Ok(Identity {
                        name,
                        method: "kubernetes",
                    });
                }
                Err(AuthFailure::Unavailable) => failure = AuthFailure::Unavailable,
                Err(_) => {}
            }
        }
        Err(failure)
    }

    async fn jwks(&self, uri: &str, kid: Option<&str>) -> Result<JwkSet, AuthFailure> {
        let entry = {
            // Held only to find the issuer's entry, never across a fetch.
            let mut map = self.jwks.lock().await;
            if map.len() > MAX_CACHE && !map.contains_key(uri) {
                map.clear();
            }
            map.entry(uri.to_owned()).or_default().clone()
        };
        let mut entry = entry.lock().await;
        let now = Instant::now();
        let fresh = entry.set.as_ref().is_some_and(|(set, fetched)| {
            let age = now.saturating_duration_since(*fetched);
            let has_kid = kid.is_none_or(|k| set.find(k).is_some());
            age < JWKS_TTL && (has_kid || age < JWKS_MIN_REFETCH)
        });
        let backing_off = entry
            .failed
            .is_some_and(|(n, at)| now.saturating_duration_since(at) < jwks_backoff(n));
        if !fresh && !backing_off {
            match self.fetch_jwks(uri).await {
                Ok(set) => {
                    entry.set = Some((set, Instant::now()));
                    entry.failed = None;
                }
                Err(e) => {
                    let n = entry.failed.map_or(1, |(n, _)| n.saturating_add(1));
                    entry.failed = Some((n, Instant::now()));
                    tracing::warn!(jwks_uri = %uri, retry_in = ?jwks_backoff(n), "cannot fetch the JWKS: {e}");
                }
            }
        }
        // The last good set, if any, keeps serving while fetches fail.
        entry
            .set
            .as_ref()
            .map(|(set, _)| set.clone())
            .ok_or(AuthFailure::Unavailable)
    }

    async fn fetch_jwks(&self, uri: &str) -> Result<JwkSet, String> {
        let response = self
            .http
            .get(uri)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "request failed: {}",
                    std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), ToString::to_string)
                )
            })?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let bytes = crate::net::read_limited(response, MAX_JWKS_BYTES)
            .await
            .map_err(|e| match e {
                crate::net::CappedRead::TooBig => {
                    format!("larger than {} KiB", MAX_JWKS_BYTES / 1024)
                }
                crate::net::CappedRead::Transport(e) => e.to_string(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| format!("not a JWK set: {e}"))
    }

    async fn verify_jwt(&self, cfg: &JwtAuth, token: &str) -> Result<String, AuthFailure> {
        use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
        let header = decode_header(token).map_err(|_| AuthFailure::Invalid)?;
        let set = self.jwks(&cfg.jwks_uri, header.kid.as_deref()).await?;
        let jwk = match &header.kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or(AuthFailure::Invalid)?;
        if let Some(alg) = jwk.common.key_algorithm
            && format!("{alg:?}") != format!("{:?}", header.alg)
        {
            return Err(AuthFailure::Invalid);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| AuthFailure::Invalid)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&cfg.issuer]);
        if cfg.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&cfg.audiences);
        }
        validation.leeway = 30;
        validation.validate_nbf = true;
        let data = decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|_| AuthFailure::Invalid)?;
        match data.claims.get(&cfg.identity_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(AuthFailure::Invalid),
        }
    }

    async fn kube_client(&self) -> Result<kube::Client, AuthFailure> {
        let mut slot = self.kube.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        match kube::Client::try_default().await {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                tracing::warn!("clientAuth.kubernetes: no Kubernetes API client available: {e}");
                Err(AuthFailure::Unavailable)
            }
        }
    }

    async fn review(&self, cfg: &KubernetesAuth, token: &str) -> Result<String, AuthFailure> {
        let mut hasher_input = token.as_bytes().to_vec();
        for a in &cfg.audiences {
            hasher_input.push(0);
            hasher_input.extend_from_slice(a.as_bytes());
        }
        let cache_key = sha256(&hasher_input);
        let cached = {
            let reviews = self.reviews.lock().await;
            reviews
                .get(&cache_key)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(user, _)| user.clone())
        };
        let user = match cached {
            Some(user) => user,
            None => {
                let allowed = self.review_calls.lock().await.take(Instant::now());
                if !allowed {
                    tracing::warn!(
                        "TokenReview calls over {TOKEN_REVIEW_RATE}/s: refusing unknown tokens until the rate drops"
                    );
                    return Err(AuthFailure::Unavailable);
                }
                let (user, ttl) = self.token_review(cfg, token).await?;
                let mut reviews = self.reviews.lock().await;
                if reviews.len() > MAX_CACHE {
                    reviews.retain(|_, (_, until)| *until > Instant::now());
                    if reviews.len() > MAX_CACHE {
                        reviews.clear();
                    }
                }
                reviews.insert(cache_key, (user.clone(), Instant::now() + ttl));
                user
            }
        };
        let user = user.ok_or(AuthFailure::Invalid)?;
        let sa = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, name)| format!("{ns}/{name}"))
            .ok_or(AuthFailure::Invalid)?;
        if cfg.service_accounts.is_match(&sa) {
            Ok(user)
        } else {
            Err(AuthFailure::Invalid)
        }
    }

    /// Ask the API server; the username when authenticated, and how long to trust the answer.
    async fn token_review(
        &self,
        cfg: &KubernetesAuth,
        token: &str,
    ) -> Result<(Option<String>, Duration), AuthFailure> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        use kube::api::{Api, PostParams};
        let client = self.kube_client().await?;
        let api: Api<TokenReview> = Api::all(client);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!cfg.audiences.is_empty()).then(|| cfg.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = match api.create(&PostParams::default(), &review).await {
            Ok(a) => a,
            Err(e) => {
                // The error of kube never holds the token it sent.
                tracing::warn!("TokenReview failed: {e}");
                return Err(AuthFailure::Unavailable);
            }
        };
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok((None, NEGATIVE_TTL));
        }
        if !cfg.audiences.is_empty() {
            let granted = status.audiences.clone().unwrap_or_default();
            if !cfg.audiences.iter().any(|a| granted.contains(a)) {
                return Ok((None, NEGATIVE_TTL));
            }
        }
        let user = status.user.and_then(|u| u.username);
        Ok((user, remaining_lifetime(token).min(REVIEW_TTL)))
    }

    /// Count a failure from `addr`; the delay to wait before answering.
    pub async fn failed(&self, addr: Option<IpAddr>) -> Duration {
        let Some(addr) = addr else {
            return Duration::ZERO;
        };
        let mut failures = self.failures.lock().await;
        if failures.len() > MAX_CACHE {
            failures.retain(|_, f| f.since.elapsed() < FAILURE_WINDOW);
        }
        let entry = failures.entry(addr).or_insert(Failures {
            count: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() > FAILURE_WINDOW {
            entry.count = 0;
            entry.since = Instant::now();
        }
        entry.count = entry.count.saturating_add(1);
        failure_delay(entry.count)
    }
}

/// Delay after the `n`th failure within the window: none for the first few, then growing.
pub fn failure_delay(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let excess = n - FREE_FAILURES;
    (Duration::from_millis(250) * excess).min(MAX_DELAY)
}

/// A JWT's remaining lifetime from its unverified `exp` (the API server has verified it);
/// [`REVIEW_TTL`] when it has none.
fn remaining_lifetime(token: &str) -> Duration {
    use base64::Engine;
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("exp").and_then(serde_json::Value::as_u64));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match exp {
        Some(exp) => Duration::from_secs(exp.saturating_sub(now)),
        None => REVIEW_TTL,
    }
}

/// A shared runtime.
pub type SharedRuntime = Arc<Runtime>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys_are_found_by_hash() {
        let keys = ApiKeys(vec![
            ("alice".into(), sha256(b"sk-alice")),
            ("bob".into(), sha256(b"sk-bob")),
        ]);
        assert_eq!(keys.identify("sk-bob"), Some("bob"));
        assert_eq!(keys.identify("sk-bo"), None);
        assert_eq!(keys.identify(""), None);
        assert!(!format!("{keys:?}").contains("sk-"));
    }

    #[test]
    fn credentials_are_read_from_every_sdk_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-goog-api-key", HeaderValue::from_static("g"));
        assert_eq!(presented(&h).as_deref(), Some("g"));
        h.insert("x-api-key", HeaderValue::from_static("a"));
        assert_eq!(presented(&h).as_deref(), Some("a"));
        h.insert("authorization", HeaderValue::from_static("Bearer  b "));
        assert_eq!(presented(&h).as_deref(), Some("b"));
        h.insert("authorization", HeaderValue::from_static("Basic xyz"));
        assert_eq!(presented(&h).as_deref(), Some("a"));
    }

    #[test]
    fn jwks_fetch_failures_back_off() {
        assert_eq!(jwks_backoff(1), Duration::from_secs(1));
        assert_eq!(jwks_backoff(2), Duration::from_secs(2));
        assert_eq!(jwks_backoff(4), Duration::from_secs(8));
        assert_eq!(jwks_backoff(100), Duration::from_secs(60));
    }

    #[test]
    fn token_reviews_are_rate_limited() {
        let mut b = Bucket::full();
        let t0 = b.at;
        let granted = (0..200).filter(|_| b.take(t0)).count();
        assert_eq!(granted, TOKEN_REVIEW_BURST as usize);
        // One second later, the rate's worth more.
        let later = t0 + Duration::from_secs(1);
        let granted = (0..200).filter(|_| b.take(later)).count();
        assert_eq!(granted, TOKEN_REVIEW_RATE as usize);
    }

    #[tokio::test]
    async fn one_issuer_down_does_not_hold_another_and_is_not_hammered() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A JWKS endpoint that accepts and never answers, counting connections.
        let slow = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let slow_addr = slow.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = slow.accept().await {
                held.push(s);
            }
        });
        // A JWKS endpoint that always fails (500), counting requests.
        let failing = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let failing_addr = failing.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = failing.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let client = crate::net::http_client(None).unwrap_or_else(|e| panic!("{e}"));
        let rt = Arc::new(Runtime::new(client));
        let stuck = rt.clone();
        let slow_uri = format!("http://{slow_addr}/jwks");
        tokio::spawn(async move {
            let _ = stuck.jwks(&slow_uri, None).await;
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another issuer answers at once although the first one's fetch hangs.
        let failing_uri = format!("http://{failing_addr}/jwks");
        let started = Instant::now();
        for _ in 0..20 {
            assert!(matches!(
                rt.jwks(&failing_uri, Some("k")).await,
                Err(AuthFailure::Unavailable)
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Twenty requests, one fetch: the failure is backed off.
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failures_are_slowed_after_a_few() {
        assert_eq!(failure_delay(1), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES), Duration::ZERO);
        assert!(failure_delay(FREE_FAILURES + 1) > Duration::ZERO);
        assert_eq!(failure_delay(10_000), MAX_DELAY);
    }

    #[test]
    fn review_lifetime_comes_from_exp() {
        use base64::Engine;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"exp\":{}}}", now + 30));
        let ttl = remaining_lifetime(&format!("h.{payload}.s"));
        assert!(ttl <= Duration::from_secs(30) && ttl >= Duration::from_secs(28));
        assert_eq!(remaining_lifetime("garbage"), REVIEW_TTL);
    }
}
