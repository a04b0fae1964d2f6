"""A token service for the distribution registry's ``auth: token`` mode, for tests only.

It makes an RSA key and a self-signed certificate with the ``openssl`` CLI (the certificate is the
registry's ``rootcertbundle``), and answers ``GET /token?service=…&scope=…`` (with optional basic
auth) and ``POST /token`` (``grant_type=refresh_token``) on 127.0.0.1 with RS256 JWTs whose
``x5c`` header carries the certificate, as docker's token specification describes.

Grants: anonymous callers may pull repositories under ``public/``; ``alice`` may pull and push
everywhere; ``reader`` may only pull. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = "minidock-test-registry"
ISSUER = "minidock-test-issuer"
USERS = {"alice": "wonderland", "reader": "only-reads"}
REFRESH_TOKENS = {"refresh-for-alice": "alice"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenRequest:
    """One request the issuer answered."""

    method: str
    account: str | None
    scopes: list[str]
    status: int
    granted: list[dict[str, Any]] = field(default_factory=list)


def default_grants(account: str | None, name: str, actions: list[str]) -> list[str]:
    """Which of ``actions`` on repository ``name`` the account gets."""
    if account == "alice":
        allowed = {"pull", "push", "*"}
    elif account == "reader" or name.startswith("public/"):
        allowed = {"pull"}
    else:
        allowed = set()
    return [a for a in actions if a in allowed]


class TokenIssuer:
    """The token service: ``start()``, then ``realm``; ``stop()`` ends its thread."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "issuer-key.pem"
        self.cert = self.dir / "issuer-cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                f"/CN={ISSUER}",
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self._x5c = base64.b64encode(der).decode("ascii")
        self.requests: list[TokenRequest] = []
        self.lifetime = 300
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None, "start() the issuer first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return signing_input + "." + _b64url(signature)

    def issue(self, account: str | None, scopes: list[str]) -> tuple[str, list[dict[str, Any]]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            granted = default_grants(account, name, actions.split(","))
            access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": account or "",
            "aud": SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        return self.sign(claims), access

    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _account(self) -> tuple[bool, str | None]:
                header = self.headers.get("Authorization")
                if not header:
                    return True, None
                scheme, _, value = header.partition(" ")
                if scheme.lower() != "basic":
                    return False, None
                user, _, password = base64.b64decode(value).decode().partition(":")
                return USERS.get(user) == password, user

            def _reply(self, method: str, account: str | None, scopes: list[str], ok: bool) -> None:
                if not ok:
                    with issuer._lock:
                        issuer.requests.append(TokenRequest(method, account, scopes, 401))
                    self._answer(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]},
                    )
                    return
                token, access = issuer.issue(account, scopes)
                with issuer._lock:
                    issuer.requests.append(TokenRequest(method, account, scopes, 200, access))
                self._answer(
                    200,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": issuer.lifetime,
                        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                )

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/token":
                    self._answer(404, {"error": "not found"})
                    return
                query = parse_qs(parts.query)
                ok, account = self._account()
                scopes = [s for value in query.get("scope", []) for s in value.split()]
                self._reply("GET", account, scopes, ok)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                refresh = (form.get("refresh_token") or [""])[0]
                account = REFRESH_TOKENS.get(refresh)
                scopes = [s for value in form.get("scope", []) for s in value.split()]
                grant = (form.get("grant_type") or [""])[0]
                self._reply("POST", account, scopes, grant == "refresh_token" and bool(account))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="token-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
