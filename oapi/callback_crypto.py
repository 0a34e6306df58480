"""Encrypt, decrypt and sign DingTalk callback (push) messages.

Pure: no Flask, no I/O. The wire format (oapi doc §5): ``encrypt`` is the standard Base64 of
AES-256-CBC(key, iv=key[:16]) over ``random 16 ‖ len(msg) BE32 ‖ msg UTF-8 ‖ receiver key``, padded
PKCS#7-style to a multiple of 32 bytes; the signature is the SHA-1 hex of the sorted concatenation of token,
timestamp, nonce and ``encrypt``.

Check the signature with :meth:`CallbackCrypto.verify` *before* decrypting: the signature covers the
ciphertext, so nothing unauthenticated ever reaches the padding checks.

Every failure is one of these (``errcode`` is the reference encryptor's code, ``kind`` what the HTTP caller
is told)::

    CallbackCryptoError(Exception)
    ├── BadAesKey            900004  decrypt_failed     EncodingAESKey is not 43 chars of [A-Za-z0-9]
    ├── SignatureMismatch    900005  signature_invalid
    ├── DecryptError         900008  decrypt_failed     bad Base64 / size / block multiple / padding
    ├── LengthMismatch       900009  decrypt_failed     length field larger than the plaintext
    ├── ReceiverKeyMismatch  900010  decrypt_failed
    └── BadPlaintext         900001  decrypt_failed     message not UTF-8, not a JSON object, or (decrypt_json)
                                                        holding a string that cannot be UTF-8 (a lone surrogate
                                                        written as a ``\\ud800`` escape)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import string
import time
from typing import Any, ClassVar, Literal

from Crypto.Cipher import AES

__all__ = [
    "AES_KEY_RE",
    "MAX_ENCRYPT_LENGTH",
    "BadAesKey",
    "BadPlaintext",
    "CallbackCrypto",
    "CallbackCryptoError",
    "DecryptError",
    "LengthMismatch",
    "ReceiverKeyMismatch",
    "SignatureMismatch",
]

Kind = Literal["signature_invalid", "decrypt_failed"]

#: Longest ``encrypt`` string accepted; real pushes are a few KiB.
MAX_ENCRYPT_LENGTH = 1 << 20

#: What an EncodingAESKey looks like (the one rule: `flask corp add` checks it too). Anchored, so `.match` suffices.
AES_KEY_RE = re.compile(r"\A[A-Za-z0-9]{43}\Z")
_PAD_BLOCK = 32
_RANDOM_LENGTH = 16
_HEADER_LENGTH = _RANDOM_LENGTH + 4
_NONCE_ALPHABET = string.ascii_letters + string.digits
_NONCE_LENGTH = 8


class CallbackCryptoError(Exception):
    """Base of every callback crypto failure."""

    errcode: ClassVar[int] = 900008
    kind: ClassVar[Kind] = "decrypt_failed"


class BadAesKey(CallbackCryptoError):
    """The EncodingAESKey is not 43 chars of [A-Za-z0-9] decoding to 32 bytes."""

    errcode = 900004
    kind = "decrypt_failed"


class SignatureMismatch(CallbackCryptoError):
    """The signature does not match token, timestamp, nonce and encrypt."""

    errcode = 900005
    kind = "signature_invalid"


class DecryptError(CallbackCryptoError):
    """The ciphertext is not Base64, has a bad size, or decrypts to bad padding or a short plaintext."""

    errcode = 900008
    kind = "decrypt_failed"


class LengthMismatch(CallbackCryptoError):
    """The plaintext's length field claims more bytes than there are."""

    errcode = 900009
    kind = "decrypt_failed"


class ReceiverKeyMismatch(CallbackCryptoError):
    """The message was encrypted for another receiver (corpId, appKey, suiteKey or customKey)."""

    errcode = 900010
    kind = "decrypt_failed"


class BadPlaintext(CallbackCryptoError):
    """The message is not UTF-8, or not a JSON object when one is asked for."""

    errcode = 900001
    kind = "decrypt_failed"


def _reject_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"non-standard JSON constant {name}")


