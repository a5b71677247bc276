"""OpenTelemetry traces and the GenAI metrics, end to end.

A real OTLP/HTTP receiver on 127.0.0.1 decodes what the gateway exports with
`opentelemetry-proto` (no mock of the exporter); the official `openai` SDK drives the gateway
(Model Router, streamed and not, a translated Anthropic provider, a native pass-through) with a
W3C `traceparent` of its own, and the fakes record what reached the upstream.
"""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional

import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from fakes.anthropic_upstream import FakeAnthropic
from harness import CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, proxy_doc, secret_doc, standard_config

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


# --------------------------------------------------------------------------- receiver
class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf) that keeps every span."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], trace_pb2.Span]] = []  # (resource attrs, span)
        self.posts = 0
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if (self.headers.get("Content-Encoding") or "") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.posts += 1
                    receiver.content_types.append(self.headers.get("Content-Type") or "")
                    for rs in request.resource_spans:
                        resource = attributes(rs.resource.attributes)
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                receiver.spans.append((resource, span))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: bytes, count: int, timeout: float = 10.0) -> list[trace_pb2.Span]:
        """The spans of one trace, once `count` of them arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = [s for _, s in self.spans if s.trace_id == trace_id]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


def value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


def one(spans: list[trace_pb2.Span], kind: int) -> trace_pb2.Span:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def new_traceparent() -> tuple[str, bytes, bytes]:
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return f"00-{trace_id.hex()}-{span_id.hex()}-01", trace_id, span_id


def assert_no_credential(spans: list[trace_pb2.Span]) -> None:
    text = str([attributes(s.attributes) for s in spans]) + str([[attributes(e.attributes) for e in s.events]
                                                                  for s in spans])
    for secret in (PROVIDER_KEY, CLIENT_KEY):
        assert secret not in text, "a credential reached a span"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def otel_env(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> OtlpReceiver:
    """The standard variables, as the Helm chart sets them."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "portcullis-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,team=platform")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    return receiver


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    f = FakeAnthropic().start()
    yield f
    f.stop()


def two_providers(openai_url: str, anthropic_url: str) -> str:
    return docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", openai_url),
        provider_doc("anthropic", anthropic_url, type_="anthropic", static=["claude-test"]),
        proxy_doc("team-a", ["openai", "anthropic"]),
    )


def metrics(gw) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


