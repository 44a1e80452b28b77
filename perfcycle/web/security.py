"""Signed session cookies and CSRF tokens: HMAC-SHA256 over the settings' secret key (stdlib only).

A session cookie is `base64url(json payload).base64url(signature)`. It is signed, not encrypted:
it holds only ids the person already knows (their own id, the ids of the links they opened).
Anything that fails to decode, verify or parse is simply no session: the caller shows "sign in".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from perfcycle.core.settings import get_settings

SESSION_COOKIE = "pc_session"
CSRF_COOKIE = "pc_csrf"
LANG_COOKIE = "pc_lang"
# A working day: long enough to finish the forms a mail asks for, short enough that a shared
# computer left signed in is not a standing door.
SESSION_LIFETIME = timedelta(hours=8)
# The links a session remembers (the task page needs to know which one it came from); the
# oldest fall off first.
MAX_SESSION_TOKENS = 20
CSRF_NONCE_BYTES = 32
MAX_COOKIE_CHARS = 4000


@dataclass(frozen=True)
class SessionData:
    person_id: str
    issued_at: int  # unix seconds
    expires_at: int  # unix seconds
    token_ids: tuple[int, ...] = field(default=())
    # The person's sign-out count when issued (models.PortalSessionGeneration).
    generation: int = 0

    def with_token(self, token_id: int) -> SessionData:
        kept = tuple(t for t in self.token_ids if t != token_id)
        return replace(self, token_ids=(*kept, token_id)[-MAX_SESSION_TOKENS:])


def new_session(person_id: str, now: datetime, generation: int = 0) -> SessionData:
    issued = int(now.timestamp())
    lifetime = int(SESSION_LIFETIME.total_seconds())
    return SessionData(person_id, issued, issued + lifetime, generation=generation)


def _key(purpose: str) -> bytes:
    # One derived key per purpose: a CSRF token can never pass for a session signature.
    secret = get_settings().secret_key.encode()
    return hmac.new(secret, f"perfcycle-portal:{purpose}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(purpose: str, message: str) -> str:
    return _b64(hmac.new(_key(purpose), message.encode("ascii"), hashlib.sha256).digest())


def encode_session(data: SessionData) -> str:
    payload = {
        "p": data.person_id,
        "iat": data.issued_at,
        "exp": data.expires_at,
        "tok": list(data.token_ids),
        "g": data.generation,
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{body}.{_sign('session', body)}"


def decode_session(cookie: str | None, now: datetime) -> SessionData | None:
    """The session in a cookie; None when missing, tampered with, malformed or expired."""
    if not cookie or len(cookie) > MAX_COOKIE_CHARS or cookie.count(".") != 1:
        return None
    body, signature = cookie.split(".")
    try:
        expected = _sign("session", body)
    except UnicodeEncodeError:
        return None
    if not hmac.compare_digest(signature, expected):
        return None
    try:
        payload = json.loads(_unb64(body))
        data = SessionData(
            person_id=_str(payload["p"]),
            issued_at=_int(payload["iat"]),
            expires_at=_int(payload["exp"]),
            token_ids=tuple(_int(t) for t in payload["tok"]),
            generation=_int(payload.get("g", 0)),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if not data.person_id or now.timestamp() >= data.expires_at:
        return None
    return data


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def new_csrf_nonce() -> str:
    return secrets.token_urlsafe(CSRF_NONCE_BYTES)


def csrf_token_for(nonce: str, person_id: str | None) -> str:
    """The token forms carry: bound to the browser's nonce cookie and to who is signed in."""
    return _sign("csrf", f"{nonce}|{person_id or ''}")


def csrf_valid(submitted: str | None, nonce: str | None, person_id: str | None) -> bool:
    if not submitted or not nonce or len(submitted) > 200 or len(nonce) > 200:
        return False
    try:
        expected = csrf_token_for(nonce, person_id)
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(submitted.encode(), expected.encode())


def is_secure_origin() -> bool:
    """Cookies get the Secure flag when the portal is served over https."""
    return get_settings().portal_base_url.lower().startswith("https://")
