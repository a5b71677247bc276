"""A fake Kubernetes API server for end-to-end tests (Python standard library + PyYAML).

It implements, over plain HTTP on 127.0.0.1, the parts of the API the gateway's
controller uses, with the semantics of the real server:

* One global ``resourceVersion`` counter; every write bumps it and stamps the object.
  ``metadata.generation`` starts at 1 and grows only when ``spec`` changes;
  ``uid`` and ``creationTimestamp`` are set on create.
* ``GET`` collection (all namespaces or one): a ``List`` whose ``metadata.resourceVersion``
  is the current counter; ``limit`` is honoured only as "may return everything"
  (as the real server does for cached lists) and no ``continue`` token is issued.
  ``Accept: ...;as=PartialObjectMetadataList`` answers metadata only.
* ``Accept: ...;as=PartialObjectMetadata`` on a watch streams metadata only. Every Secret
  whose data went out in a response is recorded (``secret_data_served``).
* ``GET ...?watch=true&resourceVersion=N``: a chunked stream of ``ADDED`` / ``MODIFIED`` /
  ``DELETED`` events newer than N, then live ones; ``BOOKMARK`` events when
  ``allowWatchBookmarks=true``; ``ERROR`` with a ``410 Gone`` Status when N is older
  than the compacted history; ``timeoutSeconds`` ends the stream.
* ``GET`` / ``POST`` / ``PUT`` (with ``resourceVersion`` preconditions: a stale one is
  ``409 Conflict``) / ``DELETE`` of single objects; ``POST`` of an existing name is ``409``.
* ``PATCH .../status`` with ``application/apply-patch+yaml`` (server-side apply): the
  status fields a field manager applies are merged in, ``conditions`` as a list-map keyed by
  ``type``; fields that manager applied before and no longer applies are removed; a
  status write bumps ``resourceVersion`` but not ``generation``. ``PATCH`` with
  ``application/merge-patch+json`` (Events).
* Discovery: ``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}/{version}``.
* Errors are ``Status`` objects (``kind: Status``, ``code``, ``reason``, ``message``).

Authentication: every request must carry ``Authorization: Bearer <token>`` with one of the
tokens the test registered (``add_token``); the token is recorded with each write, so a test
can tell which replica wrote what.

Test hooks: ``kill_watches("gone")`` sends ``ERROR 410`` on every open watch and compacts the
history; ``kill_watches("disconnect")`` drops every watch connection; ``set_unavailable``
answers 503 to everything and drops watches; ``go_away`` / ``come_back`` refuse connections
and listen again; ``compact()``; ``crds_installed = False`` makes the ``portcullis.dev``
group unknown (404); ``forbidden`` holds plurals RBAC denies (403).
"""

from __future__ import annotations

import copy
import json
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import yaml

# (group, version, plural) -> (kind, namespaced)
RESOURCES: dict[tuple[str, str, str], tuple[str, bool]] = {
    ("", "v1", "secrets"): ("Secret", True),
    ("", "v1", "namespaces"): ("Namespace", False),
    ("portcullis.dev", "v1alpha1", "llmproviders"): ("LlmProvider", True),
    ("portcullis.dev", "v1alpha1", "llmproxies"): ("LlmProxy", True),
    ("portcullis.dev", "v1alpha1", "llmbudgets"): ("LlmBudget", True),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True),
    ("events.k8s.io", "v1", "events"): ("Event", True),
}
CRD_GROUP = "portcullis.dev"
BOOKMARK_INTERVAL = 1.0


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


@dataclass
class Write:
    """One write the server accepted (for assertions)."""
    verb: str
    resource: str  # plural, with "/status" for the subresource
    namespace: Optional[str]
    name: str
    token: str
    content_type: str
    query: dict[str, list[str]]
    body: Any
    time: float


@dataclass
class Watch:
    resource: tuple[str, str, str]
    namespace: Optional[str]
    bookmarks: bool
    q: "queue.Queue[Optional[dict]]" = field(default_factory=queue.Queue)
    kill: Optional[str] = None  # "gone" | "disconnect"