# --------------------------------------------------------------------------- tests
def test_router_chat_is_one_server_span_and_one_client_span_continuing_the_callers_trace(
        otel_env, fake, start_gateway):
    gw = start_gateway(standard_config(fake.base_url))
    traceparent, trace_id, caller_span = new_traceparent()
    out = gw.router_client().chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "hello"}], max_tokens=50, temperature=0.25,
        extra_headers={"traceparent": traceparent, "tracestate": "vendor=abc"})
    assert out.choices[0].message.content == "echo: hello"

    spans = otel_env.trace(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    # The caller's trace continues: same trace, the server span is the caller's span's child,
    # the client span the server span's child.
    assert server.parent_span_id == caller_span
    assert client.parent_span_id == server.span_id
    assert server.trace_state == "vendor=abc"
    assert server.name == "chat openai:gpt-test"
    a = attributes(server.attributes)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "openai:gpt-test"
    # The model as the answer the client got names it (the router answers in the client's terms).
    assert a["gen_ai.response.model"] == "openai:gpt-test"
    assert a["gen_ai.response.id"] == "chatcmpl-fake0001"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == 11
    assert a["gen_ai.usage.output_tokens"] == 3
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.request.temperature"] == 0.25
    assert a["http.response.status_code"] == 200
    assert a["portcullis.proxy"] == "ai.team-a"
    assert a["portcullis.identity"] == "anonymous"
    assert a["portcullis.route"] == "router"
    assert "error.type" not in a
    assert "gen_ai.input.messages" not in a, "content recorded without includeContent"

    c = attributes(client.attributes)
    assert client.name == "POST"
    assert c["gen_ai.provider.name"] == "openai"
    assert c["server.address"] == "127.0.0.1"
    assert c["server.port"] == fake.port
    assert c["url.full"] == f"{fake.base_url}/chat/completions"
    assert c["http.response.status_code"] == 200
    assert c["gen_ai.request.max_tokens"] == 50
    # The client span covers the attempt and lies within the server span.
    assert server.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano

    # The upstream call joins the same trace, as the client span's child.
    upstream = fake.all_requests()[-1]
    assert upstream.header("traceparent") == f"00-{trace_id.hex()}-{client.span_id.hex()}-01"
    assert upstream.header("tracestate") == "vendor=abc"
    assert_no_credential(spans)

    # The resource comes from the standard variables.
    with otel_env._lock:
        resource = next(r for r, s in otel_env.spans if s.trace_id == trace_id)
    assert resource["service.name"] == "portcullis-test"
    assert resource["deployment.environment.name"] == "ci" and resource["team"] == "platform"
    assert all(t == "application/x-protobuf" for t in otel_env.content_types)


def test_a_stream_span_ends_with_the_stream_with_usage_and_time_to_first_token(otel_env, fake, start_gateway):
    gw = start_gateway(standard_config(fake.base_url))
    fake.chunk_delay = 0.3
    traceparent, trace_id, _ = new_traceparent()
    stream = gw.router_client().chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"traceparent": traceparent})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: stream me"

    spans = otel_env.trace(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    a = attributes(server.attributes)
    assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == 3
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.response.id"] == "chatcmpl-fake0002"
    ttft = a["gen_ai.server.time_to_first_token"]
    took = (server.end_time_unix_nano - server.start_time_unix_nano) / 1e9
    # Three pauses of 0.3 s after the first chunk: the span lasts the whole stream, the first
    # token came before the first pause.
    assert took >= 0.85, took
    assert 0 < ttft < 0.3 < took, (ttft, took)
    # The attempt's span lasts as long as the upstream body.
    assert (client.end_time_unix_nano - client.start_time_unix_nano) / 1e9 >= 0.85
    assert client.parent_span_id == server.span_id


def test_translated_provider_and_native_route(otel_env, fake, anthropic_fake, start_gateway):
    gw = start_gateway(two_providers(fake.base_url, anthropic_fake.base_url))
    traceparent, trace_id, _ = new_traceparent()
    out = gw.router_client().chat.completions.create(
        model="anthropic:claude-test", messages=[{"role": "user", "content": "hi"}], max_tokens=64,
        extra_headers={"traceparent": traceparent})
    assert out.usage.prompt_tokens == 17

    spans = otel_env.trace(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    a = attributes(server.attributes)
    assert server.name == "chat anthropic:claude-test"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.usage.input_tokens"] == 17 and a["gen_ai.usage.output_tokens"] == 9
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.response.model"] == "anthropic:claude-test"
    c = attributes(client.attributes)
    assert c["url.full"] == f"{anthropic_fake.base_url}/v1/messages"
    assert c["gen_ai.request.max_tokens"] == 64
    upstream = anthropic_fake.all_requests()[-1]
    assert upstream.header("traceparent") == f"00-{trace_id.hex()}-{client.span_id.hex()}-01"
    assert_no_credential(spans)

    # Native pass-through: the caller's traceparent is replaced by the gateway's client span.
    traceparent, trace_id, caller_span = new_traceparent()
    gw.native_client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "native"}],
        extra_headers={"traceparent": traceparent})
    spans = otel_env.trace(trace_id, 2)
    server, client = one(spans, SERVER), one(spans, CLIENT)
    assert server.parent_span_id == caller_span
    a = attributes(server.attributes)
    assert a["gen_ai.operation.name"] == "chat" and a["portcullis.route"] == "native"
    assert a["gen_ai.response.model"] == "gpt-test"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert fake.all_requests()[-1].header("traceparent") == f"00-{trace_id.hex()}-{client.span_id.hex()}-01"


def test_refusals_and_root_spans(otel_env, fake, start_gateway):
    gw = start_gateway(standard_config(fake.base_url))
    # No traceparent: the gateway starts the trace.
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions",
               {"model": "openai:not-listed", "messages": [{"role": "user", "content": "x"}]},
               headers={"x-request-id": "rid-root"})
    assert r.status == 404, r.text
    deadline = time.monotonic() + 10
    server: Optional[trace_pb2.Span] = None
    while server is None and time.monotonic() < deadline:
        with otel_env._lock:
            server = next((s for _, s in otel_env.spans if s.kind == SERVER), None)
        time.sleep(0.05)
    assert server is not None
    assert server.parent_span_id == b""
    a = attributes(server.attributes)
    assert a["http.response.status_code"] == 404 and a["error.type"] == "404"
    assert not [s for _, s in otel_env.spans if s.kind == CLIENT], "no upstream attempt was made"
    # A malformed traceparent is ignored (a new trace), never an error.
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions",
               {"model": "openai:gpt-test", "messages": [{"role": "user", "content": "x"}]},
               headers={"traceparent": "00-zz-yy-01"})
    assert r.status == 200


