//! Model Router requests to providers that do not speak OpenAI (Anthropic, Gemini, Vertex AI,
//! Cohere, Bedrock): the request is translated, sent to the provider's native endpoint, and the
//! answer is translated back — a stream event by event, as the upstream sends it (SSE, or AWS
//! event-stream frames for Bedrock).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::upstream::{self, Answer};
use super::{AppState, Exchange};
use crate::config::{Route, Upstream};
use crate::formats::Format;
use crate::formats::bedrock::eventstream;
use crate::formats::openai::{ChatRequest, ChatResponse, ErrorBody};
use crate::formats::sse::{DONE, SseEvent, SseParser};
use crate::formats::{StreamOut, TranslateError, Translated, anthropic, bedrock, cohere, gemini};

pub use crate::formats::anthropic::ANTHROPIC_VERSION;

/// The translation of one format, chosen by the closed [`Format`] enum. The OpenAI format
/// is never translated (the router forwards it), so its arms refuse rather than guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialect(pub Format);

fn forwarded() -> TranslateError {
    TranslateError::Unsupported {
        param: "model".to_owned(),
        reason: "the OpenAI format is forwarded, not translated".to_owned(),
    }
}

impl Dialect {
    /// The dialect of a format, if the router translates it.
    pub fn of(format: Format) -> Option<Self> {
        match format {
            Format::OpenAi => None,
            Format::Anthropic | Format::Gemini | Format::Cohere | Format::Bedrock => {
                Some(Self(format))
            }
        }
    }

    fn request(self, req: &ChatRequest, model: &str) -> Result<Translated, TranslateError> {
        match self.0 {
            Format::Anthropic => anthropic::request(req, model),
            Format::Gemini => gemini::request(req, model),
            Format::Cohere => cohere::request(req, model),
            Format::Bedrock => bedrock::request(req, model),
            Format::OpenAi => Err(forwarded()),
        }
    }

    /// The native endpoint, relative to the provider's base URL.
    fn path(self, upstream: &Upstream, model: &str, stream: bool) -> String {
        if let (Format::Gemini, crate::config::Cloud::Vertex { .. }) = (self.0, &upstream.cloud) {
            return upstream.vertex_path(model, stream);
        }
        match (self.0, stream) {
            (Format::Anthropic, _) => "v1/messages".to_owned(),
            (Format::Gemini, false) => format!("v1beta/models/{model}:generateContent"),
            (Format::Gemini, true) => {
                format!("v1beta/models/{model}:streamGenerateContent?alt=sse")
            }
            (Format::Cohere, _) => "v2/chat".to_owned(),
            (Format::Bedrock, stream) => bedrock::path(model, stream),
            (Format::OpenAi, _) => "chat/completions".to_owned(),
        }
    }

    fn response(self, body: &[u8], client_model: &str) -> Result<ChatResponse, TranslateError> {
        match self.0 {
            Format::Anthropic => anthropic::response(body, client_model),
            Format::Gemini => gemini::response(body, client_model),
            Format::Cohere => cohere::response(body, client_model),
            Format::Bedrock => bedrock::response(body, client_model),
            Format::OpenAi => Err(forwarded()),
        }
    }

    fn error(self, status: u16, body: &[u8]) -> (u16, ErrorBody) {
        match self.0 {
            Format::Anthropic => anthropic::error(status, body),
            Format::Gemini => gemini::error(status, body),
            Format::Cohere => cohere::error(status, body),
            Format::Bedrock => bedrock::error(status, body),
            Format::OpenAi => (502, forwarded().to_error_body()),
        }
    }

    fn stream(self, client_model: &str, include_usage: bool, created: u64) -> Option<Translator> {
        Some(match self.0 {
            Format::OpenAi => return None,
            Format::Anthropic => {
                let mut t = anthropic::StreamTranslator::new(client_model, include_usage);
                t.set_created(created);
                Translator::Anthropic(t)
            }
            Format::Gemini => {
                let mut t = gemini::StreamTranslator::new(client_model, include_usage);
                t.set_created(created);
                Translator::Gemini(t)
            }
            Format::Cohere => {
                let mut t = cohere::StreamTranslator::new(client_model, include_usage);
                t.set_created(created);
                Translator::Cohere(t)
            }
            Format::Bedrock => {
                let mut t = bedrock::StreamTranslator::new(client_model, include_usage);
                t.set_created(created);
                Translator::Bedrock(t)
            }
        })
    }
}

