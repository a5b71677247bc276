"""SSE keep-alive comments on idle streams (`--sse-keepalive`, `PORTCULLIS_SSE_KEEPALIVE`).

A scripted upstream stalls for longer than the interval (300 ms here). The raw
client must see `: keep-alive` comments, only between events, and otherwise the
upstream's bytes unchanged; the `openai` SDK must still yield exactly the
chunks. With `0` nothing is injected. Native Gemini streams get none (the
google-genai SDK parses every line that is not `data: ...` as JSON).
"""

from __future__ import annotations

import http.client
import re
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fakes.scripted_sse import (
    OPENAI_DONE,
    ScriptedSSE,
    anthropic_stream,
    gemini_event,
    openai_chunk,
)
from harness import (
    CLIENT_KEY,
    PROVIDER_KEY,
    Gateway,
    assert_no_secret,
    docs,
    provider_doc,
    proxy_doc,
    secret_doc,
)

COMMENT = b": keep-alive\n\n"
INTERVAL = "300ms"
STALL = 1.2  # seconds: four intervals


@pytest.fixture
def upstream() -> Iterator[ScriptedSSE]:
    f = ScriptedSSE().start()
    yield f
    f.stop()


@pytest.fixture
def launch(binary: Path, tmp_path: Path, upstream: ScriptedSSE, request) -> Iterator[Callable[..., Gateway]]:
    """Start a gateway with providers openai, anthropic and gemini, all on the scripted upstream."""
    started: list[Gateway] = []

    def start(*extra_args: str) -> Gateway:
        config_dir = tmp_path / f"config-{len(started)}"
        config_dir.mkdir()
        (config_dir / "portcullis.yaml").write_text(docs(
            secret_doc("openai-key", PROVIDER_KEY),
            provider_doc("openai", f"{upstream.origin}/v1", static=["gpt-test"]),
            provider_doc("claude", upstream.origin, type_="anthropic", static=["claude-test"]),
            provider_doc("gemini", upstream.origin, type_="gemini", static=["gemini-test"]),
            proxy_doc("team-a", ["openai", "claude", "gemini"]),
        ))
        gw = Gateway(config_dir, tmp_path / f"portcullis-{len(started)}.log", extra_args=extra_args)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()
    for gw in started:
        log = gw.log_text()
        assert_no_secret(log, f"gateway log {gw.log_path}")
        assert CLIENT_KEY not in log


def raw_stream(gw: Gateway, target: str, body: dict | None) -> tuple[int, str, bytes]:
    """POST and read the whole streamed body as the client receives it (chunked decoding only)."""
    import json

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", target, body=json.dumps(body or {}),
                     headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read()
    finally:
        conn.close()


def strip_comments(body: bytes) -> bytes:
    return body.replace(COMMENT, b"")


def assert_comments_only_between_events(body: bytes) -> None:
    """Each comment starts the stream or follows a blank line, so it never splits an event."""
    for m in re.finditer(re.escape(COMMENT), body):
        before = body[: m.start()]
        assert before == b"" or before.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")), (
            f"keep-alive comment inside an event, after {before[-80:]!r}")


def chat_body(model: str, stream: bool = True) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


OPENAI_PIECES = ["Hel", "lo, ", "world"]


def openai_script(stall_between_events: bool) -> list:
    first = openai_chunk(OPENAI_PIECES[0], role=True)
    if stall_between_events:
        head: list = [first, STALL]
    else:
        # Quiet in the middle of an event: half a `data:` line, then nothing for a while.
        head = [first[:25], STALL, first[25:]]
    return [*head, openai_chunk(OPENAI_PIECES[1]), openai_chunk(OPENAI_PIECES[2]),
            openai_chunk(None, finish="stop"), OPENAI_DONE]


# --------------------------------------------------------------------------- native
def test_native_openai_stream_gets_comments_between_events(launch, upstream):
    upstream.script = openai_script(stall_between_events=True)
    gw = launch("--sse-keepalive", INTERVAL)
    status, ctype, body = raw_stream(gw, "/v1/openai/ai.team-a/chat/completions", chat_body("gpt-test"))
    assert status == 200 and ctype.startswith("text/event-stream")
    assert body.count(COMMENT) >= 2, body
    assert_comments_only_between_events(body)
    # Otherwise byte for byte what the upstream wrote.
    assert strip_comments(body) == upstream.payload()


def test_native_openai_stream_quiet_mid_event_gets_no_comment_inside(launch, upstream):
    upstream.script = openai_script(stall_between_events=False)
    gw = launch("--sse-keepalive", INTERVAL)
    status, _, body = raw_stream(gw, "/v1/openai/ai.team-a/chat/completions", chat_body("gpt-test"))
    assert status == 200
    # The stall was inside the first event: nothing may be injected there, and the
    # stream is the upstream's, unchanged.
    assert body == upstream.payload(), body
    assert_comments_only_between_events(body)