def test_content_is_recorded_only_with_include_content(otel_env, fake, start_gateway):
    config = standard_config(fake.base_url).replace(
        "  providers: [{providerRef: {name: openai}}]\n",
        "  providers: [{providerRef: {name: openai}}]\n  audit: {includeContent: true}\n")
    assert "includeContent" in config
    gw = start_gateway(config)
    traceparent, trace_id, _ = new_traceparent()
    gw.router_client().chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "record me"}],
        extra_headers={"traceparent": traceparent})
    server = one(otel_env.trace(trace_id, 2), SERVER)
    a = attributes(server.attributes)
    assert json.loads(a["gen_ai.input.messages"]) == [{"role": "user", "content": "record me"}]


def test_genai_histograms_after_traffic(fake, start_gateway):
    # Metrics do not need tracing.
    gw = start_gateway(standard_config(fake.base_url))
    client = gw.router_client()
    client.chat.completions.create(model="openai:gpt-test", messages=[{"role": "user", "content": "a"}])
    for _ in client.chat.completions.create(model="openai:gpt-test", messages=[{"role": "user", "content": "b"}],
                                            stream=True, stream_options={"include_usage": True}):
        pass
    # A model the provider does not list is `other`, so callers cannot mint series.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="openai:gpt-made-up-123", messages=[{"role": "user", "content": "c"}])
    text = metrics(gw)
    labels = 'proxy="ai.team-a",provider="openai",operation="chat",model="openai:gpt-test"'
    assert f'gen_ai_client_token_usage_count{{{labels},token_type="input"}} 2' in text, text
    assert f'gen_ai_client_token_usage_sum{{{labels},token_type="input"}} 22.0' in text
    assert f'gen_ai_client_token_usage_sum{{{labels},token_type="output"}} 6.0' in text
    assert f'gen_ai_server_request_duration_seconds_count{{{labels}}} 2' in text
    assert f'gen_ai_server_time_to_first_token_seconds_count{{{labels}}} 1' in text
    assert "gpt-made-up-123" not in text
    assert text.rstrip().endswith("# EOF")


def test_without_an_endpoint_nothing_is_traced(receiver, fake, start_gateway):
    gw = start_gateway(standard_config(fake.base_url))
    traceparent, _, _ = new_traceparent()
    gw.router_client().chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "x"}],
        extra_headers={"traceparent": traceparent})
    assert fake.all_requests()[-1].header("traceparent") is None
    time.sleep(0.3)
    assert receiver.posts == 0


def test_an_unsupported_protocol_is_refused_at_startup(fake, start_gateway, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(AssertionError, match="http/protobuf"):
        start_gateway(standard_config(fake.base_url))


def test_guardrail_decisions_are_span_events(otel_env, start_gateway):
    from fakes.guard_upstreams import AgentModel
    from test_security import API_KEYS, EMAIL_CALL, OPENAI_TOOLS, TOOLS, config, openai_conversation

    model = AgentModel().start()
    try:
        gw = start_gateway(config(model, tools=TOOLS, clientAuth=API_KEYS))
        model.tool_call = EMAIL_CALL
        traceparent, trace_id, _ = new_traceparent()
        client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=20)
        out = client.chat.completions.create(
            model="openai:gpt-test", messages=openai_conversation(untrusted=True), tools=OPENAI_TOOLS,
            extra_headers={"traceparent": traceparent})
        assert not out.choices[0].message.tool_calls, "the exfiltration call was not blocked"
    finally:
        model.stop()
    server = one(otel_env.trace(trace_id, 2), SERVER)
    events = [(e.name, attributes(e.attributes)) for e in server.events]
    assert ("portcullis.guardrail", {
        "portcullis.guardrail.tool": "send_email",
        "portcullis.guardrail.action": "block",
        "portcullis.guardrail.rule": "no-exfiltration",
        "portcullis.guardrail.reason": events[0][1].get("portcullis.guardrail.reason"),
    }) in events, events
    assert events[0][1]["portcullis.guardrail.reason"], "a block says why"
    assert attributes(server.attributes)["portcullis.identity"] == "team-a-app"
