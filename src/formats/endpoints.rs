//! Native endpoint tables: what a native route may forward.
//!
//! A native route is a security boundary, not a tunnel. Each format declares the endpoints it
//! knows ([`Endpoint`]): method, path shape, where the request names its model, how the
//! answer streams, and whether the answer can carry tool calls. The data plane matches the
//! client's path against its format's table ([`match_path`]) *after* percent-decoding, then
//! checks the named model exactly as the Model Router does; anything that matches no row is
//! refused (`unknown_endpoint`) unless the provider opts in with `spec.passthrough`.

use percent_encoding::percent_decode_str;

/// One path segment of an endpoint's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// Exactly this text.
    Lit(&'static str),
    /// One of these texts (API versions: `v1`, `v1beta`).
    OneOf(&'static [&'static str]),
    /// Any one segment that is not the model (a project, a location, a resource ID).
    Any,
    /// The model (or deployment) ID: one segment, percent-decoded (AWS SDKs encode `:` and
    /// the `/` of ARNs).
    Model,
    /// `{model}:{method}` with one of these methods (Gemini and Vertex AI).
    ModelMethod(&'static [&'static str]),
}

/// Where a request names its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelAt {
    /// Nowhere (a model list).
    Nowhere,
    /// The JSON body's `model` field (required).
    Body,
    /// The JSON body's `model` field, which the API lets the client omit (moderations).
    BodyOptional,
    /// A `model` field of a `multipart/form-data` body (audio, image edits).
    Multipart,
    /// The path's [`Seg::Model`] / [`Seg::ModelMethod`] segment.
    Path,
}

/// How an endpoint's answer streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streaming {
    /// A single answer.
    Never,
    /// SSE when the JSON body says `"stream": true`.
    WhenAsked,
    /// Always SSE (Gemini `streamGenerateContent`, with `alt=sse`; a JSON array without).
    Sse,
    /// Always AWS event-stream frames (Bedrock `converse-stream`, `invoke-with-response-stream`).
    EventStream,
}

/// Whether an endpoint's answers can carry tool calls, and whether the guardrails read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCalls {
    /// The answer cannot carry tool calls.
    None,
    /// The answer can carry tool calls, and the format's guard reads them (whole or streamed).
    Guarded,
    /// The answer can carry tool calls that the guard cannot read yet: refused while the proxy
    /// has `spec.tools` (fail closed).
    Unreadable,
}

/// One known endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    /// A name for messages (`chat/completions`, `models/{m}:generateContent`).
    pub name: &'static str,
    /// The HTTP method.
    pub method: &'static str,
    /// The path shape, relative to the provider's base URL.
    pub path: &'static [Seg],
    /// Where the request names its model.
    pub model: ModelAt,
    /// How the answer streams.
    pub streaming: Streaming,
    /// Tool calls in the answer.
    pub tool_calls: ToolCalls,
    /// The answer is the provider's model list (`{"data": [{"id": …}]}` and the like).
    pub model_list: bool,
}

impl Endpoint {
    /// A POST endpoint whose JSON body names the model.
    pub const fn post(name: &'static str, path: &'static [Seg]) -> Self {
        Self {
            name,
            method: "POST",
            path,
            model: ModelAt::Body,
            streaming: Streaming::Never,
            tool_calls: ToolCalls::None,
            model_list: false,
        }
    }

    /// A GET endpoint.
    pub const fn get(name: &'static str, path: &'static [Seg]) -> Self {
        Self {
            name,
            method: "GET",
            path,
            model: ModelAt::Nowhere,
            streaming: Streaming::Never,
            tool_calls: ToolCalls::None,
            model_list: false,
        }
    }

    /// With the model named at `at`.
    pub const fn model(mut self, at: ModelAt) -> Self {
        self.model = at;
        self
    }

    /// With this streaming.
    pub const fn streams(mut self, streaming: Streaming) -> Self {
        self.streaming = streaming;
        self
    }

    /// With tool calls in its answers.
    pub const fn tools(mut self, tool_calls: ToolCalls) -> Self {
        self.tool_calls = tool_calls;
        self
    }

    /// A model list.
    pub const fn list(mut self) -> Self {
        self.model_list = true;
        self
    }
}