enum Translator {
    Anthropic(anthropic::StreamTranslator),
    Gemini(gemini::StreamTranslator),
    Cohere(cohere::StreamTranslator),
    Bedrock(bedrock::StreamTranslator),
}

impl Translator {
    fn push(&mut self, event: &SseEvent) -> Vec<StreamOut> {
        match self {
            Self::Anthropic(t) => t.push(event),
            Self::Gemini(t) => t.push(event),
            Self::Cohere(t) => t.push(event),
            // Bedrock streams event-stream frames, never SSE events (see `Input`).
            Self::Bedrock(_) => Vec::new(),
        }
    }

    fn finish(&mut self) -> Vec<StreamOut> {
        match self {
            Self::Anthropic(t) => t.finish(),
            Self::Gemini(t) => t.finish(),
            Self::Cohere(t) => t.finish(),
            Self::Bedrock(t) => t.finish(),
        }
    }
}

/// How the upstream's stream is framed.
enum Input {
    /// Server-sent events (Anthropic, Gemini, Cohere).
    Sse(SseParser),
    /// AWS event-stream binary frames (Bedrock ConverseStream).
    EventStream(eventstream::Decoder),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_response(status: StatusCode, body: Vec<u8>, dropped: usize) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_dropped(response.headers_mut(), dropped);
    response
}

fn add_dropped(headers: &mut HeaderMap, dropped: usize) {
    if dropped > 0 {
        headers.insert("x-portcullis-dropped-parts", HeaderValue::from(dropped));
    }
}

/// Send a Model Router request to a translated provider.
pub async fn chat(
    state: &AppState,
    dialect: Dialect,
    route: &Route,
    model: &str,
    asked: &str,
    body: Map<String, Value>,
    exchange: &mut Exchange,
) -> Result<Response, ApiError> {
    let upstream = &route.upstream;
    let request: ChatRequest = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::InvalidJson(format!("not a chat completions request: {e}")))?;
    let streaming = request.is_stream();
    if dialect.0 == Format::Gemini && !crate::config::snapshot::is_model_segment(model) {
        // Gemini and Vertex name the model in the URL path: nothing but a model ID may stand there.
        return Err(ApiError::InvalidField {
            param: "model",
            message: format!(
                "`{asked}` does not name a model: after `{}:` only letters, digits, `.`, `_` and `-` may follow",
                route.prefix
            ),
        });
    }
    let translated = dialect.request(&request, model)?;
    let payload =
        serde_json::to_vec(&translated.body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;

    let accept =
        (dialect.0 == Format::Bedrock && streaming).then_some("application/vnd.amazon.eventstream");
    let mut headers = upstream::json_headers(accept, &exchange.request_id);
    if dialect.0 == Format::Anthropic {
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    let Answer { response, ttfb } = upstream::send(
        &state.client,
        upstream,
        &route.prefix,
        Method::POST,
        &upstream.url(&dialect.path(upstream, model, streaming)),
        headers,
        payload.into(),
    )
    .await?;
    exchange.ttfb = Some(ttfb);
    let status = response.status();

    if !status.is_success() {
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let bytes = upstream::read_capped(
            response,
            upstream::MAX_ERROR_BODY_BYTES,
            &route.prefix,
            upstream.timeout,
        )
        .await?;
        let (code, body) = dialect.error(status.as_u16(), &bytes);
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out = json_response(code, serde_json::to_vec(&body).unwrap_or_default(), 0);
        if let Some(value) = retry_after {
            out.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(out);
    }

    if !streaming {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| upstream::classify(&route.prefix, upstream.timeout, &e))?;
        let mut answer = dialect.response(&bytes, asked)?;
        answer.created = now();
        let body = serde_json::to_vec(&answer).map_err(|e| ApiError::UpstreamInvalid {
            prefix: route.prefix.clone(),
            detail: e.to_string(),
        })?;
        return Ok(json_response(
            StatusCode::OK,
            body,
            translated.dropped_parts,
        ));
    }

    let include_usage = request.include_usage();
    let Some(mut translator) = dialect.stream(asked, include_usage, now()) else {
        return Err(ApiError::Translation(forwarded()));
    };
    // Bedrock chunks carry no ID; its request ID (for support cases) is the closest thing.
    if let (Translator::Bedrock(t), Some(id)) = (
        &mut translator,
        response
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
    ) {
        t.set_id(id);
    }
    let state = StreamState {
        body: upstream::body_stream(response, upstream.timeout).boxed(),
        input: if dialect.0 == Format::Bedrock {
            Input::EventStream(eventstream::Decoder::default())
        } else {
            Input::Sse(SseParser::default())
        },
        translator,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let out = match st.body.next().await {
                Some(Ok(bytes)) => {
                    let items = st.feed(&bytes);
                    st.emit(items, false)
                }
                Some(Err(e)) => {
                    st.done = true;
                    stream_error(&format!("the upstream stream broke off: {e}"))
                }
                None => {
                    let items = st.flush();
                    st.emit(items, true)
                }
            };
            if !out.is_empty() {
                return Some((Ok::<_, std::io::Error>(Bytes::from(out)), st));
            }
        }
    });
    let mut out = Response::new(Body::from_stream(stream));
    let headers = out.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_dropped(headers, translated.dropped_parts);
    Ok(out)
}

