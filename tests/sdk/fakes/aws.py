"""Fake AWS endpoints for the Bedrock tests (standard library + botocore only).

* ``FakeSTS`` - ``AssumeRoleWithWebIdentity`` as the STS API reference documents it:
  a form-encoded POST (``Action``, ``Version``, ``RoleArn``, ``RoleSessionName``,
  ``WebIdentityToken``) answered with the ``AssumeRoleWithWebIdentityResponse`` XML.
  It checks the token and role, mints short-lived temporary credentials into a shared
  ``CredentialStore`` and counts its calls.
* ``FakePodIdentity`` - the EKS Pod Identity agent: ``GET`` with ``Authorization`` set to
  the token file's content, answered with the container-credentials JSON
  (``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``AccountId``, ``Expiration``).
* ``FakeBedrock`` - Bedrock runtime and control plane. Every request's SigV4 signature is
  recomputed with botocore's own signer from the credentials the identity fakes minted
  (the gateway's code plays no part in the check); a missing, expired or wrong signature,
  or a body whose hash does not match ``x-amz-content-sha256``, gets 403 in Bedrock's
  error shape. It answers ``Converse`` (JSON), ``ConverseStream``
  (``application/vnd.amazon.eventstream`` frames, built here with ``zlib.crc32``),
  ``InvokeModel`` / ``InvokeModelWithResponseStream`` for Claude (Anthropic bodies, base64
  ``chunk`` events) and embedding models, and ``ListInferenceProfiles`` (paginated with ``maxResults`` / ``nextToken``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fakes import serving

ROLE_ARN = "arn:aws:iam::111122223333:role/portcullis-bedrock"
WEB_IDENTITY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.fake-irsa-service-account-token.sig"
POD_IDENTITY_TOKEN = "fake-eks-pod-identity-token-7c1d"


# ------------------------------------------------------------------ credentials
@dataclass
class Minted:
    access_key: str
    secret_key: str
    token: str
    expires: float  # unix seconds


class CredentialStore:
    """Credentials the identity fakes minted; the Bedrock fake verifies against them."""

    def __init__(self) -> None:
        self.by_key: dict[str, Minted] = {}
        self.lock = threading.Lock()

    def mint(self, lifetime: float, prefix: str = "ASIA") -> Minted:
        m = Minted(
            access_key=prefix + secrets.token_hex(8).upper(),
            secret_key=secrets.token_urlsafe(30),
            token="FwoGZXIvYXdzE" + secrets.token_urlsafe(40),
            expires=time.time() + lifetime,
        )
        with self.lock:
            self.by_key[m.access_key] = m
        return m

    def secrets(self) -> list[str]:
        with self.lock:
            return [s for m in self.by_key.values() for s in (m.secret_key, m.token)]


def iso8601(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    time: float
    verdict: str = ""  # "ok" or why the signature was refused
    access_key: str = ""

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Server:
    """A threaded HTTP/1.1 server on 127.0.0.1 with a `handle(handler, rec)` hook."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = serving.read_body(self)
                rec = Recorded(self.command, self.path, list(self.headers.items()), body, time.time())
                with outer.lock:
                    outer.requests.append(rec)
                outer.handle(self, rec)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.tls = False
        self.httpd = serving.make_server(Handler)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def serve_tls(self, certfile: str, keyfile: str):
        """Serve HTTPS with this certificate (call before `start`)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.tls = True
        return self

    def start(self):
        serving.run(self.httpd)
        return self

    def stop(self) -> None:
        serving.close(self.httpd)

    def handle(self, h: BaseHTTPRequestHandler, rec: Recorded) -> None:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
             headers: Optional[dict[str, str]] = None) -> None:
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)


# ------------------------------------------------------------------ STS
class FakeSTS(_Server):
    def __init__(self, store: CredentialStore, lifetime: float = 3600.0, delay: float = 0.0) -> None:
        super().__init__()
        self.store = store
        self.lifetime = lifetime
        self.delay = delay  # seconds before answering (widens the window for races)
        self.calls = 0
        self.refused = 0

    def handle(self, h: BaseHTTPRequestHandler, rec: Recorded) -> None:
        form = {k: v[0] for k, v in parse_qs(rec.body.decode()).items()}
        if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15":
            return self._error(h, 400, "InvalidAction", "only AssumeRoleWithWebIdentity is faked")
        if form.get("WebIdentityToken") != WEB_IDENTITY_TOKEN or form.get("RoleArn") != ROLE_ARN:
            self.refused += 1
            return self._error(h, 400, "InvalidIdentityToken", "token or role not recognised")
        if not form.get("RoleSessionName"):
            return self._error(h, 400, "ValidationError", "RoleSessionName is required")
        with self.lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        m = self.store.mint(self.lifetime)
        session = escape(form["RoleSessionName"])
        xml = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ai:portcullis</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::111122223333:assumed-role/portcullis-bedrock/{session}</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{m.token}</SessionToken>
      <SecretAccessKey>{m.secret_key}</SecretAccessKey>
      <Expiration>{iso8601(m.expires)}</Expiration>
      <AccessKeyId>{m.access_key}</AccessKeyId>
    </Credentials>
    <Provider>arn:aws:iam::111122223333:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/FAKE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{secrets.token_hex(16)}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""
        self.send(h, 200, xml.encode(), "text/xml")

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        xml = (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
               f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
               f"<RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>")
        self.send(h, status, xml.encode(), "text/xml")


# ------------------------------------------------------------------ EKS Pod Identity
class FakePodIdentity(_Server):
    def __init__(self, store: CredentialStore, lifetime: float = 3600.0) -> None:
        super().__init__()
        self.store = store
        self.lifetime = lifetime
        self.calls = 0

    def handle(self, h: BaseHTTPRequestHandler, rec: Recorded) -> None:
        if rec.method != "GET" or rec.path != "/v1/credentials":
            return self.send(h, 404, b'{"message":"not found"}', "application/json")
        if rec.header("authorization") != POD_IDENTITY_TOKEN:
            return self.send(h, 401, b'{"message":"bad token"}', "application/json")
        with self.lock:
            self.calls += 1
        m = self.store.mint(self.lifetime)
        body = json.dumps({
            "AccessKeyId": m.access_key, "SecretAccessKey": m.secret_key, "Token": m.token,
            "AccountId": "111122223333", "Expiration": iso8601(m.expires),
        }).encode()
        self.send(h, 200, body, "application/json")


# ------------------------------------------------------------------ event stream
def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("!B", len(n)) + n + struct.pack("!BH", 7, len(v)) + v


def event_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude (total, headers length, CRC), headers, payload, CRC."""
    hdr = b"".join(_header(k, v) for k, v in headers)
    total = 16 + len(hdr) + len(payload)
    prelude = struct.pack("!II", total, len(hdr))
    prelude += struct.pack("!I", zlib.crc32(prelude) & 0xFFFFFFFF)
    msg = prelude + hdr + payload
    return msg + struct.pack("!I", zlib.crc32(msg) & 0xFFFFFFFF)


