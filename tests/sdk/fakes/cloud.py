"""Fake cloud identity endpoints and cloud LLM upstreams (Vertex AI, Azure OpenAI, Claude on
Foundry) for the keyless-credential tests. Standard library plus ``cryptography``.

Identity fakes mint random tokens and remember them in a shared :class:`TokenBook` with their
scope and expiry; the upstream fakes accept a request only when its bearer is a token the
book minted for the scope that upstream needs and that has not expired. Every fake records
what it received.

* :class:`FakeMetadataServer` - the GCE metadata server (``GCE_METADATA_HOST``):
  ``GET /computeMetadata/v1/instance/service-accounts/default/token`` answers
  ``{"access_token", "expires_in", "token_type"}`` only with ``Metadata-Flavor: Google``.
* :class:`FakeEntra` - Microsoft Entra ID over TLS (``AZURE_AUTHORITY_HOST``):
  ``POST /{tenant}/oauth2/v2.0/token`` with the client-credentials grant and a
  ``client_assertion`` that must equal the federated token file's content.
* :class:`FakeVertex` - Gemini on Vertex AI: ``…/projects/{p}/locations/{l}/publishers/google/
  models/{m}:generateContent`` and ``:streamGenerateContent?alt=sse``; also accepts a
  self-signed service-account JWT, checking its RS256 signature with the key's public key.
* :class:`FakeAzureOpenAI` - Azure OpenAI deployment paths (``/openai/deployments/{d}/chat/
  completions?api-version=``) and Foundry v1 paths (``/openai/v1/chat/completions``).
* :class:`FakeFoundryAnthropic` - Anthropic Messages under ``/anthropic/v1/messages``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from fakes import serving

GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
FOUNDRY_SCOPE = "https://ai.azure.com/.default"


# --------------------------------------------------------------------- plumbing
@dataclass
class Recorded:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    time: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def bearer(self) -> Optional[str]:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


Reply = tuple[int, dict[str, str], "bytes | Iterable[bytes]"]


def json_reply(status: int, body: Any, headers: Optional[dict[str, str]] = None) -> Reply:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return status, h, json.dumps(body).encode()


def sse_reply(events: Iterable[bytes]) -> Reply:
    return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, events


class FakeServer:
    """A threaded HTTP(S) server on 127.0.0.1 that records requests and calls `handle`."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.tls = tls
        self._server: Optional[ThreadingHTTPServer] = None

    def handle(self, req: Recorded) -> Reply:  # pragma: no cover - overridden
        return json_reply(404, {"error": "not found"})

    def start(self) -> "FakeServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                body = serving.read_body(self)
                parts = urlsplit(self.path)
                req = Recorded(self.command, self.path, parts.path, parse_qs(parts.query),
                               {k.lower(): v for k, v in self.headers.items()}, body)
                with fake.lock:
                    fake.requests.append(req)
                status, headers, payload = fake.handle(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if isinstance(payload, (bytes, bytearray)):
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in payload:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._server = serving.serve(Handler, tls=self.tls)
        return self

    def stop(self) -> None:
        if self._server is not None:
            serving.close(self._server)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def recorded(self, pred: Callable[[Recorded], bool] = lambda r: True) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if pred(r)]