/// A client path matched against a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The model named in the path (decoded), if the shape has one.
    pub path_model: Option<String>,
    /// Values of the [`Seg::Any`] segments, in order (decoded).
    pub any: Vec<String>,
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.method == other.method && self.path == other.path
    }
}

impl Eq for Endpoint {}

/// Why a path matched no endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// No row of the table has this method and path.
    Unknown,
    /// A fixed segment was percent-encoded (`respons%65s`): it reads differently from how it
    /// decodes, so it is refused rather than guessed at.
    Encoded(String),
    /// The path has a known endpoint's shape, but its model segment is not a model ID (it
    /// would smuggle a query, a fragment or another path into the upstream URL).
    BadModel(String),
}

/// Whether `model` is a safe model ID for an upstream path segment: letters, digits and
/// `.`, `_`, `-`, `:`, `/`, `@` (Bedrock ARNs, Vertex `model@version`), with no `.`/`..`
/// component and no control characters.
fn model_segment_ok(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= 512
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/' | b'@')
        })
        && model
            .split('/')
            .all(|part| !matches!(part, "" | "." | ".."))
}

/// The stricter rule of a `{model}:{method}` segment (Gemini, Vertex AI): letters, digits,
/// `.`, `_` and `-` only, so nothing can name another method or resource.
fn plain_model_id(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= 256
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !matches!(model, "." | "..")
}

fn decode(segment: &str) -> Option<String> {
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Match `method` and the raw (still encoded) `rest` of a native path against `table`.
pub fn match_path(table: &[Endpoint], method: &str, rest: &str) -> Result<Matched, Mismatch> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let raw: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let mut encoded = None;
    let mut bad_model = None;
    'rows: for endpoint in table {
        if endpoint.method != method || endpoint.path.len() != raw.len() {
            continue;
        }
        let mut path_model = None;
        let mut any = Vec::new();
        for (seg, raw) in endpoint.path.iter().zip(&raw) {
            let Some(decoded) = decode(raw) else {
                continue 'rows;
            };
            let fixed = |decoded: &str, wanted: bool| -> Result<bool, ()> {
                if !wanted {
                    return Ok(false);
                }
                if decoded != *raw {
                    return Err(());
                }
                Ok(true)
            };
            let ok = match seg {
                Seg::Lit(text) => fixed(&decoded, decoded == *text),
                Seg::OneOf(texts) => fixed(&decoded, texts.contains(&decoded.as_str())),
                Seg::Any => {
                    let ok = !decoded.is_empty()
                        && !decoded.contains(['/', '\\'])
                        && !matches!(decoded.as_str(), "." | "..")
                        && !decoded.chars().any(char::is_control);
                    any.push(decoded.clone());
                    Ok(ok)
                }
                Seg::Model => {
                    if !model_segment_ok(&decoded) {
                        bad_model.get_or_insert_with(|| decoded.clone());
                    }
                    path_model = Some(decoded.clone());
                    Ok(model_segment_ok(&decoded))
                }
                Seg::ModelMethod(methods) => match decoded.rsplit_once(':') {
                    // The method part must read as it decodes; the model may be encoded.
                    Some((model, m)) if methods.contains(&m) && raw.ends_with(m) => {
                        if !plain_model_id(model) {
                            bad_model.get_or_insert_with(|| model.to_owned());
                        }
                        path_model = Some(model.to_owned());
                        Ok(plain_model_id(model))
                    }
                    Some((_, m)) if methods.contains(&m) => Err(()),
                    _ => Ok(false),
                },
            };
            match ok {
                Ok(true) => {}
                Ok(false) => continue 'rows,
                Err(()) => {
                    encoded.get_or_insert_with(|| (*raw).to_owned());
                    continue 'rows;
                }
            }
        }
        return Ok(Matched {
            endpoint: *endpoint,
            path_model,
            any,
        });
    }
    Err(match (encoded, bad_model) {
        (Some(segment), _) => Mismatch::Encoded(segment),
        (None, Some(model)) => Mismatch::BadModel(model),
        (None, None) => Mismatch::Unknown,
    })
}

