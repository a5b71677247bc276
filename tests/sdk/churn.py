"""Traffic that runs while the configuration is reloaded: native and Model Router requests,
streamed and not, each checked for its full answer (shared by the file and Kubernetes churn
tests)."""

from __future__ import annotations

import threading
import time

MESSAGES = [{"role": "user", "content": "load"}]


class Traffic(threading.Thread):
    """Loops one kind of request against one proxy and records every failure."""

    def __init__(self, client, route: str, stream: bool, max_seconds: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.client, self.route, self.stream = client, route, stream
        self.model = "openai:gpt-test" if route == "router" else "gpt-test"
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                if self.stream:
                    parts = []
                    for chunk in self.client.chat.completions.create(model=self.model, messages=MESSAGES,
                                                                     stream=True):
                        if chunk.choices:
                            parts.append(chunk.choices[0].delta.content or "")
                    text = "".join(parts)
                else:
                    text = self.client.chat.completions.create(model=self.model,
                                                               messages=MESSAGES).choices[0].message.content
                if text != "echo: load":
                    self.failures.append(f"{self.route}/{self.stream}: wrong content {text!r}")
                else:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{self.route}/{self.stream}: {type(e).__name__}: {e}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def start_traffic(gw, proxy: str = "ai.team-a") -> list[Traffic]:
    flows = [Traffic(gw.router_client(proxy=proxy, timeout=10), "router", False),
             Traffic(gw.router_client(proxy=proxy, timeout=10), "router", True),
             Traffic(gw.native_client(proxy=proxy, timeout=10), "native", False),
             Traffic(gw.native_client(proxy=proxy, timeout=10), "native", True)]
    for t in flows:
        t.start()
    return flows


def finish_traffic(flows: list[Traffic]) -> None:
    for t in flows:
        t.finish()
    failures = [f for t in flows for f in t.failures]
    assert failures == [], f"{len(failures)} failed requests during reloads, first: {failures[:5]}"
    for t in flows:
        assert t.ok >= 5, f"{t.route}/{t.stream}: only {t.ok} requests"
