//! Property tests of the parsers reachable from input (issue 11, item 8): manifests (files and
//! `portcullis check`), native-route paths, client JWTs, and the upstream SSE and AWS
//! event-stream framers. Each must never panic, keep its memory bounded by its input, and
//! give the same answer however its input is split.
//!
//! The functions under test are reached through the aliases below only, so when a module
//! moves (the framers moved to `src/formats/` once already) only these lines change.

use std::sync::Arc;

use proptest::prelude::*;

use portcullis::formats::bedrock::eventstream::{
    Decoder as EventStreamDecoder, MAX_MESSAGE, crc32,
};
use portcullis::formats::sse::SseParser;
use portcullis::policy::identity::{ClientAuth, JwtAuth, Runtime};
use portcullis::proxy::native::check_rest;
use portcullis::source::files::{parse, parse_documents, split_documents};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Split `bytes` at the given cut points (each taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(bytes[start..p].to_vec());
        start = p;
    }
    out.push(bytes[start..].to_vec());
    out
}

// ---------------------------------------------------------------- manifests

/// Documents a manifest folder holds: ours (valid and not), others, and junk.
fn document() -> impl Strategy<Value = String> {
    let name = "[a-z][a-z0-9-]{0,12}";
    prop_oneof![
        (name, "[a-z0-9:/._-]{0,30}").prop_map(|(n, url)| format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {{name: {n}, namespace: ai}}\nspec: {{type: openai, baseUrl: '{url}', auth: {{apiKey: {{secretRef: {{name: k}}}}}}}}\n"
        )),
        (name, name).prop_map(|(n, p)| format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {{name: {n}}}\nspec: {{providers: [{{providerRef: {{name: {p}}}}}]}}\n"
        )),
        (name, "[ -~]{0,20}").prop_map(|(n, v)| format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {n}, namespace: ai}}\nstringData: {{apiKey: {v:?}}}\n"
        )),
        name.prop_map(|n| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}}}\n")),
        "[ -~\n]{0,80}",
        Just("kind: [unclosed\n".to_owned()),
        Just("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nspec: {providers: 3}\n".to_owned()),
    ]
}