/// The endpoints of a table, for the `unknown_endpoint` message: `POST chat/completions, …`.
pub fn describe(table: &[Endpoint]) -> String {
    let mut names: Vec<String> = table
        .iter()
        .map(|e| format!("{} {}", e.method, e.name))
        .collect();
    names.dedup();
    names.join(", ")
}

/// A `spec.passthrough` rule: methods and a path glob (`files/*`), matched after decoding.
pub fn passthrough_matches(
    methods: &[String],
    glob: &globset::GlobMatcher,
    method: &str,
    rest: &str,
) -> bool {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some(decoded) = decode(rest) else {
        return false;
    };
    // A path that reads differently from how it decodes is never passed through.
    decoded == rest
        && methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        && glob.is_match(&decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &[Endpoint] = &[
        Endpoint::post(
            "chat/completions",
            &[Seg::Lit("chat"), Seg::Lit("completions")],
        )
        .streams(Streaming::WhenAsked)
        .tools(ToolCalls::Guarded),
        Endpoint::get("models", &[Seg::Lit("models")]).list(),
        Endpoint::get("models/{id}", &[Seg::Lit("models"), Seg::Model]).model(ModelAt::Path),
        Endpoint::post(
            "{v}/models/{m}:generateContent",
            &[
                Seg::OneOf(&["v1", "v1beta"]),
                Seg::Lit("models"),
                Seg::ModelMethod(&["generateContent"]),
            ],
        )
        .model(ModelAt::Path),
    ];

    #[test]
    fn known_paths_match_and_name_their_model() {
        let m = match_path(T, "POST", "chat/completions").ok();
        assert_eq!(m.map(|m| m.endpoint.name), Some("chat/completions"));
        let m = match_path(T, "GET", "models/gpt-5").ok();
        assert_eq!(m.and_then(|m| m.path_model).as_deref(), Some("gpt-5"));
        let m = match_path(T, "POST", "v1beta/models/gemini-2.5-flash:generateContent").ok();
        assert_eq!(
            m.and_then(|m| m.path_model).as_deref(),
            Some("gemini-2.5-flash")
        );
        let m = match_path(T, "GET", "models/amazon.nova-pro-v1%3A0").ok();
        assert_eq!(
            m.and_then(|m| m.path_model).as_deref(),
            Some("amazon.nova-pro-v1:0")
        );
    }

    #[test]
    fn unknown_methods_and_paths_are_refused() {
        for (method, path) in [
            ("DELETE", "chat/completions"),
            ("TRACE", "chat/completions"),
            ("GET", "chat/completions"),
            ("POST", "files"),
            ("DELETE", "files/x"),
            ("POST", "chat/completions/x"),
            ("POST", "v2/models/g:generateContent"),
            ("POST", "v1beta/models/g:batchGenerateContent"),
            ("GET", "models/../../x"),
        ] {
            assert!(match_path(T, method, path).is_err(), "{method} {path}");
        }
        for (method, path) in [
            ("GET", "models/a%2F..%2Fb"),
            ("POST", "v1beta/models/gemini%3Fx:generateContent"),
            ("POST", "v1beta/models/a%23b:generateContent"),
        ] {
            assert!(
                matches!(match_path(T, method, path), Err(Mismatch::BadModel(_))),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn encoded_fixed_segments_are_refused_not_guessed() {
        assert_eq!(
            match_path(T, "POST", "chat/complet%69ons"),
            Err(Mismatch::Encoded("complet%69ons".to_owned()))
        );
        assert!(match_path(T, "POST", "v1beta/models/g:generate%43ontent").is_err());
    }

    #[test]
    fn passthrough_globs_match_decoded_paths_only() {
        let glob = globset::Glob::new("files/*").map(|g| g.compile_matcher());
        let Ok(glob) = glob else { panic!("glob") };
        let methods = vec!["GET".to_owned(), "DELETE".to_owned()];
        assert!(passthrough_matches(&methods, &glob, "DELETE", "files/x"));
        assert!(!passthrough_matches(&methods, &glob, "POST", "files/x"));
        assert!(!passthrough_matches(&methods, &glob, "GET", "fil%65s/x"));
        assert!(!passthrough_matches(&methods, &glob, "GET", "batches/x"));
    }
}
