"""No secret leaks: exercise success and every error path, then search logs and bodies."""

from __future__ import annotations

import openai

from harness import (ALT_PROVIDER_KEY, CLIENT_KEY, PROVIDER_KEY, SECRETS, closed_port, docs,
                     provider_doc, proxy_doc, run_check, secret_doc)

MESSAGES = [{"role": "user", "content": "leak?"}]


def test_no_secret_in_logs_bodies_or_check_output(fake, start_gateway, config_dir):
    config = docs(
        secret_doc("openai-key", PROVIDER_KEY),
        secret_doc("alt-key", ALT_PROVIDER_KEY, b64=True),  # base64 `data` form
        provider_doc("openai", fake.base_url, timeout="1s"),
        provider_doc("alt", fake.base_url, secret="alt-key"),
        provider_doc("down", f"http://127.0.0.1:{closed_port()}/v1", secret="alt-key"),
        proxy_doc("team-a", ["openai", ("alt", "alt"), ("down", "down")]),
    )
    gw = start_gateway(config)
    router, native = gw.router_client(), gw.native_client()
    seen: list[str] = []  # every response body the client saw

    # Success paths.
    r = router.chat.completions.with_raw_response.create(model="openai:gpt-test", messages=MESSAGES)
    seen.append(r.text)
    list(router.chat.completions.create(model="openai:gpt-test", messages=MESSAGES, stream=True))
    r = router.chat.completions.with_raw_response.create(model="alt:gpt-test", messages=MESSAGES)
    seen.append(r.text)
    seen.append(native.models.with_raw_response.list().text)
    # The base64 Secret was decoded and injected for the `alt` provider.
    alt_reqs = [q for q in fake.requests_to("/v1/chat/completions") if q.header("authorization")
                == f"Bearer {ALT_PROVIDER_KEY}"]
    assert len(alt_reqs) == 1, [q.header("authorization") for q in fake.requests_to("/v1/chat/completions")]

    def expect_error(call):
        try:
            call()
        except openai.APIStatusError as e:
            seen.append(e.response.text)
            return e.status_code
        raise AssertionError("expected an error")

    # Error paths: upstream error, unreachable, timeout, unknown prefix/proxy, malformed, climbing.
    fake.script(401, {"error": {"message": "Incorrect API key provided: sk-upstr*****", "type":
                                "invalid_request_error", "param": None, "code": "invalid_api_key"}})
    assert expect_error(lambda: router.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)) == 401
    assert expect_error(lambda: router.chat.completions.create(model="down:gpt-test", messages=MESSAGES)) == 502
    assert expect_error(lambda: gw.native_client(prefix="down").models.list()) == 502
    fake.script(200, {}, delay=3.0)
    assert expect_error(lambda: router.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)) == 504
    assert expect_error(lambda: router.chat.completions.create(model="nosuch:x", messages=MESSAGES)) == 404
    assert expect_error(lambda: gw.router_client(proxy="ai.zzz").models.list()) == 404
    for target, body in [("/v1/model-router/ai.team-a/chat/completions", "{bad json"),
                         ("/v1/openai/ai.team-a/../../x", None),
                         ("/v1/openai/ai.team-a/a%2Fb", None)]:
        raw = gw.raw("POST" if body else "GET", target, body)
        assert raw.status >= 400
        seen.append(raw.text)

    for i, body in enumerate(seen):
        for s in SECRETS:
            assert s not in body, f"secret leaked in response body #{i}: {body[:300]}"
        assert CLIENT_KEY not in body, f"client key echoed in response body #{i}"

    chk = run_check(config_dir)
    for s in SECRETS:
        assert s not in chk.stdout + chk.stderr, "secret leaked in `portcullis check` output"

    gw.stop()
    log = gw.log_text()
    assert log.strip(), "the gateway logged nothing (expected at least access-log lines)"
    for s in SECRETS:
        assert s not in log, f"secret {s[:12]}... leaked in the gateway log {gw.log_path}"
    assert CLIENT_KEY not in log, f"client key leaked in the gateway log {gw.log_path}"
