//! End-to-end tests of the real binary against fake upstreams on 127.0.0.1: streaming
//! without buffering, path hygiene, limits, timeouts, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{FakeUpstream, Gateway, Mode, chunk_event, write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn stream_request(gw: &Gateway, path: &str, model: &str) -> reqwest::Response {
    support::client()
        .post(gw.url(path))
        .header("authorization", "Bearer client-key-SHOULD-NOT-LEAK")
        .json(&serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// Read from the body until `needle` has arrived (fails after 5 s).
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.contains(needle) {
        let next = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .unwrap_or_else(|_| panic!("`{needle}` did not arrive; got so far: {seen:?}"));
        match next {
            Some(Ok(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("stream ended before `{needle}`: {other:?} after {seen:?}"),
        }
    }
}

#[tokio::test]
async fn router_stream_reaches_the_client_chunk_by_chunk() {
    let mut up = FakeUpstream::start(Mode::Paced).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &up.base_url(), "");
    let gw = Gateway::start(dir.path(), &[]).await;

    let response = stream_request(
        &gw,
        "/v1/model-router/ai.team-a/chat/completions",
        "openai:gpt-test",
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    // The upstream sends the second chunk only after the client has the first: a gateway
    // that buffered would never deliver the first and this would time out.
    up.send(chunk_event("gpt-test", "first")).await;
    read_until(&mut body, &mut seen, "first").await;
    assert!(
        seen.contains(r#""model":"openai:gpt-test""#),
        "model rewritten: {seen}"
    );
    up.send(chunk_event("gpt-test", "second")).await;
    read_until(&mut body, &mut seen, "second").await;
    up.send("data: [DONE]\n\n".into()).await;
    up.close();
    read_until(&mut body, &mut seen, "[DONE]").await;

    let seen_up = up.seen().await;
    assert_eq!(seen_up.len(), 1);
    let auth = seen_up[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(auth, "Bearer sk-upstream-SECRET");
    let sent: serde_json::Value = serde_json::from_slice(&seen_up[0].body).unwrap();
    assert_eq!(sent["model"], "gpt-test");
    assert!(!gw.log_text().contains("sk-upstream-SECRET"));
    assert!(!gw.log_text().contains("client-key-SHOULD-NOT-LEAK"));
}

#[tokio::test]
async fn native_stream_passes_bytes_through_as_they_arrive() {
    let mut up = FakeUpstream::start(Mode::Paced).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &up.base_url(), "");
    let gw = Gateway::start(dir.path(), &[]).await;

    let response = stream_request(&gw, "/v1/openai/ai.team-a/chat/completions", "gpt-test").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    up.send(chunk_event("gpt-test", "one")).await;
    read_until(&mut body, &mut seen, "one").await;
    // Native routes do not rewrite anything.
    assert!(seen.contains(r#""model":"gpt-test""#), "{seen}");
    up.send(chunk_event("gpt-test", "two")).await;
    read_until(&mut body, &mut seen, "two").await;
    up.close();
    assert!(body.next().await.is_none());
    let seen_up = up.seen().await;
    assert_eq!(
        seen_up[0].headers["authorization"].to_str().unwrap(),
        "Bearer sk-upstream-SECRET"
    );
}

/// Send a raw request line (no client-side path normalisation) and return the status code.
async fn raw_status(port: u16, method: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0)
}

#[tokio::test]
async fn native_paths_cannot_leave_the_base_path() {
    let up = FakeUpstream::start(Mode::Json {
        delay: Duration::ZERO,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &up.base_url(), "");
    let gw = Gateway::start(dir.path(), &[]).await;
    for bad in [
        "/v1/openai/ai.team-a/../secret",
        "/v1/openai/ai.team-a/a/%2e%2e/%2e%2e/secret",
        "/v1/openai/ai.team-a/a%2Fb",
        "/v1/openai/ai.team-a//evil.example/x",
        "/v1/openai/ai.team-a/http://evil.example/x",
    ] {
        assert_eq!(raw_status(gw.port, "GET", bad).await, 400, "{bad}");
    }
    // A clean path that is no known endpoint is refused too: native routes forward known
    // endpoints only (before: `files/x` was forwarded).
    for (method, unknown) in [
        ("GET", "/v1/openai/ai.team-a/files/x?limit=2"),
        ("DELETE", "/v1/openai/ai.team-a/files/x"),
        ("TRACE", "/v1/openai/ai.team-a/chat/completions"),
    ] {
        assert_eq!(
            raw_status(gw.port, method, unknown).await,
            404,
            "{method} {unknown}"
        );
    }
    assert!(up.seen().await.is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn passthrough_rules_forward_named_paths_only() {
    let up = FakeUpstream::start(Mode::Json {
        delay: Duration::ZERO,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &up.base_url(),
        "  passthrough: [{methods: [GET], path: \"files/*\"}]",
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    // A clean path the provider opts in to reaches {baseUrl}/{rest}, query included.
    assert_eq!(
        raw_status(gw.port, "GET", "/v1/openai/ai.team-a/files/x?limit=2").await,
        200
    );
    let seen = up.seen().await;
    assert_eq!(seen[0].path, "/v1/files/x?limit=2");
    // Another method, a deeper path, or an encoded spelling is not admitted.
    for (method, path) in [
        ("DELETE", "/v1/openai/ai.team-a/files/x"),
        ("GET", "/v1/openai/ai.team-a/files/x/content"),
        ("GET", "/v1/openai/ai.team-a/fil%65s/x"),
    ] {
        assert_eq!(
            raw_status(gw.port, method, path).await,
            404,
            "{method} {path}"
        );
    }
    assert_eq!(up.seen().await.len(), 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let up = FakeUpstream::start(Mode::Json {
        delay: Duration::ZERO,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &up.base_url(), "");
    let gw = Gateway::start(dir.path(), &["--max-body-bytes", "1024"]).await;
    let big = serde_json::json!({"model": "openai:gpt-test", "pad": "x".repeat(4096)});
    let client = support::client();
    for path in [
        "/v1/model-router/ai.team-a/chat/completions",
        "/v1/openai/ai.team-a/chat/completions",
    ] {
        let r = client.post(gw.url(path)).json(&big).send().await.unwrap();
        assert_eq!(r.status(), 413, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "request_too_large");
    }
    // A chunked body (no Content-Length) over the limit is cut off too.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 512]))),
    );
    let r = client
        .post(gw.url("/v1/openai/ai.team-a/chat/completions"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn unreachable_and_slow_upstreams_get_502_and_504() {
    let slow = FakeUpstream::start(Mode::Json {
        delay: Duration::from_secs(5),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &slow.base_url(), "  timeout: 1s");
    let gw = Gateway::start(dir.path(), &[]).await;
    let client = support::client();
    let body = serde_json::json!({"model": "openai:gpt-test", "messages": []});
    let started = Instant::now();
    let r = client
        .post(gw.url("/v1/model-router/ai.team-a/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(4));
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_timeout");

    let dead = format!("http://127.0.0.1:{}/v1", support::free_port());
    let dir2 = tempfile::tempdir().unwrap();
    write_config(dir2.path(), &dead, "");
    let gw2 = Gateway::start(dir2.path(), &[]).await;
    let r = client
        .post(gw2.url("/v1/model-router/ai.team-a/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_unreachable");
    assert!(!e.to_string().contains("sk-upstream-SECRET"));
}

#[tokio::test]
async fn sigterm_lets_an_open_stream_finish_and_refuses_new_connections() {
    let mut up = FakeUpstream::start(Mode::Paced).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &up.base_url(), "");
    let mut gw = Gateway::start(dir.path(), &["--shutdown-grace", "10s"]).await;

    let response = stream_request(
        &gw,
        "/v1/model-router/ai.team-a/chat/completions",
        "openai:gpt-test",
    )
    .await;
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    up.send(chunk_event("gpt-test", "before")).await;
    read_until(&mut body, &mut seen, "before").await;

    gw.terminate();
    // Readiness goes down, new connections are refused...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .is_err();
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...while the open stream runs to its end.
    up.send(chunk_event("gpt-test", "after")).await;
    read_until(&mut body, &mut seen, "after").await;
    up.send("data: [DONE]\n\n".into()).await;
    up.close();
    read_until(&mut body, &mut seen, "[DONE]").await;
    let status = tokio::time::timeout(Duration::from_secs(5), gw.child.wait())
        .await
        .expect("exits once drained")
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
}
