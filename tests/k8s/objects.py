"""Kubernetes objects the tests create, and small polling helpers."""

from __future__ import annotations

import base64
import time
from typing import Any, Callable, Optional, Sequence

NS = "ai"
LEASE_NAMESPACE = "portcullis-system"  # the kubeconfig namespace the tests give the gateway


def secret(name: str, key: str, ns: str = NS, string_data: bool = True) -> dict:
    meta = {"name": name, "namespace": ns}
    if string_data:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                "stringData": {"apiKey": key}}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "data": {"apiKey": base64.b64encode(key.encode()).decode()}}


def provider(name: str, base_url: str, secret_name: str = "openai-key", ns: str = NS,
             static: Optional[Sequence[str]] = ("gpt-test", "gpt-test-mini")) -> dict:
    spec: dict[str, Any] = {"type": "openai", "baseUrl": base_url,
                            "auth": {"apiKey": {"secretRef": {"name": secret_name}}}}
    if static is not None:
        spec["models"] = {"static": list(static)}
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProvider",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def proxy(name: str, providers: Sequence[str] = ("openai",), ns: str = NS) -> dict:
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"providers": [{"providerRef": {"name": p}} for p in providers]}}


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Optional[float]:
    """Seconds from now until `pred()` first held (start of the successful attempt), or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        started = time.monotonic()
        try:
            if pred():
                return started - t0
        except Exception:  # noqa: BLE001 - not yet
            pass
        time.sleep(interval)
    return None


def condition(obj: Optional[dict], type_: str) -> Optional[dict]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def cond_is(obj: Optional[dict], type_: str, status: str, reason: Optional[str] = None) -> bool:
    c = condition(obj, type_)
    return c is not None and c["status"] == status and (reason is None or c["reason"] == reason)