class CallbackCrypto:
    """Sign, verify, encrypt and decrypt callback messages for one token, AES key and receiver key.

    Holds only immutable configuration, so one instance may be shared between threads.
    """

    __slots__ = ("_iv", "_key", "_receiver_key", "_token")

    def __init__(self, token: str, encoding_aes_key: str, receiver_key: str) -> None:
        if not isinstance(encoding_aes_key, str) or not AES_KEY_RE.match(encoding_aes_key):
            raise BadAesKey("EncodingAESKey must be exactly 43 characters of [A-Za-z0-9]")
        key = base64.b64decode(encoding_aes_key + "=")
        if len(key) != 32:
            raise BadAesKey("EncodingAESKey must decode to 32 bytes")
        self._token = token
        self._key = key
        self._iv = key[:16]
        # Encoding now makes a receiver key that cannot be UTF-8 fail at start-up, not per message.
        self._receiver_key = receiver_key.encode("utf-8")

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        """Return the SHA-1 hex signature of token, timestamp, nonce and encrypt, sorted and joined."""
        joined = "".join(sorted([self._token, timestamp, nonce, encrypt]))
        return hashlib.sha1(joined.encode("utf-8")).hexdigest()

    def verify(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        """Raise SignatureMismatch unless ``signature`` signs the other three; compares in constant time."""
        # Missing query parameters arrive as None: that is a mismatch, not a crash.
        if not all(isinstance(part, str) for part in (signature, timestamp, nonce, encrypt)):
            raise SignatureMismatch("signature does not match")
        try:
            expected = self.signature(timestamp, nonce, encrypt).encode("ascii")
        except UnicodeEncodeError as e:
            raise SignatureMismatch("signature does not match") from e
        # compare_digest refuses non-ASCII str, so compare bytes.
        given = signature.encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected, given):
            raise SignatureMismatch("signature does not match")

    def encrypt(self, msg: str, *, random_bytes: bytes | None = None) -> str:
        """Return the Base64 ciphertext of ``msg`` for this receiver key.

        ``random_bytes`` (16 bytes) is only for reproducing the published test vector.
        """
        if random_bytes is None:
            random_bytes = secrets.token_bytes(_RANDOM_LENGTH)
        if len(random_bytes) != _RANDOM_LENGTH:
            raise ValueError(f"random_bytes must be {_RANDOM_LENGTH} bytes")
        try:
            body = msg.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadPlaintext("message cannot be encoded as UTF-8") from e
        plaintext = random_bytes + len(body).to_bytes(4, "big") + body + self._receiver_key
        pad = _PAD_BLOCK - len(plaintext) % _PAD_BLOCK
        plaintext += bytes([pad]) * pad
        ciphertext = AES.new(self._key, AES.MODE_CBC, iv=self._iv).encrypt(plaintext)
        return base64.b64encode(ciphertext).decode("ascii")

    def decrypt(self, encrypt: str) -> str:
        """Return the message carried by ``encrypt``, checking padding, length and receiver key."""
        message = self._decrypt_bytes(encrypt)
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadPlaintext("message is not UTF-8") from e

    def decrypt_json(self, encrypt: str) -> dict[str, Any]:
        """Return the JSON object carried by ``encrypt``; anything but an object is BadPlaintext.

        So is an object holding a string (key or value, at any depth) that cannot be encoded as UTF-8: the
        message bytes are valid UTF-8, but a ``\\ud800`` escape still parses to a lone surrogate, which
        every consumer downstream (Redis, logs, JSON replies) would then fail on.
        """
        text = self.decrypt(encrypt)
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            raise BadPlaintext("message is not JSON") from e
        if not isinstance(value, dict):
            raise BadPlaintext("message is not a JSON object")
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadPlaintext("message holds a string that cannot be UTF-8 (lone surrogate escape)") from e
        except (ValueError, RecursionError) as e:  # defensive: dumps nests no deeper than loads did
            raise BadPlaintext("message is not JSON") from e
        return value

    def reply(self, msg: str, *, timestamp: str | None = None, nonce: str | None = None) -> dict[str, str]:
        """Return the signed, encrypted reply body for ``msg`` (usually ``"success"``).

        ``timestamp`` defaults to now in milliseconds, ``nonce`` to 8 fresh random [A-Za-z0-9].
        """
        if timestamp is None:
            timestamp = str(time.time_ns() // 1_000_000)
        if nonce is None:
            nonce = "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(_NONCE_LENGTH))
        encrypt = self.encrypt(msg)
        return {
            "msg_signature": self.signature(timestamp, nonce, encrypt),
            "timeStamp": timestamp,
            "nonce": nonce,
            "encrypt": encrypt,
        }

    def _decrypt_bytes(self, encrypt: str) -> bytes:
        """Return the raw message bytes of ``encrypt``."""
        if not isinstance(encrypt, str) or not encrypt:
            raise DecryptError("encrypt must be a non-empty string")
        if len(encrypt) > MAX_ENCRYPT_LENGTH:
            raise DecryptError("encrypt is too long")
        try:
            ciphertext = base64.b64decode(encrypt.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error) as e:
            raise DecryptError("encrypt is not Base64") from e
        if not ciphertext or len(ciphertext) % AES.block_size:
            raise DecryptError("ciphertext is not a whole number of AES blocks")
        plaintext = AES.new(self._key, AES.MODE_CBC, iv=self._iv).decrypt(ciphertext)

        pad = plaintext[-1]
        if not 1 <= pad <= _PAD_BLOCK or pad > len(plaintext):
            raise DecryptError("bad padding")
        if not hmac.compare_digest(plaintext[-pad:], bytes([pad]) * pad):
            raise DecryptError("bad padding")
        content = plaintext[:-pad]
        if len(content) < _HEADER_LENGTH:
            raise DecryptError("plaintext too short")

        # Compare the claimed length with what is there before slicing anything with it.
        length = int.from_bytes(content[_RANDOM_LENGTH:_HEADER_LENGTH], "big")
        available = len(content) - _HEADER_LENGTH
        if length > available:
            raise LengthMismatch("length field exceeds the plaintext")
        end = _HEADER_LENGTH + length
        if not hmac.compare_digest(content[end:], self._receiver_key):
            raise ReceiverKeyMismatch("message is for another receiver key")
        return content[_HEADER_LENGTH:end]