class Status(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


class FakeApiServer:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rv = 100
        self.compacted_rv = 0
        # (group, version, plural) -> {(ns, name): obj}
        self.objects: dict[tuple[str, str, str], dict[tuple[Optional[str], str], dict]] = {
            r: {} for r in RESOURCES}
        self.history: list[tuple[int, tuple[str, str, str], str, dict]] = []
        self.watches: list[Watch] = []
        self.tokens: set[str] = set()
        self.writes: list[Write] = []
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query)
        # (namespace, name) of every Secret whose data went out in a response.
        self.secret_data_served: set[tuple[Optional[str], str]] = set()
        # (resource, ns, name, manager) -> {"keys": set, "conditions": set}
        self.managed: dict[tuple, dict[str, set]] = {}
        self.unavailable = False
        self.crds_installed = True
        self.forbidden: set[str] = set()  # plurals this client may not touch (RBAC, 403)
        self.server: Optional[ThreadingHTTPServer] = None
        self.port = 0
        self._open_sockets: set[socket.socket] = set()
        self._bookmark_thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def _listen(self, port: int) -> None:
        fake = self

        class Handler(_Handler):
            api = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def start(self) -> "FakeApiServer":
        self._listen(0)
        self._bookmark_thread = threading.Thread(target=self._bookmarks, daemon=True)
        self._bookmark_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.kill_watches("disconnect")
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    def kubeconfig(self, token: str, namespace: str = "portcullis-system") -> str:
        self.add_token(token)
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}],
        })

    # ------------------------------------------------------------ test hooks
    def kill_watches(self, how: str) -> None:
        """`gone`: ERROR 410 on every open watch and compact the history; `disconnect`: drop them."""
        with self.lock:
            if how == "gone":
                self.compacted_rv = self.rv
            for w in self.watches:
                w.kill = how
                w.q.put(None)

    def compact(self) -> None:
        """Forget history: a watch from any resourceVersion seen so far gets 410 Gone."""
        with self.lock:
            self.compacted_rv = self.rv
            self.history = []

    def set_unavailable(self, down: bool) -> None:
        """Answer 503 to everything (and drop watches) while `down`."""
        with self.lock:
            self.unavailable = down
        if down:
            self.kill_watches("disconnect")

    def go_away(self) -> None:
        """Unreachable: close the listening socket and every connection (connection refused)."""
        self.kill_watches("disconnect")
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        with self.lock:
            socks = list(self._open_sockets)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def come_back(self) -> None:
        """Listen again on the same port."""
        self._listen(self.port)

    def open_watches(self, plural: Optional[str] = None) -> int:
        with self.lock:
            return sum(1 for w in self.watches if w.kill is None and (plural is None or w.resource[2] == plural))

    def status_writes(self, plural: Optional[str] = None, name: Optional[str] = None) -> list[Write]:
        with self.lock:
            return [w for w in self.writes if w.resource.endswith("/status")
                    and (plural is None or w.resource == f"{plural}/status")
                    and (name is None or w.name == name)]

    # ------------------------------------------------------------ object API (tests and HTTP)
    @staticmethod
    def resource_of(kind_or_plural: str) -> tuple[str, str, str]:
        for r, (kind, _) in RESOURCES.items():
            if kind_or_plural in (kind, r[2]):
                return r
        raise KeyError(kind_or_plural)

    def apply(self, obj: dict) -> dict:
        """Create or replace (tests): like `kubectl apply` of the whole object, status kept."""
        r = self.resource_of(obj["kind"])
        ns = obj.get("metadata", {}).get("namespace") if RESOURCES[r][1] else None
        with self.lock:
            current = self.objects[r].get((ns, obj["metadata"]["name"]))
            if current is None:
                return self.create(r, ns, obj)
            new = copy.deepcopy(obj)
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if "status" in current and "status" not in new:
                new["status"] = current["status"]
            return self.update(r, ns, new["metadata"]["name"], new)

    def apply_yaml(self, text: str) -> list[dict]:
        return [self.apply(d) for d in yaml.safe_load_all(text) if d]

    def get(self, kind: str, namespace: Optional[str], name: str) -> Optional[dict]:
        r = self.resource_of(kind)
        with self.lock:
            o = self.objects[r].get((namespace if RESOURCES[r][1] else None, name))
            return copy.deepcopy(o)

    def delete(self, kind: str, namespace: Optional[str], name: str) -> None:
        r = self.resource_of(kind)
        with self.lock:
            self._delete(r, namespace, name)

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, r: tuple[str, str, str], etype: str, obj: dict) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = copy.deepcopy(obj)
        self.history.append((rv, r, etype, snapshot))
        ns = obj["metadata"].get("namespace")
        for w in self.watches:
            if w.resource == r and w.kill is None and (w.namespace is None or w.namespace == ns):
                w.q.put({"type": etype, "object": snapshot})

    def _typed(self, r: tuple[str, str, str], obj: dict) -> dict:
        obj["apiVersion"] = api_version(r[0], r[1])
        obj["kind"] = RESOURCES[r][0]
        return obj

    def create(self, r: tuple[str, str, str], ns: Optional[str], body: dict) -> dict:
        with self.lock:
            meta = body.setdefault("metadata", {})
            name = meta.get("name")
            if not name and meta.get("generateName"):
                name = meta["generateName"] + uuid.uuid4().hex[:5]
            if not name:
                raise Status(422, "Invalid", "metadata.name: Required value")
            if RESOURCES[r][1]:
                if meta.get("namespace") not in (None, ns):
                    raise Status(400, "BadRequest", "the namespace of the object does not match the request")
                meta["namespace"] = ns
            if (ns, name) in self.objects[r]:
                raise Status(409, "AlreadyExists", f'{r[2]} "{name}" already exists')
            obj = self._typed(r, copy.deepcopy(body))
            m = obj["metadata"]
            m["name"] = name
            m["uid"] = str(uuid.uuid4())
            m["creationTimestamp"] = now_rfc3339()
            m["generation"] = 1
            m["resourceVersion"] = self._bump()
            m.pop("managedFields", None)
            if r[2] == "secrets":
                self._normalise_secret(obj)
            self.objects[r][(ns, name)] = obj
            self._emit(r, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, r: tuple[str, str, str], ns: Optional[str], name: str, body: dict,
               status_only: bool = False) -> dict:
        with self.lock:
            current = self.objects[r].get((ns, name))
            if current is None:
                raise Status(404, "NotFound", f'{r[2]} "{name}" not found')
            want_rv = body.get("metadata", {}).get("resourceVersion")
            if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                raise Status(409, "Conflict",
                             f'Operation cannot be fulfilled on {r[2]} "{name}": the object has been '
                             "modified; please apply your changes to the latest version and try again")
            new = self._typed(r, copy.deepcopy(body))
            if status_only:
                kept = copy.deepcopy(current)
                kept["status"] = new.get("status")
                new = kept
            else:
                if "status" in current and r[2] in ("llmproviders", "llmproxies", "llmbudgets"):
                    new["status"] = current["status"]  # status only through /status
                for k in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                    new["metadata"][k] = current["metadata"].get(k)
                if new.get("spec") != current.get("spec"):
                    new["metadata"]["generation"] = current["metadata"]["generation"] + 1
            if r[2] == "secrets":
                self._normalise_secret(new)
            if new == current:
                return copy.deepcopy(current)  # a no-op write does not bump resourceVersion
            new["metadata"]["resourceVersion"] = self._bump()
            self.objects[r][(ns, name)] = new
            self._emit(r, "MODIFIED", new)
            return copy.deepcopy(new)

    def _delete(self, r: tuple[str, str, str], ns: Optional[str], name: str) -> dict:
        current = self.objects[r].pop((ns, name), None)
        if current is None:
            raise Status(404, "NotFound", f'{r[2]} "{name}" not found')
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._bump()
        self._emit(r, "DELETED", gone)
        return gone

    @staticmethod
    def _normalise_secret(obj: dict) -> None:
        """stringData is write-only: the server folds it into base64 `data`."""
        import base64
        sd = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {}) or {}
        for k, v in sd.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data
        obj.setdefault("type", "Opaque")

    def server_side_apply_status(self, r: tuple[str, str, str], ns: Optional[str], name: str,
                                 patch: dict, manager: str, force: bool) -> dict:
        with self.lock:
            current = self.objects[r].get((ns, name))
            if current is None:
                raise Status(404, "NotFound", f'{r[2]} "{name}" not found')
            if patch.get("apiVersion") != api_version(r[0], r[1]) or patch.get("kind") != RESOURCES[r][0]:
                raise Status(400, "BadRequest", "apply patches must name the object's apiVersion and kind")
            applied = patch.get("status") or {}
            status = copy.deepcopy(current.get("status") or {})
            key = (r, ns, name, manager)
            owned = self.managed.get(key, {"keys": set(), "conditions": set()})
            # Other managers' fields conflict unless forced.
            for (r2, ns2, n2, m2), own2 in self.managed.items():
                if (r2, ns2, n2) == (r, ns, name) and m2 != manager and not force:
                    clash = (set(applied) - {"conditions"}) & own2["keys"]
                    if clash:
                        raise Status(409, "Conflict", f"Apply failed with conflicts: {sorted(clash)} owned by {m2}")
            # Remove what this manager applied before and no longer applies.
            for k in owned["keys"] - set(applied):
                status.pop(k, None)
            new_types = {c.get("type") for c in applied.get("conditions") or []}
            conds = [c for c in status.get("conditions") or []
                     if not (c.get("type") in owned["conditions"] and c.get("type") not in new_types)]
            for k, v in applied.items():
                if k == "conditions":
                    continue
                status[k] = copy.deepcopy(v)
            for c in applied.get("conditions") or []:
                conds = [x for x in conds if x.get("type") != c.get("type")] + [copy.deepcopy(c)]
            order = [c.get("type") for c in applied.get("conditions") or []]
            conds.sort(key=lambda c: order.index(c["type"]) if c.get("type") in order else len(order))
            if conds:
                status["conditions"] = conds
            else:
                status.pop("conditions", None)
            self.managed[key] = {"keys": set(applied) - {"conditions"}, "conditions": new_types}
            body = copy.deepcopy(current)
            body["status"] = status
            body["metadata"].pop("resourceVersion", None)
            return self.update(r, ns, name, body, status_only=True)

    def merge_patch(self, r: tuple[str, str, str], ns: Optional[str], name: str, patch: dict) -> dict:
        def merge(a: Any, b: Any) -> Any:
            if not isinstance(b, dict) or not isinstance(a, dict):
                return copy.deepcopy(b)
            out = dict(a)
            for k, v in b.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = merge(a.get(k), v)
            return out

        with self.lock:
            current = self.objects[r].get((ns, name))
            if current is None:
                raise Status(404, "NotFound", f'{r[2]} "{name}" not found')
            body = merge(current, patch)
            body["metadata"].pop("resourceVersion", None)
            return self.update(r, ns, name, body)

    def list(self, r: tuple[str, str, str], ns: Optional[str]) -> dict:
        with self.lock:
            items = [copy.deepcopy(o) for (ons, _), o in sorted(self.objects[r].items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
                     if ns is None or ons == ns]
            return {"kind": RESOURCES[r][0] + "List", "apiVersion": api_version(r[0], r[1]),
                    "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def _bookmarks(self) -> None:
        while not self._stopping.wait(BOOKMARK_INTERVAL):
            with self.lock:
                for w in self.watches:
                    if w.bookmarks and w.kill is None:
                        w.q.put({"type": "BOOKMARK", "object": {
                            "kind": RESOURCES[w.resource][0], "apiVersion": api_version(w.resource[0], w.resource[1]),
                            "metadata": {"resourceVersion": str(self.rv)}}})

    def open_watch(self, r: tuple[str, str, str], ns: Optional[str], since: Optional[str], bookmarks: bool) -> Watch:
        """Register a watch and queue the events it missed since `since` (410 if compacted)."""
        with self.lock:
            w = Watch(r, ns, bookmarks)
            start = int(since) if since not in (None, "", "0") else self.rv
            if start < self.compacted_rv:
                w.q.put({"type": "ERROR", "object": Status(
                    410, "Expired", f"too old resource version: {start} ({self.compacted_rv})").body() | {"code": 410}})
                w.q.put(None)
                w.kill = "gone-initial"
                return w
            for rv, r2, etype, obj in self.history:
                if rv > start and r2 == r and (ns is None or obj["metadata"].get("namespace") == ns):
                    w.q.put({"type": etype, "object": copy.deepcopy(obj)})
            self.watches.append(w)
            return w

    def close_watch(self, w: Watch) -> None:
        with self.lock:
            if w in self.watches:
                self.watches.remove(w)


def parse_path(path: str) -> tuple[tuple[str, str, str], Optional[str], Optional[str], Optional[str]]:
    """/api/v1/namespaces/ns/secrets/name/status -> ((group, version, plural), ns, name, sub)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise Status(404, "NotFound", "the server could not find the requested resource")
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in RESOURCES:
        ns, rest = rest[1], rest[2:]
    r = (group, version, rest[0])
    if r not in RESOURCES:
        raise Status(404, "NotFound", "the server could not find the requested resource")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return r, ns, name, sub


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.api.lock:
            self.api._open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.api.lock:
            self.api._open_sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # ---- helpers
    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_raw(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _body(self) -> Any:
        raw = self._raw
        if not raw:
            return {}
        ct = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ct == "application/apply-patch+yaml":
            return yaml.safe_load(raw)
        return json.loads(raw)

    def _token(self) -> str:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.api.tokens:
            raise Status(401, "Unauthorized", "Unauthorized")
        return auth[7:]

    def _handle(self, method: str) -> None:
        api = self.api
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self._raw = self._read_raw()  # always consume the body: the connection is kept alive
        with api.lock:
            api.requests.append((method, url.path, url.query))
        try:
            if api.unavailable:
                raise Status(503, "ServiceUnavailable", "the fake API server is unavailable (test hook)")
            token = self._token()
            if method == "GET" and self._discovery(url.path):
                return
            r, ns, name, sub = parse_path(url.path)
            if r[0] == CRD_GROUP and not api.crds_installed:
                raise Status(404, "NotFound", "the server could not find the requested resource")
            if r[2] in api.forbidden:
                raise Status(403, "Forbidden", f'{r[2]} is forbidden: User "system:serviceaccount:test" cannot '
                                               f'list resource "{r[2]}"')
            if method == "GET" and name is None and query.get("watch", [""])[0] in ("true", "1"):
                return self._watch(r, ns, query)
            if method == "GET" and name is None:
                listed = api.list(r, ns)
                if "as=PartialObjectMetadataList" not in (self.headers.get("Accept") or "") and r[2] == "secrets":
                    with api.lock:
                        api.secret_data_served.update((i["metadata"].get("namespace"), i["metadata"]["name"])
                                                      for i in listed["items"])
                if "as=PartialObjectMetadataList" in (self.headers.get("Accept") or ""):
                    listed = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                              "metadata": listed["metadata"],
                              "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                         "metadata": i["metadata"]} for i in listed["items"]]}
                return self._send(200, listed)
            if method == "GET":
                with api.lock:
                    obj = api.objects[r].get((ns, name))
                if obj is None:
                    raise Status(404, "NotFound", f'{r[2]} "{name}" not found')
                if r[2] == "secrets":
                    with api.lock:
                        api.secret_data_served.add((ns, name))
                return self._send(200, obj)
            body = self._body()
            resource = r[2] + (f"/{sub}" if sub else "")
            ct = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if method == "POST" and name is None:
                out = api.create(r, ns, body)
                code = 201
            elif method == "PUT" and name:
                if body.get("metadata", {}).get("name") != name:
                    raise Status(400, "BadRequest", "the name of the object does not match the name in the URL")
                out = api.update(r, ns, name, body, status_only=(sub == "status"))
                code = 200
            elif method == "PATCH" and name and sub == "status" and ct == "application/apply-patch+yaml":
                manager = query.get("fieldManager", [""])[0]
                if not manager:
                    raise Status(422, "Invalid", "fieldManager is required for apply requests")
                out = api.server_side_apply_status(r, ns, name, body, manager,
                                                   query.get("force", ["false"])[0] == "true")
                code = 200
            elif method == "PATCH" and name and sub is None and ct == "application/merge-patch+json":
                out = api.merge_patch(r, ns, name, body)
                code = 200
            elif method == "DELETE" and name:
                with api.lock:
                    out = api._delete(r, ns, name)
                code = 200
            else:
                raise Status(405, "MethodNotAllowed", f"{method} {url.path} ({ct}) is not supported by the fake")
            with api.lock:
                api.writes.append(Write(method, resource, ns, name or out["metadata"]["name"], token, ct,
                                        query, body, time.time()))
            self._send(code, out)
        except Status as s:
            self._send(s.code, s.body())
        except (ValueError, yaml.YAMLError) as e:
            self._send(400, Status(400, "BadRequest", f"cannot decode the body: {e}").body())

    def _discovery(self, path: str) -> bool:
        api = self.api
        groups: dict[str, list[str]] = {}
        for (g, v, plural) in RESOURCES:
            if g and (g != CRD_GROUP or api.crds_installed) and plural not in groups.get(f"{g}/{v}", []):
                groups.setdefault(f"{g}/{v}", []).append(plural)
        if path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
            return True
        if path == "/apis":
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in groups]})
            return True
        gv = path.removeprefix("/apis/").removeprefix("/api/").strip("/")
        if path in ("/api/v1",) or gv in groups:
            resources = []
            for (g, v, plural), (kind, namespaced) in RESOURCES.items():
                if api_version(g, v) == gv:
                    resources.append({"name": plural, "kind": kind, "namespaced": namespaced, "singularName": "",
                                      "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
                    if g == CRD_GROUP:
                        resources.append({"name": f"{plural}/status", "kind": kind, "namespaced": True,
                                          "singularName": "", "verbs": ["get", "patch", "update"]})
            self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                             "resources": resources})
            return True
        return False

    def _watch(self, r: tuple[str, str, str], ns: Optional[str], query: dict[str, list[str]]) -> None:
        api = self.api
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        timeout = float(query.get("timeoutSeconds", ["300"])[0])
        w = api.open_watch(r, ns, query.get("resourceVersion", [None])[0], bookmarks)
        metadata_only = "as=PartialObjectMetadata" in (self.headers.get("Accept") or "")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    ev = w.q.get(timeout=0.2)
                except queue.Empty:
                    if api.unavailable:
                        break
                    continue
                if ev is None:
                    if w.kill == "gone":
                        self._chunk(json.dumps({"type": "ERROR", "object": Status(
                            410, "Expired", "too old resource version (watch killed by the test)").body()}).encode())
                    elif w.kill == "disconnect":
                        # Drop the connection without ending the chunked body.
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    break
                if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    if metadata_only:
                        ev = {"type": ev["type"], "object": {"apiVersion": "meta.k8s.io/v1",
                                                             "kind": "PartialObjectMetadata",
                                                             "metadata": ev["object"]["metadata"]}}
                    elif r[2] == "secrets":
                        m = ev["object"]["metadata"]
                        with api.lock:
                            api.secret_data_served.add((m.get("namespace"), m["name"]))
                self._chunk(json.dumps(ev).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            api.close_watch(w)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