def event(event_type: str, payload: dict) -> bytes:
    # Bedrock pads payloads with a "p" field of random length; clients must ignore it.
    body = dict(payload, p="abcdefghijklmnopqrstuvwxyz"[: secrets.randbelow(20) + 1])
    return event_frame(
        [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        json.dumps(body).encode(),
    )


def exception(kind: str, message: str) -> bytes:
    return event_frame(
        [(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")],
        json.dumps({"message": message}).encode(),
    )


# ------------------------------------------------------------------ Bedrock
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$"
)

DEFAULT_PROFILES = [
    # (id, status)
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "ACTIVE"),
    ("us.amazon.nova-pro-v1:0", "ACTIVE"),
    ("eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "ACTIVE"),
    ("apac.amazon.nova-lite-v1:0", "ACTIVE"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "ACTIVE"),
    ("us.meta.llama3-2-90b-instruct-v1:0", "ACTIVE"),
    ("us.deepseek.r1-v1:0", "ACTIVE"),
    ("us.anthropic.claude-retired-v1:0", "INACTIVE"),
    ("mars.anthropic.claude-future-v1:0", "ACTIVE"),
]


@dataclass
class Reply:
    """What the fake answers to the next Converse / ConverseStream call."""

    text: Optional[str] = None  # default: derived from the request
    tool: Optional[tuple[str, str, dict]] = None  # (toolUseId, name, input)
    stop_reason: Optional[str] = None
    exception: Optional[tuple[str, str]] = None  # mid-stream exception (type, message)
    status: int = 200
    error_body: Optional[dict] = None


class FakeBedrock(_Server):
    def __init__(self, store: CredentialStore, region: str = "us-east-1",
                 bearer: Optional[str] = None) -> None:
        super().__init__()
        self.store = store
        self.region = region
        self.bearer = bearer  # accept `Authorization: Bearer <bearer>` (Bedrock API keys)
        self.profiles: list[tuple[str, str]] = list(DEFAULT_PROFILES)
        self.page_size = 3
        self.replies: list[Reply] = []
        self.chunk_delay = 0.0
        self.last_request_id = ""

    # ---- SigV4 check, with botocore's signer
    def verify(self, rec: Recorded) -> str:
        auth = rec.header("authorization") or ""
        if self.bearer is not None:
            return "ok" if auth == f"Bearer {self.bearer}" else "bearer token missing or wrong"
        m = AUTH_RE.match(auth)
        if not m:
            return "no SigV4 Authorization header"
        rec.access_key = m["key"]
        with self.store.lock:
            minted = self.store.by_key.get(m["key"])
        if minted is None:
            return "unknown access key"
        if time.time() >= minted.expires:
            return "ExpiredTokenException: the security token included in the request is expired"
        if m["service"] != "bedrock" or m["region"] != self.region:
            return f"wrong scope {m['region']}/{m['service']}"
        if rec.header("x-amz-security-token") != minted.token:
            return "session token missing or wrong"
        amz_date = rec.header("x-amz-date") or ""
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return "bad x-amz-date"
        if abs(time.time() - when.timestamp()) > 300 or amz_date[:8] != m["date"]:
            return "x-amz-date out of range"
        signed = m["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return "host and x-amz-date must be signed"
        payload_hash = rec.header("x-amz-content-sha256")
        if payload_hash is not None and payload_hash != hashlib.sha256(rec.body).hexdigest():
            return "x-amz-content-sha256 does not match the body"
        headers = {name: rec.header(name) or "" for name in signed}
        request = AWSRequest(method=rec.method, url=f"http://{rec.header('host')}{rec.target}",
                             data=rec.body, headers=headers)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(minted.access_key, minted.secret_key, minted.token),
                           "bedrock", self.region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not secrets.compare_digest(expected, m["sig"]):
            return "SignatureDoesNotMatch"
        return "ok"

    def signed_ok(self) -> list[Recorded]:
        return [r for r in self.requests if r.verdict == "ok"]

    # ---- dispatch
    def handle(self, h: BaseHTTPRequestHandler, rec: Recorded) -> None:
        rec.verdict = self.verify(rec)
        if rec.verdict != "ok":
            kind = "ExpiredTokenException" if "Expired" in rec.verdict else "AccessDeniedException"
            if rec.verdict == "SignatureDoesNotMatch":
                kind = "InvalidSignatureException"
            body = json.dumps({"message": f"The request signature was refused: {rec.verdict}"}).encode()
            return self.send(h, 403, body, "application/json", {"x-amzn-ErrorType": kind})
        path = rec.path
        mm = re.fullmatch(r"/model/([^/]+)/(converse|converse-stream)", path)
        if rec.method == "POST" and mm:
            return self.converse(h, rec, unquote(mm[1]), mm[2] == "converse-stream")
        mi = re.fullmatch(r"/model/([^/]+)/(invoke|invoke-with-response-stream)", path)
        if rec.method == "POST" and mi and "anthropic.claude" in unquote(mi[1]):
            return self.invoke_claude(h, rec, unquote(mi[1]), mi[2] == "invoke-with-response-stream")
        if rec.method == "POST" and mi and mi[2] == "invoke":
            return self.invoke_embed(h, rec, unquote(mi[1]))
        if rec.method == "GET" and path == "/inference-profiles":
            return self.list_profiles(h, rec)
        if rec.method == "GET" and path == "/foundation-models":
            body = {"modelSummaries": [{"modelId": "amazon.nova-pro-v1:0", "providerName": "Amazon"}]}
            return self.send(h, 200, json.dumps(body).encode(), "application/json")
        self.send(h, 404, json.dumps({"message": f"no route {path}"}).encode(), "application/json",
                  {"x-amzn-ErrorType": "ResourceNotFoundException"})

    def list_profiles(self, h: BaseHTTPRequestHandler, rec: Recorded) -> None:
        q = {k: v[0] for k, v in parse_qs(urlsplit(rec.target).query).items()}
        size = min(int(q.get("maxResults", "1000")), self.page_size)
        start = 0
        if "nextToken" in q:
            token = q["nextToken"]
            if not token.startswith("page/") or not token.endswith("=="):
                return self.send(h, 400, b'{"message":"bad nextToken"}', "application/json",
                                 {"x-amzn-ErrorType": "ValidationException"})
            start = int(token[5:-2])
        page = self.profiles[start:start + size]
        body: dict[str, Any] = {"inferenceProfileSummaries": [
            {
                "inferenceProfileName": pid.split(".", 1)[-1],
                "description": f"Routes requests to {pid}",
                "createdAt": "2024-08-21T17:03:15.123000Z",
                "updatedAt": "2024-08-21T17:03:15.123000Z",
                "inferenceProfileArn": f"arn:aws:bedrock:{self.region}:111122223333:inference-profile/{pid}",
                "models": [{"modelArn": f"arn:aws:bedrock:{self.region}::foundation-model/{pid.split('.', 1)[-1]}"}],
                "inferenceProfileId": pid,
                "status": status,
                "type": "SYSTEM_DEFINED",
            }
            for pid, status in page
        ]}
        if start + size < len(self.profiles):
            body["nextToken"] = f"page/{start + size}=="
        self.send(h, 200, json.dumps(body).encode(), "application/json")

    # ---- InvokeModel for embedding models (Titan Text Embeddings v2, Cohere Embed)
    def invoke_embed(self, h: BaseHTTPRequestHandler, rec: Recorded, model: str) -> None:
        def invalid(message: str) -> None:
            self.send(h, 400, json.dumps({"message": message}).encode(), "application/json",
                      {"x-amzn-ErrorType": "ValidationException"})
        try:
            req = json.loads(rec.body)
        except ValueError:
            return invalid("Malformed input request, please reformat your input and try again.")
        if model.startswith("amazon.titan-embed-text"):
            extra = set(req) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
            if extra:
                return invalid(f"Malformed input request: extraneous key [{sorted(extra)[0]}] is not permitted")
            text = req.get("inputText")
            if not isinstance(text, str) or not text:
                return invalid("Malformed input request: #: required key [inputText] not found")
            dims = req.get("dimensions", 1024)
            if dims not in (256, 512, 1024):
                return invalid("Malformed input request: #/dimensions: must be one of 256, 512, 1024")
            tokens = len(text.split())
            vec = ([float(len(text)), 0.5, -0.25, 0.0] + [0.125] * dims)[:dims]
            body = {"embedding": vec, "inputTextTokenCount": tokens}
            return self.send(h, 200, json.dumps(body).encode(), "application/json",
                             {"X-Amzn-Bedrock-Input-Token-Count": str(tokens)})
        if model.startswith("cohere.embed"):
            texts = req.get("texts")
            if not isinstance(texts, list) or not texts or len(texts) > 96:
                return invalid("Malformed input request: #/texts: expected between 1 and 96 items")
            if req.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
                return invalid("Malformed input request: #: required key [input_type] not found")
            vecs = [[float(len(t)), 0.5, -0.25, float(i)] for i, t in enumerate(texts)]
            body = {"id": "emb-1", "texts": texts, "embeddings": {"float": vecs},
                    "response_type": "embeddings_by_type"}
            return self.send(h, 200, json.dumps(body).encode(), "application/json",
                             {"X-Amzn-Bedrock-Input-Token-Count": str(sum(len(t.split()) for t in texts))})
        return invalid(f"The provided model identifier is invalid: {model}")

    # ---- InvokeModel for Claude (the Anthropic Messages body)
    def invoke_claude(self, h: BaseHTTPRequestHandler, rec: Recorded, model: str, stream: bool) -> None:
        """``/model/{id}/invoke``: an Anthropic ``message``; ``invoke-with-response-stream``: one
        ``chunk`` event per Anthropic stream event, its JSON base64 in ``bytes``, the last
        (``message_stop``) with ``amazon-bedrock-invocationMetrics``. Both answers carry
        ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count``."""
        try:
            req = json.loads(rec.body)
            assert req.get("anthropic_version") == "bedrock-2023-05-31"
            assert isinstance(req.get("max_tokens"), int) and req.get("messages")
        except Exception:  # noqa: BLE001
            return self.send(h, 400, b'{"message":"Malformed input request"}', "application/json",
                             {"x-amzn-ErrorType": "ValidationException"})
        text, input_tokens, output_tokens = f"[{model}] invoked", 21, 9
        counts = {"X-Amzn-Bedrock-Input-Token-Count": str(input_tokens),
                  "X-Amzn-Bedrock-Output-Token-Count": str(output_tokens)}
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message = {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": usage}
        if not stream:
            return self.send(h, 200, json.dumps(message).encode(), "application/json", counts)
        events = [
            {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                  "usage": {**usage, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
              for w in re.findall(r"\S+\s*", text)),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}},
            {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": input_tokens, "outputTokenCount": output_tokens,
                "invocationLatency": 120, "firstByteLatency": 40}},
        ]
        h.send_response(200)
        h.send_header("content-type", "application/vnd.amazon.eventstream")
        h.send_header("transfer-encoding", "chunked")
        h.send_header("x-amzn-RequestId", secrets.token_hex(8))
        h.send_header("X-Amzn-Bedrock-Content-Type", "application/json")
        h.end_headers()
        for e in events:
            f = event("chunk", {"bytes": base64.b64encode(json.dumps(e).encode()).decode()})
            h.wfile.write(f"{len(f):x}\r\n".encode() + f + b"\r\n")
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    # ---- Converse
    def next_reply(self, req: dict) -> Reply:
        with self.lock:
            if self.replies:
                return self.replies.pop(0)
        return Reply()

    @staticmethod
    def default_text(model: str, req: dict) -> str:
        last = req["messages"][-1]
        texts = [b["text"] for b in last["content"] if "text" in b]
        results = [c["text"] for b in last["content"] if "toolResult" in b for c in b["toolResult"]["content"] if "text" in c]
        if results:
            return f"[{model}] the tool said: {results[0]}"
        return f"[{model}] you said: {' '.join(texts)}"

    def converse(self, h: BaseHTTPRequestHandler, rec: Recorded, model: str, stream: bool) -> None:
        try:
            req = json.loads(rec.body)
            assert isinstance(req.get("messages"), list) and req["messages"]
        except Exception:  # noqa: BLE001
            return self.send(h, 400, b'{"message":"Malformed input request"}', "application/json",
                             {"x-amzn-ErrorType": "ValidationException"})
        reply = self.next_reply(req)
        if reply.status != 200:
            return self.send(h, reply.status, json.dumps(reply.error_body or {"message": "error"}).encode(),
                             "application/json")
        usage = {"inputTokens": 21, "outputTokens": 9, "totalTokens": 42,
                 "cacheReadInputTokens": 8, "cacheWriteInputTokens": 4}
        text = reply.text if reply.text is not None else ("" if reply.tool else self.default_text(model, req))
        stop = reply.stop_reason or ("tool_use" if reply.tool else "end_turn")
        if not stream:
            content: list[dict] = []
            if text:
                content.append({"text": text})
            if reply.tool:
                tid, name, inp = reply.tool
                content.append({"toolUse": {"toolUseId": tid, "name": name, "input": inp}})
            body = {"output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 123}}
            return self.send(h, 200, json.dumps(body).encode(), "application/json",
                             {"x-amzn-RequestId": secrets.token_hex(8)})
        frames = [event("messageStart", {"role": "assistant"})]
        index = 0
        if text:
            for piece in re.findall(r"\S+\s*|\s+", text):
                frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
            frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if reply.tool:
            tid, name, inp = reply.tool
            frames.append(event("contentBlockStart", {"contentBlockIndex": index,
                                                      "start": {"toolUse": {"toolUseId": tid, "name": name}}}))
            raw = json.dumps(inp)
            for i in range(0, len(raw), 7):
                frames.append(event("contentBlockDelta", {"contentBlockIndex": index,
                                                          "delta": {"toolUse": {"input": raw[i:i + 7]}}}))
            frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        if reply.exception:
            frames.append(exception(*reply.exception))
        else:
            frames.append(event("messageStop", {"stopReason": stop}))
            frames.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 123}}))
        self.last_request_id = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        h.send_response(200)
        h.send_header("content-type", "application/vnd.amazon.eventstream")
        h.send_header("transfer-encoding", "chunked")
        h.send_header("x-amzn-RequestId", self.last_request_id)
        h.end_headers()
        for f in frames:
            h.wfile.write(f"{len(f):x}\r\n".encode() + f + b"\r\n")
            h.wfile.flush()
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