struct StreamState {
    body: BoxStream<'static, Result<Bytes, std::io::Error>>,
    input: Input,
    translator: Translator,
    done: bool,
}

impl StreamState {
    /// Parse upstream bytes and translate the events they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<StreamOut> {
        match (&mut self.input, &mut self.translator) {
            (Input::EventStream(decoder), Translator::Bedrock(t)) => {
                let mut items = Vec::new();
                for frame in decoder.push(bytes) {
                    match frame {
                        Ok(frame) => items.extend(t.push(&frame)),
                        Err(e) => items.push(decode_error(&e)),
                    }
                }
                items
            }
            (Input::Sse(parser), t) => parser
                .push(bytes)
                .iter()
                .flat_map(|event| t.push(event))
                .collect(),
            (Input::EventStream(_), _) => Vec::new(),
        }
    }

    /// The upstream stream ended: translate what the parser still holds.
    fn flush(&mut self) -> Vec<StreamOut> {
        match &mut self.input {
            Input::EventStream(decoder) => match decoder.finish() {
                Ok(()) => Vec::new(),
                Err(e) => vec![decode_error(&e)],
            },
            Input::Sse(parser) => {
                let events = parser.finish();
                events
                    .iter()
                    .flat_map(|event| self.translator.push(event))
                    .collect()
            }
        }
    }

    /// Write translated items as SSE bytes; at the end, flush and write `[DONE]`. An error
    /// item ends the stream without `[DONE]` (the `openai` SDK raises it).
    fn emit(&mut self, mut items: Vec<StreamOut>, last: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if last {
            items.extend(self.translator.finish());
        }
        for item in items {
            out.extend_from_slice(&item.to_sse());
            if matches!(item, StreamOut::Error(_)) {
                self.done = true;
                return out;
            }
        }
        if last {
            out.extend_from_slice(DONE);
            self.done = true;
        }
        out
    }
}

fn decode_error(e: &eventstream::DecodeError) -> StreamOut {
    StreamOut::Error(crate::formats::openai::ErrorBody::new(
        format!("the upstream event stream could not be read: {e}"),
        "server_error",
        Some("bad_upstream_response".to_owned()),
    ))
}

/// The event that ends a Model Router stream whose upstream broke off: the same
/// `GatewayError` a final response would carry, rendered by the router's (OpenAI) format.
fn stream_error(message: &str) -> Vec<u8> {
    let error = crate::formats::GatewayError {
        status: 502,
        message: message.to_owned(),
        kind: "api_error".to_owned(),
        code: "upstream_stream_error".to_owned(),
        param: None,
    };
    Format::OpenAi
        .stream_error_event(&error)
        .unwrap_or_default()
}