fn stream() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            document(),
            prop_oneof![Just("---\n"), Just("--- \n"), Just("\n---\n")],
        ),
        0..8,
    )
    .prop_map(|docs| {
        docs.into_iter()
            .map(|(d, sep)| format!("{sep}{d}"))
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifests_never_panic_and_yield_at_most_one_object_per_document(text in "\\PC{0,400}") {
        let docs = parse_documents(&text);
        prop_assert!(docs.len() <= text.len() / 3 + 1);
        let _ = parse(&text);
    }

    #[test]
    fn manifest_streams_parse_the_same_document_by_document(text in stream()) {
        let whole = parse_documents(&text);
        // Texts with directives or `...` markers are parsed whole by the file source.
        let Some(pieces) = split_documents(&text) else {
            prop_assert!(text.lines().any(|l| l.starts_with('%') || l.starts_with("...")));
            return Ok(());
        };
        prop_assert_eq!(pieces.concat(), text.clone());
        if whole.iter().all(Result::is_ok) {
            // The per-document cache of the file source parses pieces: same objects.
            let by_piece: Vec<String> = pieces
                .iter()
                .flat_map(|p| parse_documents(p))
                .map(|r| format!("{:?}", r.map(|o| o.describe())))
                .collect();
            let at_once: Vec<String> = whole
                .iter()
                .map(|r| format!("{:?}", r.as_ref().map(|o| o.describe()).map_err(|_| ())))
                .collect();
            prop_assert_eq!(by_piece.len(), at_once.len());
            for (a, b) in by_piece.iter().zip(&at_once) {
                prop_assert_eq!(a.replace("Ok(", ""), b.replace("Ok(", ""));
            }
        }
    }
}

#[test]
fn yaml_alias_bombs_are_refused_quickly() {
    // "Billion laughs": nine levels of nine aliases.
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    let mut prev = 'a';
    for level in 'b'..='j' {
        text.push_str(&format!(
            "{level}: &{level} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
        prev = level;
    }
    let started = std::time::Instant::now();
    let docs = parse_documents(&text);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(docs.iter().all(|d| d.is_err()) || docs.is_empty());
}

// ---------------------------------------------------------------- native paths

proptest! {
    #![proptest_config(config())]

    #[test]
    fn accepted_native_paths_stay_under_the_base_path(rest in prop_oneof![
        "\\PC{0,60}",
        prop::collection::vec(prop_oneof![
            Just("..".to_owned()), Just(".".to_owned()), Just("".to_owned()), Just("%2e%2E".to_owned()),
            Just("%2F".to_owned()), Just("\\".to_owned()), Just("http:".to_owned()), Just("%5c".to_owned()),
            "[a-zA-Z0-9._~%-]{1,12}",
        ], 0..6).prop_map(|s| s.join("/")),
    ]) {
        // A URI path never carries a raw `?` or `#` (they start the query and fragment).
        let rest: String = rest.chars().filter(|c| !matches!(c, '?' | '#')).collect();
        if check_rest(&rest).is_ok() && !rest.is_empty() {
            // Joined to a provider's base URL the way the native route does, it stays on the
            // provider's host and under its base path, whatever normalisation a URL parser or
            // the upstream applies to `.`, `..` and their encodings.
            if let Ok(url) = url::Url::parse(&format!("https://up.example/base/{rest}")) {
                prop_assert_eq!(url.host_str(), Some("up.example"), "{}", rest);
                prop_assert!(url.path().starts_with("/base/"), "{rest} -> {}", url.path());
            }
            for segment in rest.split('/') {
                let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
                prop_assert!(!segment.is_empty() && decoded != "." && decoded != "..", "{}", rest);
                prop_assert!(!decoded.contains(['/', '\\']), "{}", rest);
                prop_assert!(!decoded.chars().any(char::is_control), "{}", rest);
            }
        }
    }
}

// ---------------------------------------------------------------- client JWTs

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..config() })]

    #[test]
    fn arbitrary_bearer_tokens_are_refused_without_panic(token in prop_oneof![
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
        "[ -~]{0,120}",
        (any::<Vec<u8>>(), any::<Vec<u8>>()).prop_map(|(h, p)| {
            use base64::Engine;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.c2ln", e.encode(h), e.encode(p))
        }),
        "[a-z0-9\"{}:,]{0,60}".prop_map(|json| {
            use base64::Engine;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.c2ln", e.encode(r#"{"alg":"RS256","kid":"k"}"#), e.encode(json))
        }),
    ]) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()
            .unwrap_or_else(|e| panic!("{e}"));
        let auth = ClientAuth {
            jwt: Some(JwtAuth {
                issuer: "https://issuer.example".to_owned(),
                // Nothing listens there: a token that gets as far as a key lookup fails fast.
                jwks_uri: "http://127.0.0.1:1/jwks".to_owned(),
                audiences: vec!["portcullis".to_owned()],
                identity_claim: "sub".to_owned(),
            }),
            ..ClientAuth::default()
        };
        let identity = Arc::new(Runtime::new(reqwest::Client::new()));
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let result = runtime.block_on(identity.authenticate(&auth, &headers));
        prop_assert!(result.is_err(), "an unsigned token was accepted: {token}");
    }
}

// ---------------------------------------------------------------- SSE

fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        prop::collection::vec(
            prop_oneof![
                Just(b"data: ".to_vec()),
                Just(b"event: x".to_vec()),
                Just(b":c".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"\xEF\xBB\xBF".to_vec()),
                Just(b"data:{\"a\":1}".to_vec()),
                "[ -~]{0,10}".prop_map(String::into_bytes),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn sse_all(chunks: &[Vec<u8>]) -> Vec<(Option<String>, String)> {
    let mut parser = SseParser::default();
    let mut out: Vec<_> = chunks.iter().flat_map(|c| parser.push(c)).collect();
    out.extend(parser.finish());
    out.into_iter().map(|e| (e.event, e.data)).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_events_do_not_depend_on_chunking(bytes in sse_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = sse_all(std::slice::from_ref(&bytes));
        let split = sse_all(&chunks(&bytes, &cuts));
        prop_assert_eq!(&whole, &split);
        // Bounded: the events never hold more data than came in (lossy UTF-8 at most triples).
        let data: usize = whole.iter().map(|(e, d)| d.len() + e.as_ref().map_or(0, String::len)).sum();
        prop_assert!(data <= bytes.len() * 3 + 3);
    }
}

// ---------------------------------------------------------------- AWS event streams

fn frame(headers: &[(String, String)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        h.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        h.push(7);
        h.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&u32::try_from(h.len()).unwrap_or(0).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode_all(chunks: &[Vec<u8>]) -> (Vec<Result<Vec<u8>, String>>, bool) {
    let mut decoder = EventStreamDecoder::default();
    let out = chunks
        .iter()
        .flat_map(|c| decoder.push(c))
        .map(|r| r.map(|m| m.payload).map_err(|e| e.to_string()))
        .collect();
    (out, decoder.finish().is_ok())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn event_stream_frames_round_trip_however_split(
        messages in prop::collection::vec(
            (prop::collection::vec(("[a-z:-]{1,12}", "[ -~]{0,16}"), 0..3), any::<Vec<u8>>()), 0..5),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let bytes: Vec<u8> = messages.iter().flat_map(|(h, p)| frame(h, p)).collect();
        let (decoded, clean_end) = decode_all(&chunks(&bytes, &cuts));
        let expected: Vec<Result<Vec<u8>, String>> = messages.iter().map(|(_, p)| Ok(p.clone())).collect();
        prop_assert_eq!(decoded, expected);
        prop_assert!(clean_end);
    }

    #[test]
    fn corrupt_event_streams_end_with_an_error_not_a_panic(
        bytes in prop_oneof![
            any::<Vec<u8>>(),
            (any::<Vec<u8>>(), any::<usize>(), any::<u8>()).prop_map(|(payload, at, bit)| {
                let mut f = frame(&[(":event-type".to_owned(), "chunk".to_owned())], &payload);
                let i = at % f.len();
                f[i] ^= bit.max(1);
                f
            }),
        ],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = decode_all(std::slice::from_ref(&bytes));
        let split = decode_all(&chunks(&bytes, &cuts));
        prop_assert_eq!(&whole, &split);
        // Nothing decoded is larger than what came in.
        let out: usize = whole.0.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
        prop_assert!(out <= bytes.len());
    }
}

#[test]
fn an_event_stream_frame_claiming_four_gigabytes_is_refused_at_its_prelude() {
    let mut prelude = Vec::new();
    prelude.extend_from_slice(&u32::MAX.to_be_bytes());
    prelude.extend_from_slice(&0u32.to_be_bytes());
    let crc = crc32(&prelude);
    prelude.extend_from_slice(&crc.to_be_bytes());
    let mut decoder = EventStreamDecoder::default();
    let out = decoder.push(&prelude);
    assert!(matches!(out.as_slice(), [Err(_)]), "{out:?}");
    // Just under the cap it waits for the body instead, holding only what arrived.
    let mut prelude = Vec::new();
    prelude.extend_from_slice(&u32::try_from(MAX_MESSAGE).unwrap_or(0).to_be_bytes());
    prelude.extend_from_slice(&0u32.to_be_bytes());
    let crc = crc32(&prelude);
    prelude.extend_from_slice(&crc.to_be_bytes());
    let mut decoder = EventStreamDecoder::default();
    assert!(decoder.push(&prelude).is_empty());
    assert!(decoder.finish().is_err());
}