# --------------------------------------------------------------------- tokens
class TokenBook:
    """Tokens minted by the identity fakes: token -> (scope, expires_at monotonic)."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()

    def mint(self, scope: str, lifetime: int, prefix: str) -> str:
        token = f"{prefix}-{secrets.token_urlsafe(24)}"
        with self.lock:
            self.tokens[token] = (scope, time.monotonic() + lifetime)
        return token

    def minted(self) -> list[str]:
        with self.lock:
            return list(self.tokens)

    def check(self, token: Optional[str], scope: str) -> Optional[str]:
        """None when `token` is valid for `scope`, else why not."""
        if not token:
            return "no bearer token"
        with self.lock:
            entry = self.tokens.get(token)
        if entry is None:
            return "bearer token was not minted by the identity endpoint"
        if scope not in entry[0].split():
            return f"bearer token has scope {entry[0]!r}, not {scope!r}"
        if time.monotonic() > entry[1]:
            return "bearer token has expired"
        return None


class FakeMetadataServer(FakeServer):
    """GCE metadata server: tokens for the default service account."""

    def __init__(self, book: TokenBook, lifetime: int = 3600) -> None:
        super().__init__()
        self.book = book
        self.lifetime = lifetime

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token_requests(self) -> list[Recorded]:
        return self.recorded(lambda r: r.path.endswith("/service-accounts/default/token"))

    def handle(self, req: Recorded) -> Reply:
        if req.headers.get("metadata-flavor") != "Google":
            return 403, {"Content-Type": "text/plain"}, b"Missing Metadata-Flavor:Google header.\n"
        if req.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            scopes = ",".join(req.query.get("scopes", [])).replace(",", " ") or GCP_SCOPE
            token = self.book.mint(scopes, self.lifetime, "ya29.mds")
            return json_reply(200, {"access_token": token, "expires_in": self.lifetime,
                                    "token_type": "Bearer"})
        if req.path == "/computeMetadata/v1/universe/universe-domain":
            return 200, {"Content-Type": "application/text"}, b"googleapis.com"
        if req.path in ("/", "/computeMetadata/v1", "/computeMetadata/v1/"):
            return 200, {"Content-Type": "application/text", "Metadata-Flavor": "Google"}, b""
        return 404, {"Content-Type": "text/plain"}, b"not found\n"


class FakeGoogleSts(FakeServer):
    """Google Security Token Service (`POST /v1/token`, RFC 8693 token exchange) for workload
    identity federation: the subject token must be the federated token the test wrote."""

    def __init__(self, book: TokenBook, audience: str, subject_token: str, lifetime: int = 3600) -> None:
        super().__init__()
        self.book, self.audience, self.subject_token, self.lifetime = book, audience, subject_token, lifetime

    def handle(self, req: Recorded) -> Reply:
        if req.method != "POST" or req.path != "/v1/token":
            return json_reply(404, {"error": "not_found"})
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        checks = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "audience": self.audience,
            "subject_token": self.subject_token,
        }
        for k, want in checks.items():
            if form.get(k) != want:
                return json_reply(400, {"error": "invalid_request", "error_description": f"bad {k}"})
        scope = form.get("scope", "")
        if GCP_SCOPE not in scope.split():
            return json_reply(400, {"error": "invalid_scope", "error_description": scope})
        token = self.book.mint(scope, self.lifetime, "ya29.sts")
        return json_reply(200, {"access_token": token, "issued_token_type": checks["requested_token_type"],
                                "token_type": "Bearer", "expires_in": self.lifetime})


# --------------------------------------------------------------------- TLS for Entra
class CertAuthority:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""

    def __init__(self, directory: Path) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis test CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False,
                                           encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_pem = directory / "test-ca.pem"
        self.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_pem = directory / "entra-cert.pem"
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_pem = directory / "entra-key.pem"
        self.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_pem), str(self.key_pem))
        return ctx


class FakeEntra(FakeServer):
    """Entra ID token endpoint for workload identity federation (client assertion grant)."""

    def __init__(self, book: TokenBook, ca: CertAuthority, tenant: str, client_id: str,
                 federated_token: str, lifetime: int = 3600) -> None:
        super().__init__(tls=ca.server_context())
        self.book = book
        self.tenant = tenant
        self.client_id = client_id
        self.federated_token = federated_token
        self.lifetime = lifetime

    def token_requests(self) -> list[Recorded]:
        return self.recorded(lambda r: r.path.endswith("/oauth2/v2.0/token"))

    def _error(self, code: str, description: str) -> Reply:
        return json_reply(400, {"error": code, "error_description": description})

    def handle(self, req: Recorded) -> Reply:
        if req.method != "POST" or req.path != f"/{self.tenant}/oauth2/v2.0/token":
            return json_reply(404, {"error": "not_found"})
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return self._error("unsupported_grant_type", "expected client_credentials")
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return self._error("invalid_request", "bad client_assertion_type")
        if form.get("client_id") != self.client_id:
            return self._error("unauthorized_client", "unknown client_id")
        if form.get("client_assertion") != self.federated_token:
            return self._error("invalid_client", "AADSTS700211: assertion does not match")
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return self._error("invalid_scope", "scope must end in /.default")
        token = self.book.mint(scope, self.lifetime, "eyJ0.entra")
        return json_reply(200, {"token_type": "Bearer", "expires_in": self.lifetime,
                                "ext_expires_in": self.lifetime, "access_token": token})


# --------------------------------------------------------------------- service-account keys
class ServiceAccountKey:
    """An RSA key pair in Google's service-account JSON key format."""

    def __init__(self, token_uri: str, email: str = "gateway@test-proj.iam.gserviceaccount.com") -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.email = email
        pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
        self.json = {
            "type": "service_account", "project_id": "test-proj", "private_key_id": "k1",
            "private_key": pem, "client_email": email, "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
        }

    def verify(self, jwt: Optional[str]) -> Optional[str]:
        """None when `jwt` is an RS256 JWT signed by this key for the cloud-platform scope."""
        if not jwt or jwt.count(".") != 2:
            return "bearer is not a JWT"
        head_b64, claims_b64, sig_b64 = jwt.split(".")

        def unb64(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        try:
            header, claims = json.loads(unb64(head_b64)), json.loads(unb64(claims_b64))
            self.private.public_key().verify(unb64(sig_b64), f"{head_b64}.{claims_b64}".encode(),
                                             padding.PKCS1v15(), hashes.SHA256())
        except Exception as e:  # noqa: BLE001 - any failure means "not valid"
            return f"JWT signature or encoding invalid: {type(e).__name__}"
        if header.get("alg") != "RS256":
            return f"JWT alg {header.get('alg')!r}"
        if claims.get("iss") != self.email:
            return f"JWT iss {claims.get('iss')!r}"
        if GCP_SCOPE not in str(claims.get("scope", "")).split():
            return f"JWT scope {claims.get('scope')!r}"
        now = time.time()
        if not (claims.get("iat", 0) - 60 <= now <= claims.get("exp", 0)):
            return "JWT expired or not yet valid"
        return None


# --------------------------------------------------------------------- Vertex AI
def gemini_text(text: str, model: str) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 4, "totalTokenCount": 11},
            "modelVersion": model}


