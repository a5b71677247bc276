"""OpenAI-compatible family specifics through the Model Router with the `openai` SDK:
Perplexity has no tool calling (said in `/models`, a request with `tools` is a clear 400 that
never reaches the upstream); OpenRouter serves `openrouter/free` and sends the optional
attribution headers."""

from __future__ import annotations

import openai
import pytest

from harness import CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, proxy_doc, secret_doc

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def router(fake, start_gateway) -> openai.OpenAI:
    openrouter = provider_doc("orouter", fake.base_url, static=("openrouter/free",), type_="openrouter")
    openrouter += "  openrouter: {siteUrl: https://app.example.com, appName: Demo App}\n"
    gw = start_gateway(docs(secret_doc("openai-key", PROVIDER_KEY),
                            provider_doc("pplx", fake.base_url, static=("sonar",), type_="perplexity"),
                            openrouter, proxy_doc("team-a", ["pplx", "orouter"])))
    return openai.OpenAI(base_url=f"{gw.url}/v1/model-router/ai.team-a", api_key=CLIENT_KEY, max_retries=0)


def test_perplexity_says_no_tools_and_refuses_them(fake, router):
    models = {m.id: m.model_dump() for m in router.models.list().data}
    assert models["perplexity:sonar"].get("capabilities") == {"tool_calling": False}, models
    assert "capabilities" not in models["openrouter:openrouter/free"], models
    with pytest.raises(openai.BadRequestError) as e:
        router.chat.completions.create(model="perplexity:sonar", messages=MESSAGES, tools=TOOLS)
    assert e.value.body["type"] == "invalid_request_error"
    assert "tool calling" in e.value.body["message"] and "perplexity" in e.value.body["message"]
    assert not fake.requests_to("/v1/chat/completions"), "a request with tools reached Perplexity"
    # Without tools it is served.
    r = router.chat.completions.create(model="perplexity:sonar", messages=MESSAGES)
    assert r.model == "perplexity:sonar" and r.choices[0].message.content == "echo: hi"


def test_openrouter_free_and_attribution_headers(fake, router):
    r = router.chat.completions.create(model="openrouter:openrouter/free", messages=MESSAGES)
    assert r.model == "openrouter:openrouter/free"
    [sent] = fake.requests_to("/v1/chat/completions")
    assert sent.json["model"] == "openrouter/free"
    assert sent.header("http-referer") == "https://app.example.com"
    assert sent.header("x-title") == "Demo App"
    assert sent.header("authorization") == f"Bearer {PROVIDER_KEY}"