def test_openai_sdk_native_stream_yields_exactly_the_chunks(launch, upstream):
    upstream.script = openai_script(stall_between_events=True)
    gw = launch("--sse-keepalive", INTERVAL)
    stream = gw.native_client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks] == [*OPENAI_PIECES, None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


# --------------------------------------------------------------------------- router
def test_router_openai_stream_gets_comments_and_sdk_ignores_them(launch, upstream):
    upstream.script = openai_script(stall_between_events=True)
    gw = launch("--sse-keepalive", INTERVAL)
    status, _, body = raw_stream(gw, "/v1/model-router/ai.team-a/chat/completions", chat_body("openai:gpt-test"))
    assert status == 200
    assert body.count(COMMENT) >= 2, body
    assert_comments_only_between_events(body)
    assert strip_comments(body).endswith(OPENAI_DONE)

    chunks = list(gw.router_client().chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [c.choices[0].delta.content for c in chunks] == [*OPENAI_PIECES, None]
    assert {c.model for c in chunks} == {"openai:gpt-test"}


def test_router_translated_anthropic_stream_gets_comments_and_sdk_ignores_them(launch, upstream):
    texts = ["Hello", " from", " Claude"]
    upstream.script = anthropic_stream(texts, STALL)
    gw = launch("--sse-keepalive", INTERVAL)
    status, _, body = raw_stream(gw, "/v1/model-router/ai.team-a/chat/completions",
                                 chat_body("anthropic:claude-test"))
    assert status == 200
    assert upstream.requests[-1].path == "/v1/messages"
    assert body.count(COMMENT) >= 2, body
    assert_comments_only_between_events(body)
    assert strip_comments(body).endswith(OPENAI_DONE)

    chunks = list(gw.router_client().chat.completions.create(
        model="anthropic:claude-test", messages=[{"role": "user", "content": "hi"}], stream=True))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == texts
    assert chunks[-1].choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- off
def test_zero_disables_keepalive(launch, upstream):
    upstream.script = openai_script(stall_between_events=True)
    gw = launch("--sse-keepalive", "0")
    _, _, native = raw_stream(gw, "/v1/openai/ai.team-a/chat/completions", chat_body("gpt-test"))
    assert native == upstream.payload()
    _, _, routed = raw_stream(gw, "/v1/model-router/ai.team-a/chat/completions", chat_body("openai:gpt-test"))
    assert b"keep-alive" not in routed and routed.endswith(OPENAI_DONE)


def test_environment_variable_sets_the_interval(launch, upstream, monkeypatch):
    upstream.script = openai_script(stall_between_events=True)
    monkeypatch.setenv("PORTCULLIS_SSE_KEEPALIVE", "0")
    gw = launch()
    _, _, off = raw_stream(gw, "/v1/openai/ai.team-a/chat/completions", chat_body("gpt-test"))
    assert off == upstream.payload()
    monkeypatch.setenv("PORTCULLIS_SSE_KEEPALIVE", INTERVAL)
    gw = launch()
    _, _, on = raw_stream(gw, "/v1/openai/ai.team-a/chat/completions", chat_body("gpt-test"))
    assert on.count(COMMENT) >= 2 and strip_comments(on) == upstream.payload()


def test_bad_interval_is_refused(binary, tmp_path):
    import subprocess

    out = subprocess.run([str(binary), "serve", "--sse-keepalive", "soon", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--sse-keepalive" in out.stderr, out.stderr


def test_native_gemini_stream_gets_no_comment(launch, upstream):
    """google-genai would try to parse a comment line as JSON: native Gemini streams are left alone."""
    upstream.script = [gemini_event("Hello"), STALL, gemini_event(" there", finish="STOP")]
    gw = launch("--sse-keepalive", INTERVAL)
    status, ctype, body = raw_stream(
        gw, "/v1/gemini/ai.team-a/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert status == 200 and ctype.startswith("text/event-stream")
    assert upstream.requests[-1].path == "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    assert body == upstream.payload()


# --------------------------------------------------------------------------- native SDKs
def test_anthropic_sdk_native_stream_ignores_comments(launch, upstream):
    import anthropic

    texts = ["Hello", " from", " Claude"]
    upstream.script = anthropic_stream(texts, STALL)
    gw = launch("--sse-keepalive", INTERVAL)
    status, _, raw = raw_stream(gw, "/v1/anthropic/ai.team-a/v1/messages",
                                {"model": "claude-test", "max_tokens": 64, "stream": True,
                                 "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and raw.count(COMMENT) >= 2
    assert_comments_only_between_events(raw)
    assert strip_comments(raw) == upstream.payload()

    client = anthropic.Anthropic(base_url=gw.native_base(prefix="anthropic"), api_key=CLIENT_KEY,
                                 max_retries=0, timeout=30)
    with client.messages.stream(model="claude-test", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        got = list(stream.text_stream)
        final = stream.get_final_message()
    assert got == texts
    assert final.stop_reason == "end_turn"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.headers.get("x-api-key") == PROVIDER_KEY


def genai_client(base_url: str):
    from google import genai
    from google.genai import types

    return genai.Client(api_key=CLIENT_KEY,
                        http_options=types.HttpOptions(base_url=base_url, api_version="v1beta", timeout=30_000))


def test_google_genai_sdk_native_stream_works_with_keepalive_on(launch, upstream):
    upstream.script = [gemini_event("Hello"), STALL, gemini_event(" there", finish="STOP")]
    gw = launch("--sse-keepalive", INTERVAL)
    client = genai_client(gw.native_base(prefix="gemini"))  # keep a reference: it closes when collected
    chunks = list(client.models.generate_content_stream(model="gemini-test", contents="hi"))
    assert [c.text for c in chunks] == ["Hello", " there"]
    assert upstream.requests[-1].path == "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"


def test_google_genai_sdk_breaks_on_a_comment_line(upstream):
    """Why native Gemini streams get no keep-alive: google-genai (pinned in
    tests/requirements.txt) parses a comment line as JSON and fails. If this
    starts passing, the exclusion in src/proxy/keepalive.rs can go."""
    upstream.script = [gemini_event("Hello"), COMMENT, gemini_event(" there", finish="STOP")]
    client = genai_client(upstream.origin)
    with pytest.raises(Exception) as err:
        list(client.models.generate_content_stream(model="gemini-test", contents="hi"))
    assert "keep-alive" in str(err.value) or "JSON" in str(err.value) or "Expecting value" in str(err.value), err.value