class FakeVertex(FakeServer):
    """Gemini on Vertex AI for one project and location."""

    def __init__(self, project: str, location: str, book: TokenBook,
                 sa_key: Optional[ServiceAccountKey] = None) -> None:
        super().__init__()
        self.project, self.location = project, location
        self.book, self.sa_key = book, sa_key

    def _auth_error(self, req: Recorded) -> Optional[str]:
        if self.sa_key is not None:
            return self.sa_key.verify(req.bearer)
        return self.book.check(req.bearer, GCP_SCOPE)

    def model_requests(self) -> list[Recorded]:
        return self.recorded(lambda r: ":generateContent" in r.path or ":streamGenerateContent" in r.path)

    def handle(self, req: Recorded) -> Reply:
        why = self._auth_error(req)
        if why:
            return json_reply(401, {"error": {"code": 401, "message": f"Request had invalid authentication credentials: {why}",
                                              "status": "UNAUTHENTICATED"}})
        if req.method == "GET" and req.path == "/v1beta1/publishers/google/models":
            return json_reply(200, {"publisherModels": [
                {"name": "publishers/google/models/gemini-2.5-flash", "versionId": "001"},
                {"name": "publishers/google/models/gemini-2.5-pro", "versionId": "001"}]})
        prefix = f"/projects/{self.project}/locations/{self.location}/publishers/google/models/"
        version, _, rest = req.path.lstrip("/").partition("/")
        if version not in ("v1", "v1beta1") or not ("/" + rest).startswith(prefix):
            return json_reply(404, {"error": {"code": 404, "message": f"no route {req.path}", "status": "NOT_FOUND"}})
        model, _, method = ("/" + rest)[len(prefix):].partition(":")
        body = req.json or {}
        contents = body.get("contents") or []
        if not contents or any(c.get("role") not in ("user", "model") or not c.get("parts") for c in contents):
            return json_reply(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                              "message": "contents[].role must be user or model, with parts"}})
        answered = any("functionResponse" in p for c in contents for p in c.get("parts", []))
        wants_tool = bool(body.get("tools")) and not answered
        if wants_tool:
            answer = {"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5, "totalTokenCount": 14},
                "modelVersion": model}
        elif answered:
            answer = gemini_text("It is sunny in Paris.", model)
        else:
            answer = gemini_text("Hello from Vertex.", model)
        if method == "generateContent":
            return json_reply(200, answer)
        if method == "streamGenerateContent":
            if req.query.get("alt") != ["sse"]:
                return json_reply(400, {"error": {"code": 400, "message": "alt=sse expected", "status": "INVALID_ARGUMENT"}})
            return sse_reply(self._stream(answer))
        return json_reply(404, {"error": {"code": 404, "message": f"unknown method {method}", "status": "NOT_FOUND"}})

    @staticmethod
    def _stream(answer: dict) -> Iterable[bytes]:
        parts = answer["candidates"][0]["content"]["parts"]
        if "text" in parts[0]:
            words = parts[0]["text"].split(" ")
            for i, w in enumerate(words):
                chunk = {"candidates": [{"content": {"role": "model", "parts": [
                    {"text": w + ("" if i == len(words) - 1 else " ")}]}, "index": 0}],
                    "modelVersion": answer["modelVersion"]}
                if i == len(words) - 1:
                    chunk["candidates"][0]["finishReason"] = "STOP"
                    chunk["usageMetadata"] = answer["usageMetadata"]
                yield f"data: {json.dumps(chunk)}\r\n\r\n".encode()
        else:
            yield f"data: {json.dumps(answer)}\r\n\r\n".encode()


