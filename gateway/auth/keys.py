"""API key material: the format `sk-tandem-<id>-<secret>`, its sha256, and constant-time comparison.

The id (12 hex digits) is public: it names the key in listings, usage and limits and lets a lookup go
straight to one record. The secret (32 random bytes, url-safe base64) is shown once and only its
sha256 is stored, so a leaked store does not leak usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "sk-tandem-"
_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str

    @property
    def prefix(self) -> str:
        return key_prefix(self.key_id)


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str  # the whole key: handed to the caller once, never stored
    secret_sha256: str


def key_prefix(key_id: str) -> str:
    """What listings and messages show of a key: it identifies the key and reveals nothing secret."""
    return f"{KEY_PREFIX}{key_id}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, expected_sha256: str) -> bool:
    # compare_digest: the time taken does not depend on where the digests first differ
    return hmac.compare_digest(hash_secret(secret), expected_sha256)


def same_secret(presented: str, configured: str) -> bool:
    """For the master key: hashing both first also hides the configured key's length."""
    return hmac.compare_digest(hash_secret(presented), hash_secret(configured))


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id=key_id, key=f"{KEY_PREFIX}{key_id}-{secret}", secret_sha256=hash_secret(secret))


def parse_key(token: str) -> ParsedKey | None:
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, dash, secret = token[len(KEY_PREFIX) :].partition("-")
    if not dash or not secret or not _ID.match(key_id):
        return None
    return ParsedKey(key_id=key_id, secret=secret)


def key_id_of(reference: str) -> str | None:
    """A key's id from its id, its prefix `sk-tandem-<id>`, or the whole key (what `revoke` accepts)."""
    reference = reference.strip()
    if _ID.match(reference):
        return reference
    if reference.startswith(KEY_PREFIX):
        candidate = reference[len(KEY_PREFIX) :].partition("-")[0]
        return candidate if _ID.match(candidate) else None
    return None


def presented_token(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `x-api-key: <key>`."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None
