//! Failover on native routes: a request to a pool's prefix goes to one member after another
//! (same path, same body; each member's own base URL and credential) until one answers with
//! a success, or with an error that fails at once. The members are balanced and ejected like
//! any target ([`super::health`]).
//!
//! The body is sent again on each attempt, so the caller buffers it (within the body limit).
//! A native answer counts as served once its headers arrive with a success status (within
//! `firstByteTimeout`); an error answer is classified from (at most 64 KiB of) its body and
//! handed on whole when it is the last.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, Method};

use super::attempt::{Attempt, Plan, Planned, run};
use super::health::HealthKey;
use super::policy::{ERROR_BODY_LIMIT, Failure, FailureKind, classify};
use crate::config::{Route, Upstream};
use crate::proxy::upstream::{self, Answer};
use crate::proxy::{ApiError, AppState, Exchange};

/// How metrics and audit lines name a pool member: `prefix@provider`.
pub fn member_label(prefix: &str, member: &Upstream) -> String {
    format!("{prefix}@{}", member.provider.name)
}

type Sent = Result<(Answer, Arc<Upstream>), ApiError>;

/// Send a native request to a pool: `url_for` gives a member's URL for this request. Returns
/// the answer to relay and the member that gave it (its timeout applies to the body).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    state: &AppState,
    exchange: &Exchange,
    route: &Route,
    url_for: impl Fn(&Upstream) -> String,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Sent {
    let targets = route
        .pool
        .iter()
        .map(|member| Planned {
            target: member.clone(),
            key: HealthKey {
                upstream: member.catalog_key,
                model: Arc::from(""),
            },
            weight: 1.0,
            label: Arc::from(member_label(&route.prefix, member)),
        })
        .collect::<Vec<_>>();
    let budget = route
        .pool
        .iter()
        .map(|u| u.timeout)
        .max()
        .unwrap_or(crate::config::compile::DEFAULT_TIMEOUT);
    let plan = Plan {
        targets,
        fallbacks: Vec::new(),
        policy: route.retry.clone(),
        budget,
    };
    let first_byte = plan.policy.first_byte_timeout;
    let prefix = route.prefix.as_str();
    let metrics = state.metrics.clone();
    let proxy = exchange.proxy.clone();
    let finished = run(
        &plan,
        &state.health,
        |member: &Arc<Upstream>, _| {
            let member = member.clone();
            let url = url_for(&member);
            let (method, headers, body) = (method.clone(), headers.clone(), body.clone());
            async move {
                let attempt = async {
                    let sent = upstream::send(
                        &state.client,
                        &member,
                        prefix,
                        method,
                        &url,
                        headers,
                        reqwest::Body::from(body),
                    )
                    .await;
                    settle(sent, member.clone()).await
                };
                match first_byte {
                    None => attempt.await,
                    Some(limit) => match tokio::time::timeout(limit, attempt).await {
                        Ok(settled) => settled,
                        Err(_) => Attempt::Failed {
                            failure: Failure::of(FailureKind::Timeout),
                            value: Err(ApiError::UpstreamTimeout {
                                prefix: prefix.to_owned(),
                                secs: limit.as_secs().max(1),
                            }),
                        },
                    },
                }
            }
        },
        |record| {
            let labels = crate::telemetry::AttemptLabels {
                proxy: proxy.clone(),
                target: record.target.to_string(),
                outcome: record.outcome,
            };
            metrics.upstream_attempts.get_or_create(&labels).inc();
            metrics
                .upstream_attempt_duration
                .get_or_create(&labels)
                .observe(record.duration.as_secs_f64());
        },
    )
    .await;
    let Some(finished) = finished else {
        return Err(ApiError::UpstreamUnreachable {
            prefix: prefix.to_owned(),
            detail: "no member of the pool could be tried".to_owned(),
        });
    };
    let attempts = finished.attempts;
    crate::policy::audit::update(&exchange.audit, |d| d.attempts = attempts);
    // The answer names its member (`x-portcullis-served-by`) where the native route builds
    // the client's response.
    finished.value
}

/// Settle a native answer: success is served, an error is classified and kept whole.
async fn settle(sent: Result<Answer, ApiError>, member: Arc<Upstream>) -> Attempt<Sent> {
    let answer = match sent {
        Err(e) => {
            let kind = match &e {
                ApiError::UpstreamTimeout { .. } => FailureKind::Timeout,
                ApiError::UpstreamUnreachable { .. } => FailureKind::ConnectError,
                _ => FailureKind::Rejected,
            };
            return Attempt::Failed {
                failure: Failure::of(kind),
                value: Err(e),
            };
        }
        Ok(answer) => answer,
    };
    let status = answer.response.status();
    if status.is_success() {
        let ttfb = answer.ttfb;
        return Attempt::Served {
            value: Ok((answer, member)),
            ttfb,
        };
    }
    let Answer { response, ttfb } = answer;
    let headers = response.headers().clone();
    let mut stream = response.bytes_stream();
    let mut head = BytesMut::new();
    let mut complete = false;
    while head.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(member.timeout, stream.next()).await {
            Ok(Some(Ok(chunk))) => head.extend_from_slice(&chunk),
            Ok(None) => {
                complete = true;
                break;
            }
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    let failure = classify(member.provider_type, status, &headers, &head);
    let head = head.freeze();
    let body = if complete || head.len() < ERROR_BODY_LIMIT {
        reqwest::Body::from(head)
    } else {
        let first = futures_util::stream::once(async move { Ok::<Bytes, reqwest::Error>(head) });
        reqwest::Body::wrap_stream(first.chain(stream))
    };
    let mut rebuilt = http::Response::new(body);
    *rebuilt.status_mut() = status;
    *rebuilt.headers_mut() = headers;
    Attempt::Failed {
        failure,
        value: Ok((
            Answer {
                response: reqwest::Response::from(rebuilt),
                ttfb,
            },
            member,
        )),
    }
}
