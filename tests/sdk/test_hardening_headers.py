"""Headers by allow-list both ways, and unambiguous proxy IDs (issue 11, items 1, 3 and 4)."""

from __future__ import annotations

import openai

from fakes.openai_upstream import FakeOpenAI
from harness import CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, proxy_doc, secret_doc, standard_config

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def test_client_selectors_metadata_and_unknown_headers_never_reach_the_upstream(fake: FakeOpenAI, start_gateway):
    gw = start_gateway(standard_config(fake.base_url))
    client = gw.native_client(default_headers={
        "OpenAI-Organization": "org-client-chosen",
        "OpenAI-Project": "proj-client-chosen",
        "x-goog-user-project": "someone-elses-project",
        "Metadata-Flavor": "Google",
        "Metadata": "true",
        "metadata-token-ttl": "21600",
        "Cookie": "session=client",
        "X-Forwarded-For": "10.0.0.1",
        "OpenAI-Beta": "assistants=v2",
    })
    r = client.chat.completions.create(**CHAT)
    assert r.choices[0].message.content
    sent = fake.requests_to("/v1/chat/completions")[-1]
    names = sent.header_names()
    for gone in ("openai-organization", "openai-project", "x-goog-user-project", "metadata-flavor", "metadata",
                 "metadata-token-ttl", "cookie", "x-forwarded-for"):
        assert gone not in names, f"{gone} reached the upstream"
    # What the SDK needs still arrives: the beta header, its telemetry, the provider's key.
    assert sent.header("openai-beta") == "assistants=v2"
    assert any(n.startswith("x-stainless-") for n in names)
    assert sent.header("authorization") == f"Bearer {PROVIDER_KEY}"


def test_upstream_cookies_and_account_ids_never_reach_the_client(fake: FakeOpenAI, start_gateway):
    gw = start_gateway(standard_config(fake.base_url))
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-test",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    upstream_headers = {
        "Set-Cookie": "__cf_bm=upstream; path=/",
        "openai-organization": "org-upstream-account",
        "anthropic-organization-id": "org-upstream-account",
        "Alt-Svc": 'h3=":443"',
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-limit-tokens": "1000",
        "openai-processing-ms": "12",
        "x-request-id": "req_upstream",
    }
    for path in ("/v1/openai/ai.team-a/chat/completions", "/v1/model-router/ai.team-a/chat/completions"):
        fake.script(200, answer, upstream_headers)
        model = CHAT["model"] if "/openai/" in path else "openai:gpt-test"
        r = gw.raw("POST", path, body={**CHAT, "model": model})
        assert r.status == 200, r.text
        for gone in ("set-cookie", "openai-organization", "anthropic-organization-id", "alt-svc"):
            assert gone not in r.headers, f"{path}: {gone} reached the client"
        # Rate-limit and timing headers the SDKs read still arrive.
        assert r.headers.get("x-ratelimit-remaining-requests") == "99", (path, r.headers)
        assert r.headers.get("openai-processing-ms") == "12", path
    # Through the official SDK too: its raw response shows the rate-limit state.
    fake.script(200, answer, upstream_headers)
    raw = gw.native_client().chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers.get("x-ratelimit-limit-tokens") == "1000"
    assert "set-cookie" not in raw.headers


def test_a_bare_name_of_two_proxies_is_a_404_naming_both_qualified_ids(fake: FakeOpenAI, start_gateway):
    gw = start_gateway(docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", fake.base_url),
        proxy_doc("team-a", ["openai"]),
        secret_doc("openai-key", PROVIDER_KEY, ns="other"),
        provider_doc("openai", fake.base_url, ns="other"),
        proxy_doc("team-a", ["openai"], ns="other"),
        proxy_doc("team.b", ["openai"]),
    ))
    for path in ("/v1/model-router/team-a/chat/completions", "/v1/openai/team-a/chat/completions"):
        r = gw.raw("POST", path, body={**CHAT, "model": "openai:gpt-test" if "router" in path else "gpt-test"})
        assert r.status == 404, (path, r.status)
        msg = r.json()["error"]["message"]
        assert "ambiguous" in msg and "ai.team-a" in msg and "other.team-a" in msg, msg
    assert fake.requests_to("/v1/chat/completions") == []
    # Qualified IDs always work, names with dots included (split at the first dot), and a
    # unique bare name with a dot too.
    for proxy in ("ai.team-a", "other.team-a", "ai.team.b", "team.b"):
        client = openai.OpenAI(base_url=gw.router_base(proxy), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        r = client.chat.completions.create(model="openai:gpt-test", messages=CHAT["messages"])
        assert r.choices[0].message.content, proxy
