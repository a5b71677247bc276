"""Fixtures for the Model Router's Responses, Messages and embeddings suites: one fake upstream
per format (OpenAI, Anthropic, Gemini, Cohere, and Bedrock behind IRSA with SigV4 checked by
botocore's signer) and a gateway whose proxy `ai.team-a` reaches all five.

Test modules import what they use (`from router_api_fixtures import ...`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator, Optional

import pytest

from fakes.aws import Reply as BedrockReply
from fakes.base import Reply
from fakes.openai_upstream import FakeOpenAI
from harness import CLIENT_KEY, PROVIDER_KEY, Gateway, docs, provider_doc, proxy_doc, secret_doc
from test_bedrock import aws_env, bedrock_provider, control, irsa, runtime, store, sts  # noqa: F401
from translated_fixtures import anthropic_fake, cohere_fake, gemini_fake  # noqa: F401

CHAT_MODELS = {
    "openai": "gpt-test",
    "anthropic": "claude-sonnet-4-6",
    "gemini": "gemini-2.5-flash",
    "bedrock": "us.anthropic.claude-sonnet-4-20250514-v1:0",
    "cohere": "command-a-03-2025",
}
EMBED_MODELS = {
    "openai": "text-embedding-3-small",
    "gemini": "text-embedding-004",
    "bedrock": "amazon.titan-embed-text-v2:0",
    "cohere": "embed-v4.0",
}
FORMATS = tuple(CHAT_MODELS)

WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


def five_config(fakes: dict[str, Any], tools: Optional[dict] = None) -> str:
    parts = [secret_doc("provider-key", PROVIDER_KEY)]
    for name in ("openai", "anthropic", "gemini", "cohere"):
        static = [CHAT_MODELS[name]] + ([EMBED_MODELS[name]] if name in EMBED_MODELS else [])
        parts.append(provider_doc(name, fakes[name].base_url, secret="provider-key", type_=name, static=static))
    rt, ctl = fakes["bedrock"]
    parts.append(bedrock_provider("bedrock", rt.url, ctl.url))
    proxy = proxy_doc("team-a", ["openai", "anthropic", "gemini", "cohere", "bedrock"])
    if tools is not None:
        proxy += f"  tools: {json.dumps(tools)}\n"
    parts.append(proxy)
    return docs(*parts)


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture
def fakes5(openai_fake, anthropic_fake, gemini_fake, cohere_fake, irsa, runtime, control) -> dict[str, Any]:
    return {"openai": openai_fake, "anthropic": anthropic_fake, "gemini": gemini_fake, "cohere": cohere_fake,
            "bedrock": (runtime, control)}


@pytest.fixture
def gw5(fakes5, start_gateway) -> Gateway:
    return start_gateway(five_config(fakes5))


def queue_call(fakes: dict[str, Any], provider: str, name: str, args: dict, tool_id: str = "toolu_br01",
               input_tokens: int = 31, output_tokens: int = 12) -> None:
    """The provider's next answer is one call of `name`."""
    if provider == "bedrock":
        fakes["bedrock"][0].replies.append(BedrockReply(tool=(tool_id, name, args)))
    else:
        fakes[provider].queue(Reply(tool_calls=[(name, args)], input_tokens=input_tokens,
                                    output_tokens=output_tokens))


def queue_text(fakes: dict[str, Any], provider: str, text: str, input_tokens: int = 57,
               output_tokens: int = 8) -> None:
    if provider == "bedrock":
        fakes["bedrock"][0].replies.append(BedrockReply(text=text))
    else:
        fakes[provider].queue(Reply(text=text, input_tokens=input_tokens, output_tokens=output_tokens))


def usage_of(provider: str, input_tokens: int, output_tokens: int) -> tuple[int, int]:
    """The usage the client should see (the Bedrock fake always reports 21 in + 12 cached, 9 out)."""
    return (33, 9) if provider == "bedrock" else (input_tokens, output_tokens)


def generation_bodies(fakes: dict[str, Any], provider: str) -> list[dict]:
    """The JSON bodies the gateway sent to the provider's generation endpoint, in order."""
    if provider == "bedrock":
        return [json.loads(r.body) for r in fakes["bedrock"][0].requests
                if r.method == "POST" and ("/converse" in r.path)]
    fake = fakes[provider]
    paths = {"openai": ("/v1/chat/completions", "/v1/responses"), "anthropic": ("/v1/messages",), "cohere": ("/v2/chat",),
             "gemini": (":generateContent", ":streamGenerateContent")}[provider]
    return [r.json for r in fake.all_requests() if r.method == "POST" and r.path.endswith(paths)]


def audit_lines(gw: Gateway) -> list[dict]:
    out = []
    for line in gw.log_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "decisions" in obj and "request_id" in obj:
            out.append(obj)
    return out


def audit_for(gw: Gateway, request_id: str, timeout: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in audit_lines(gw):
            if line.get("request_id") == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no audit line for request {request_id}; log tail:\n{gw.log_tail(30)}")


__all__ = ["CLIENT_KEY"]