# ------------------------------------------------------------------ EC2 instance metadata (IMDSv2)
class FakeIMDS(_Server):
    """IMDSv2 as documented: `PUT /latest/api/token` (ttl header) → session token; then
    `GET /latest/meta-data/iam/security-credentials/` → role name and
    `GET …/security-credentials/{role}` → credentials JSON, each with the session token."""

    ROLE = "portcullis-node-role"

    def __init__(self, store: CredentialStore, lifetime: float = 3600.0) -> None:
        super().__init__()
        self.store = store
        self.lifetime = lifetime
        self.tokens: set[str] = set()
        self.credential_calls = 0

    def handle(self, h: BaseHTTPRequestHandler, rec: Recorded) -> None:
        if rec.method == "PUT" and rec.path == "/latest/api/token":
            if not rec.header("x-aws-ec2-metadata-token-ttl-seconds"):
                return self.send(h, 400, b"missing ttl", "text/plain")
            token = secrets.token_urlsafe(24)
            with self.lock:
                self.tokens.add(token)
            return self.send(h, 200, token.encode(), "text/plain",
                             {"x-aws-ec2-metadata-token-ttl-seconds": rec.header("x-aws-ec2-metadata-token-ttl-seconds") or ""})
        if rec.header("x-aws-ec2-metadata-token") not in self.tokens:
            return self.send(h, 401, b"", "text/plain")
        base = "/latest/meta-data/iam/security-credentials/"
        if rec.method == "GET" and rec.path == base:
            return self.send(h, 200, self.ROLE.encode(), "text/plain")
        if rec.method == "GET" and rec.path == base + self.ROLE:
            with self.lock:
                self.credential_calls += 1
            m = self.store.mint(self.lifetime)
            body = json.dumps({"Code": "Success", "LastUpdated": iso8601(time.time()), "Type": "AWS-HMAC",
                               "AccessKeyId": m.access_key, "SecretAccessKey": m.secret_key, "Token": m.token,
                               "Expiration": iso8601(m.expires)})
            return self.send(h, 200, body.encode(), "text/plain")
        self.send(h, 404, b"", "text/plain")