# --------------------------------------------------------------------- Azure OpenAI
class FakeAzureOpenAI(FakeServer):
    """Azure OpenAI: deployment paths with api-version, and Foundry v1 paths."""

    def __init__(self, book: TokenBook, deployments: Iterable[str] = ("gpt-4o-prod", "gpt-4o-mini"),
                 api_key: Optional[str] = None, scope: str = COGNITIVE_SCOPE) -> None:
        super().__init__()
        self.book, self.api_key, self.scope = book, api_key, scope
        self.deployments = list(deployments)

    def chat_requests(self) -> list[Recorded]:
        return self.recorded(lambda r: r.path.endswith("/chat/completions"))

    def _auth_error(self, req: Recorded) -> Optional[str]:
        if self.api_key is not None:
            return None if req.headers.get("api-key") == self.api_key else "api-key header missing or wrong"
        return self.book.check(req.bearer, self.scope)

    def handle(self, req: Recorded) -> Reply:
        why = self._auth_error(req)
        if why:
            return json_reply(401, {"error": {"code": "401", "message": f"Access denied: {why}"}})
        path = req.path
        if path.startswith("/openai/deployments") or path == "/openai/models":
            if not req.query.get("api-version"):
                return json_reply(404, {"error": {"code": "404", "message": "Resource not found"}})
        if path == "/openai/deployments" and req.method == "GET":
            return json_reply(200, {"object": "list", "data": [
                {"id": d, "object": "deployment", "model": "gpt-4o", "status": "succeeded",
                 "created_at": 1700000000} for d in self.deployments]})
        if path == "/openai/v1/models" and req.method == "GET":
            return json_reply(200, {"object": "list", "data": [
                {"id": d, "object": "model", "created": 1700000000, "owned_by": "system"}
                for d in self.deployments]})
        model = None
        if path.startswith("/openai/deployments/") and path.endswith("/chat/completions"):
            model = path[len("/openai/deployments/"):-len("/chat/completions")]
            if model not in self.deployments:
                return json_reply(404, {"error": {"code": "DeploymentNotFound",
                                                  "message": "The API deployment for this resource does not exist."}})
        elif path == "/openai/v1/chat/completions":
            model = (req.json or {}).get("model")
        if model is None or req.method != "POST":
            return json_reply(404, {"error": {"code": "404", "message": "Resource not found"}})
        body = req.json or {}
        messages = body.get("messages") or []
        answered = any(m.get("role") == "tool" for m in messages)
        wants_tool = bool(body.get("tools")) and not answered
        created = int(time.time())
        if wants_tool:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_az1", "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]}
            finish = "tool_calls"
        else:
            text = "It is sunny in Paris." if answered else "Hello from Azure."
            message = {"role": "assistant", "content": text}
            finish = "stop"
        usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
        if not body.get("stream"):
            return json_reply(200, {"id": "chatcmpl-az", "object": "chat.completion", "created": created,
                                    "model": model, "choices": [{"index": 0, "message": message,
                                                                 "finish_reason": finish}],
                                    "usage": usage})

        def chunks() -> Iterable[bytes]:
            def chunk(delta: dict, finish_reason: Optional[str] = None) -> bytes:
                c = {"id": "chatcmpl-az", "object": "chat.completion.chunk", "created": created,
                     "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
                return f"data: {json.dumps(c)}\n\n".encode()
            yield chunk({"role": "assistant", "content": ""})
            if wants_tool:
                tc = message["tool_calls"][0]
                yield chunk({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                             "function": {"name": "get_weather", "arguments": ""}}]})
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": tc["function"]["arguments"]}}]})
            else:
                for w in message["content"].split(" "):
                    yield chunk({"content": w + " "})
            yield chunk({}, finish)
            yield b"data: [DONE]\n\n"
        return sse_reply(chunks())


# --------------------------------------------------------------------- Claude on Foundry
class FakeFoundryAnthropic(FakeServer):
    """Anthropic Messages on Azure AI Foundry (`/anthropic/v1/messages`)."""

    def __init__(self, book: TokenBook, api_key: Optional[str] = None) -> None:
        super().__init__()
        self.book, self.api_key = book, api_key

    def handle(self, req: Recorded) -> Reply:
        if self.api_key is not None:
            why = None if req.headers.get("x-api-key") == self.api_key else "x-api-key missing or wrong"
        else:
            why = self.book.check(req.bearer, FOUNDRY_SCOPE)
        if why:
            return json_reply(401, {"type": "error", "error": {"type": "authentication_error", "message": why}})
        if req.method != "POST" or req.path != "/anthropic/v1/messages":
            return json_reply(404, {"type": "error", "error": {"type": "not_found_error", "message": req.path}})
        if not req.headers.get("anthropic-version"):
            return json_reply(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                               "message": "anthropic-version header is required"}})
        body = req.json or {}
        return json_reply(200, {"id": "msg_foundry1", "type": "message", "role": "assistant",
                                "model": body.get("model"),
                                "content": [{"type": "text", "text": "Hello from Claude on Foundry."}],
                                "stop_reason": "end_turn", "stop_sequence": None,
                                "usage": {"input_tokens": 8, "output_tokens": 6}})
