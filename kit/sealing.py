"""Seal secrets at rest with AES-256-GCM under keys derived from GATEWAY_SECRET_KEY.

Each sealed value is bound (as GCM associated data) to where it belongs, e.g. `corp:ding123:corp_secret`,
so a sealed secret copied to another corp or field fails to open instead of being used.
"""

from __future__ import annotations

import base64
import hashlib

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.Random import get_random_bytes

_PREFIX = "v1."


class SealError(Exception):
    """A sealed value does not open: wrong key, tampered, or moved to another place."""


def derive_key(secret_key: str, purpose: str) -> bytes:
    """Derive an independent 32-byte key for one purpose from the deployment secret."""
    key = HKDF(secret_key.encode(), 32, salt=b"dingtalk-channel-gateway", hashmod=SHA256, context=purpose.encode())
    return key if isinstance(key, bytes) else key[0]


class Sealer:
    """Encrypts and decrypts short secrets with a purpose-bound key."""

    # Opening is on the hot path (every config reads the sealed ticket); a sealed value never changes, so
    # remember a few recent openings instead of re-running AES-GCM for each request.
    _MEMO_SIZE = 512

    def __init__(self, secret_key: str) -> None:
        self._key = derive_key(secret_key, "seal-v1")
        self._memo: dict[tuple[str, str], str] = {}

    def seal(self, plaintext: str, where: str) -> str:
        """Encrypt `plaintext`, bound to `where`."""
        nonce = get_random_bytes(12)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce)
        cipher.update(where.encode())
        ct, tag = cipher.encrypt_and_digest(plaintext.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + tag + ct).decode()

    def open(self, sealed: str, where: str) -> str:
        """Decrypt a value sealed for `where`; raise SealError on any mismatch."""
        memo_key = (sealed, where)
        hit = self._memo.get(memo_key)
        if hit is not None:
            return hit
        plaintext = self._open(sealed, where)
        if len(self._memo) >= self._MEMO_SIZE:
            self._memo.clear()
        self._memo[memo_key] = plaintext
        return plaintext

    def _open(self, sealed: str, where: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise SealError("not a sealed value")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_PREFIX) :].encode())
            if len(raw) < 28:
                raise SealError("sealed value too short")
            cipher = AES.new(self._key, AES.MODE_GCM, nonce=raw[:12])
            cipher.update(where.encode())
            return cipher.decrypt_and_verify(raw[28:], raw[12:28]).decode()
        except (ValueError, UnicodeDecodeError) as e:
            raise SealError("sealed value does not open (wrong GATEWAY_SECRET_KEY, or tampered)") from e


def fingerprint(value: str) -> str:
    """A short, non-reversible tag for logs and the console: 'same token or not' without the token."""
    return hashlib.sha256(value.encode()).hexdigest()[:10]
