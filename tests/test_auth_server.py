"""Bearer-token auth (``MONAI_LABEL_AUTH_ENABLE=true``) of the MedSegDiff app, with ``lib/auth.py``'s decoder.

The fast tests load ``monailabel_app/lib/auth.py`` in this process. The slow ones start the real server with
auth on against a stub realm (a local HTTP server that, like Keycloak's ``/realms/<name>``, answers
``{"public_key": <base64 DER>}``) and send tokens signed with that key, with another key, expired, or with
too few roles, through ``requests`` and through the Slicer module's ``MedSegDiffClient``. They need
``monailabel_app/main.py`` to call ``install_token_decoder`` and skip, saying so, until it does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import importlib.util
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import MonaiLabelServer, make_datastore, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
SLICER_MODULE_DIR = REPO / "slicer_ext" / "MedSegDiff"
START_TIMEOUT_S = 240

ROLES = {  # set explicitly in the server's environment (these are also MONAI Label's defaults)
    "MONAI_LABEL_AUTH_ROLE_ADMIN": "monailabel-admin",
    "MONAI_LABEL_AUTH_ROLE_REVIEWER": "monailabel-reviewer",
    "MONAI_LABEL_AUTH_ROLE_ANNOTATOR": "monailabel-annotator",
    "MONAI_LABEL_AUTH_ROLE_USER": "monailabel-user",
}
ALL_ROLES = list(ROLES.values())
USER_ROLE = ROLES["MONAI_LABEL_AUTH_ROLE_USER"]


def _load_auth_module():
    """``monailabel_app/lib/auth.py`` by path (``import lib`` would find the repository's own ``lib/``)."""
    spec = importlib.util.spec_from_file_location("medsegdiff_app_auth", APP_DIR / "lib" / "auth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wired() -> bool:
    return "install_token_decoder" in (APP_DIR / "main.py").read_text()


# -- keys and tokens -----------------------------------------------------------------------------------


@dataclass
class KeyPair:
    private_pem: bytes
    public_der_b64: str  # what a Keycloak realm publishes as "public_key"

    @classmethod
    def generate(cls) -> "KeyPair":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(private_pem, base64.b64encode(der).decode("ascii"))

    @property
    def public_pem(self) -> str:
        """The PEM that MONAI Label's ``get_public_key`` builds from the realm's answer."""
        return f"-----BEGIN PUBLIC KEY-----\n{self.public_der_b64}\n-----END PUBLIC KEY-----"

    def token(self, roles: list[str], expires_in_s: float = 600.0, username: str = "annotator1") -> str:
        now = int(time.time())
        claims = {
            "sub": "0b6c8a52-0000-4000-8000-000000000001",
            "preferred_username": username,
            "email": f"{username}@example.org",
            "name": "Ann Otator",
            "iat": now - 5,
            "exp": now + int(expires_in_s),
            "realm_access": {"roles": roles},
        }
        return jwt.encode(claims, self.private_pem, algorithm="RS256")


def _hs256_token_signed_with(secret: bytes, roles: list[str]) -> str:
    """An HS256 token whose HMAC secret is the realm's public key (the algorithm-confusion attack)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"preferred_username": "mallory", "exp": int(time.time()) + 600, "realm_access": {"roles": roles}}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def realm_key() -> KeyPair:
    return KeyPair.generate()


# -- lib/auth.py in this process -----------------------------------------------------------------------


@pytest.fixture
def auth(monkeypatch):
    """``lib/auth.py`` with auth switched on in this process; MONAI Label's ``from_token`` restored afterwards."""
    import monailabel.endpoints.user.auth as monailabel_auth
    from monailabel.config import settings

    monkeypatch.setattr(monailabel_auth, "from_token", monailabel_auth.from_token)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.delenv("MEDSEGDIFF_AUTH_ALGORITHMS", raising=False)
    return _load_auth_module()


def test_algorithms_come_from_the_environment(auth, monkeypatch):
    assert auth.accepted_algorithms() == ("RS256",)
    monkeypatch.setenv("MEDSEGDIFF_AUTH_ALGORITHMS", " RS256, ES256 ,")
    assert auth.accepted_algorithms() == ("RS256", "ES256")


@pytest.mark.parametrize("names", ["none", "HS256", "RS256,HS512", "RS257", ","])
def test_shared_secret_none_and_unknown_algorithms_are_refused(auth, monkeypatch, names):
    monkeypatch.setenv("MEDSEGDIFF_AUTH_ALGORITHMS", names)
    with pytest.raises(ValueError, match="public-key algorithms only"):
        auth.install_token_decoder()


def test_install_does_nothing_without_auth(auth, monkeypatch):
    import monailabel.endpoints.user.auth as monailabel_auth
    from monailabel.config import settings

    original = monailabel_auth.from_token
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", False)
    assert auth.install_token_decoder() is False
    assert monailabel_auth.from_token is original


def test_installed_decoder_accepts_rs256_and_is_installed_once(auth, monkeypatch, realm_key):
    import monailabel.endpoints.user.auth as monailabel_auth

    monkeypatch.setattr(monailabel_auth, "get_public_key", lambda realm_uri: realm_key.public_pem)
    token = realm_key.token(ALL_ROLES)
    with pytest.raises(jwt.InvalidTokenError, match="algorithms"):  # the PyJWT 2 bug being fixed
        monailabel_auth.from_token(token)
    assert auth.install_token_decoder() is True
    installed = monailabel_auth.from_token
    assert auth.install_token_decoder() is True
    assert monailabel_auth.from_token is installed
    user = monailabel_auth.from_token(token)
    assert (user.username, user.email, user.roles) == ("annotator1", "annotator1@example.org", ALL_ROLES)
    with pytest.raises(jwt.ExpiredSignatureError):
        monailabel_auth.from_token(realm_key.token(ALL_ROLES, expires_in_s=-60))


def test_unreachable_realm_gives_503(auth, monkeypatch, realm_key):
    import monailabel.endpoints.user.auth as monailabel_auth
    from fastapi import HTTPException
    from monailabel.config import settings

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    realm = f"http://127.0.0.1:{closed_port}/realms/nowhere"
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_REALM_URI", realm)
    auth.install_token_decoder()
    with pytest.raises(HTTPException) as raised:
        monailabel_auth.from_token(realm_key.token(ALL_ROLES))
    assert raised.value.status_code == 503
    assert realm in raised.value.detail and "MONAI_LABEL_AUTH_REALM_URI" in raised.value.detail


# -- the real server with auth on ----------------------------------------------------------------------


class StubRealm:
    """A Keycloak-like realm on 127.0.0.1: GET answers ``{"realm": ..., "public_key": ...}``, or 503 when down."""

    def __init__(self, public_key_b64: str) -> None:
        self.available = True
        realm = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if realm.available:
                    code, body = 200, {"realm": "medsegdiff", "public_key": public_key_b64}
                else:
                    code, body = 503, {"error": "realm down"}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/realms/medsegdiff"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass
class AuthServer:
    url: str
    answer_while_realm_down: requests.Response
    server: MonaiLabelServer = field(repr=False)

    def log(self) -> str:
        return self.server.log()


@pytest.fixture(scope="module")
def server(tmp_path_factory, realm_key):
    """The MedSegDiff app with auth on; its first token check happens while the realm is down."""
    if not _wired():
        pytest.skip(f"{APP_DIR / 'main.py'} does not call install_token_decoder (lib/auth.py) yet")
    root = tmp_path_factory.mktemp("auth_server")
    realm = StubRealm(realm_key.public_der_b64)
    try:
        server = start_server(
            root,
            make_datastore(root),
            env={**ROLES, "MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.url},
            drop_env_prefixes=("MONAI_LABEL_AUTH_", "MEDSEGDIFF_AUTH_"),
            is_up=lambda response: True,  # any answer (401 without a token) means it is up
            timeout_s=START_TIMEOUT_S,
        )
        try:
            # MONAI Label caches the realm's key after the first successful fetch: check the outage first.
            realm.available = False
            answer = requests.get(f"{server.url}/info/", headers=_bearer(realm_key.token(ALL_ROLES)), timeout=60)
            realm.available = True
            yield AuthServer(server.url, answer, server)
        finally:
            stop_server(server)
    finally:
        realm.close()


@pytest.fixture(scope="module")
def slicer_lib():
    sys.path.insert(0, str(SLICER_MODULE_DIR))
    try:
        import MedSegDiffLib
    finally:
        sys.path.remove(str(SLICER_MODULE_DIR))
    return MedSegDiffLib


def _get(server: AuthServer, path: str, token: str | None = None) -> requests.Response:
    return requests.get(server.url + path, headers=_bearer(token) if token else {}, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/info/", "/datastore/"])
def test_no_token_gives_401(server, path):
    response = _get(server, path)
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.slow
def test_token_signed_with_another_key_gives_401(server):
    response = _get(server, "/info/", KeyPair.generate().token(ALL_ROLES))
    assert response.status_code == 401, response.text


@pytest.mark.slow
def test_expired_token_gives_401(server, realm_key):
    response = _get(server, "/info/", realm_key.token(ALL_ROLES, expires_in_s=-60))
    assert response.status_code == 401, response.text


@pytest.mark.slow
def test_hs256_token_signed_with_the_public_key_gives_401(server, realm_key):
    response = _get(server, "/info/", _hs256_token_signed_with(realm_key.public_pem.encode(), ALL_ROLES))
    assert response.status_code == 401, response.text


@pytest.mark.slow
def test_valid_token_opens_info_and_datastore(server, realm_key):
    token = realm_key.token(ALL_ROLES)
    info = _get(server, "/info/", token)
    assert info.status_code == 200, f"{info.status_code} {info.text}\nserver log:\n{server.log()}"
    assert "medsegdiff" in info.json()["models"]
    listing = _get(server, "/datastore/?output=all", token)
    assert listing.status_code == 200, listing.text
    assert "robex_head" in listing.json()["objects"]
    user = _get(server, "/auth/token/valid", token)
    assert user.status_code == 200, user.text
    assert (user.json()["username"], user.json()["roles"]) == ("annotator1", ALL_ROLES)


@pytest.mark.slow
def test_user_role_cannot_use_admin_endpoints(server, realm_key):
    token = realm_key.token([USER_ROLE], username="viewer")
    assert _get(server, "/info/", token).status_code == 200
    logs = _get(server, "/logs/", token)
    assert logs.status_code == 403, logs.text
    assert ROLES["MONAI_LABEL_AUTH_ROLE_ADMIN"] in logs.json()["detail"]
    delete = requests.delete(
        f"{server.url}/datastore/image", params={"id": "robex_head"}, headers=_bearer(token), timeout=60
    )
    assert delete.status_code == 403, delete.text
    assert "robex_head" in _get(server, "/datastore/?output=all", realm_key.token(ALL_ROLES)).json()["objects"]


@pytest.mark.slow
def test_slicer_client_sends_its_token(server, realm_key, slicer_lib):
    info = slicer_lib.MedSegDiffClient(server.url, token=realm_key.token(ALL_ROLES)).info()
    assert "medsegdiff" in info["models"]
    with pytest.raises(slicer_lib.ServerError, match="authentication") as raised:
        slicer_lib.MedSegDiffClient(server.url).info()
    assert raised.value.status == 401


@pytest.mark.slow
def test_realm_down_gives_503_with_the_realm_uri(server):
    answer = server.answer_while_realm_down
    assert answer.status_code == 503, answer.text
    assert "MONAI_LABEL_AUTH_REALM_URI" in answer.json()["detail"]
