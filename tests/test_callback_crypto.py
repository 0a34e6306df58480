from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
from Crypto.Cipher import AES
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oapi.callback_crypto import (
    MAX_ENCRYPT_LENGTH,
    BadAesKey,
    BadPlaintext,
    CallbackCrypto,
    CallbackCryptoError,
    DecryptError,
    LengthMismatch,
    ReceiverKeyMismatch,
    SignatureMismatch,
)

# The published vector (oapi doc §5).
TOKEN = "123456"
AES_KEY = "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij"
RECEIVER_KEY = "suite4xxxxxxxxxxxxxxx"
TIMESTAMP = "1445827045067"
NONCE = "nEXhMP4r"
MSG = '{"EventType":"check_create_suite_url","Random":"LPIdSnlF","TestSuiteKey":"suite4xxxxxxxxxxxxxxx"}'
PUSH_SIGNATURE = "5a65ceeef9aab2d149439f82dc191dd6c5cbe2c0"
PUSH_ENCRYPT = (
    "1a3NBxmCFwkCJvfoQ7WhJHB+iX3qHPsc9JbaDznE1i03peOk1LaOQoRz3+nlyGNhwmwJ3vDMG+OzrHMeiZI7gTRWVdUBmfxjZ8Ej23JV"
    "Ya9VrYeJ5as7XM/ZpulX8NEQis44w53h1qAgnC3PRzM7Zc/D6Ibr0rgUathB6zRHP8PYrfgnNOS9PhSBdHlegK+AGGanfwjXuQ9+0pZc"
    "y0w9lQ=="
)
RANDOM = b"1234567890123456"
REPLY_ENCRYPT = (
    "5DJFWzjRNOQk+5GSZxW+VrFMDWCIidPjEjg3//gm5x556BedVi62rDj1F9uXU97a4jw1R4FACUv9RCpoDobNqxhxRB2YtW901k4KHbP1"
    "/wpFJ3xdLG0n0A8U1VhENg80zKJd+YROR0YMGum4WYuoXJ6J98vt0ihYeIFoapNddLML5MyNAGM9saSpkouDMSvD+iU14i7V8ix1ia1T"
    "b9ogog=="
)
REPLY_SIGNATURE = "bcf6dcefa4ce2dbaf7b0666c7264d46fd9aad4bd"

RAW_KEY = base64.b64decode(AES_KEY + "=")
RK = RECEIVER_KEY.encode()
FUZZ = settings(max_examples=200, deadline=None, database=None)


@pytest.fixture
def crypto() -> CallbackCrypto:
    return CallbackCrypto(TOKEN, AES_KEY, RECEIVER_KEY)


def raw_encrypt(plaintext: bytes) -> str:
    """Encrypt ``plaintext`` (a multiple of 16 bytes) as-is, bypassing the module's own framing."""
    return base64.b64encode(AES.new(RAW_KEY, AES.MODE_CBC, iv=RAW_KEY[:16]).encrypt(plaintext)).decode()


def pad32(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return data + bytes([n]) * n


def frame(msg: bytes, receiver_key: bytes = RK, length: int | None = None) -> bytes:
    declared = len(msg) if length is None else length
    return pad32(RANDOM + declared.to_bytes(4, "big") + msg + receiver_key)


# --- published vectors -------------------------------------------------------------------------------------


def test_published_push_decrypts(crypto: CallbackCrypto) -> None:
    assert crypto.decrypt(PUSH_ENCRYPT) == MSG
    assert crypto.decrypt_json(PUSH_ENCRYPT)["Random"] == "LPIdSnlF"


def test_published_push_signature(crypto: CallbackCrypto) -> None:
    assert crypto.signature(TIMESTAMP, NONCE, PUSH_ENCRYPT) == PUSH_SIGNATURE
    crypto.verify(PUSH_SIGNATURE, TIMESTAMP, NONCE, PUSH_ENCRYPT)


def test_published_reply_encrypts(crypto: CallbackCrypto) -> None:
    encrypt = crypto.encrypt(MSG, random_bytes=RANDOM)
    assert encrypt == REPLY_ENCRYPT
    assert crypto.signature(TIMESTAMP, NONCE, encrypt) == REPLY_SIGNATURE


def test_signature_is_sha1_of_sorted_parts(crypto: CallbackCrypto) -> None:
    expected = hashlib.sha1("".join(sorted([TOKEN, "b", "c", "a"])).encode()).hexdigest()
    assert crypto.signature("b", "c", "a") == expected


def test_reply_is_signed_with_its_own_timestamp_and_nonce(crypto: CallbackCrypto) -> None:
    body = crypto.reply("success", timestamp=TIMESTAMP, nonce=NONCE)
    assert set(body) == {"msg_signature", "timeStamp", "nonce", "encrypt"}
    assert (body["timeStamp"], body["nonce"]) == (TIMESTAMP, NONCE)
    crypto.verify(body["msg_signature"], TIMESTAMP, NONCE, body["encrypt"])
    assert crypto.decrypt(body["encrypt"]) == "success"


def test_reply_defaults(crypto: CallbackCrypto) -> None:
    first = crypto.reply("success")
    second = crypto.reply("success")
    assert re.fullmatch(r"\d{13}", first["timeStamp"])
    assert re.fullmatch(r"[A-Za-z0-9]{8}", first["nonce"])
    assert first["nonce"] != second["nonce"]
    assert first["encrypt"] != second["encrypt"]
    crypto.verify(first["msg_signature"], first["timeStamp"], first["nonce"], first["encrypt"])


def test_encrypt_rejects_wrong_random_length(crypto: CallbackCrypto) -> None:
    with pytest.raises(ValueError):
        crypto.encrypt("success", random_bytes=b"short")


# --- malformed input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aes_key",
    [
        pytest.param("", id="empty"),
        pytest.param(AES_KEY[:-1], id="42-chars"),
        pytest.param(AES_KEY + "a", id="44-chars"),
        pytest.param(AES_KEY[:-1] + "+", id="plus"),
        pytest.param(AES_KEY[:-1] + "/", id="slash"),
        pytest.param(AES_KEY[:-1] + "=", id="equals"),
        pytest.param(AES_KEY[:-1] + "é", id="non-ascii-letter"),
        pytest.param(AES_KEY[:-1] + "\uff11", id="fullwidth-digit"),
        pytest.param(AES_KEY + "\n", id="trailing-newline"),
        pytest.param(" " + AES_KEY[1:], id="space"),
    ],
)
def test_bad_aes_key(aes_key: str) -> None:
    with pytest.raises(BadAesKey) as info:
        CallbackCrypto(TOKEN, aes_key, RECEIVER_KEY)
    assert (info.value.errcode, info.value.kind) == (900004, "decrypt_failed")


@pytest.mark.parametrize(
    ("signature", "timestamp", "nonce", "encrypt"),
    [
        pytest.param("0" * 40, TIMESTAMP, NONCE, PUSH_ENCRYPT, id="wrong"),
        pytest.param(PUSH_SIGNATURE.upper(), TIMESTAMP, NONCE, PUSH_ENCRYPT, id="upper-case"),
        pytest.param("", TIMESTAMP, NONCE, PUSH_ENCRYPT, id="empty"),
        pytest.param(PUSH_SIGNATURE + "é", TIMESTAMP, NONCE, PUSH_ENCRYPT, id="non-ascii"),
        pytest.param(PUSH_SIGNATURE, "1445827045068", NONCE, PUSH_ENCRYPT, id="other-timestamp"),
        pytest.param(PUSH_SIGNATURE, TIMESTAMP, "nEXhMP4R", PUSH_ENCRYPT, id="other-nonce"),
        pytest.param(PUSH_SIGNATURE, TIMESTAMP, NONCE, REPLY_ENCRYPT, id="other-encrypt"),
        pytest.param(PUSH_SIGNATURE, TIMESTAMP, "\ud800", PUSH_ENCRYPT, id="lone-surrogate"),
        pytest.param(None, TIMESTAMP, NONCE, PUSH_ENCRYPT, id="missing-signature"),
        pytest.param(PUSH_SIGNATURE, None, NONCE, PUSH_ENCRYPT, id="missing-timestamp"),
    ],
)
def test_signature_mismatch(crypto: CallbackCrypto, signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
    with pytest.raises(SignatureMismatch) as info:
        crypto.verify(signature, timestamp, nonce, encrypt)
    assert (info.value.errcode, info.value.kind) == (900005, "signature_invalid")


def test_signature_with_other_token_mismatches() -> None:
    other = CallbackCrypto("654321", AES_KEY, RECEIVER_KEY)
    with pytest.raises(SignatureMismatch):
        other.verify(PUSH_SIGNATURE, TIMESTAMP, NONCE, PUSH_ENCRYPT)


MALFORMED = [
    pytest.param("", DecryptError, id="empty"),
    pytest.param("!!!!", DecryptError, id="not-base64-alphabet"),
    pytest.param("YWJ", DecryptError, id="base64-bad-padding"),
    pytest.param(PUSH_ENCRYPT[:-2] + "\n", DecryptError, id="base64-newline"),
    pytest.param("é" * 4, DecryptError, id="non-ascii"),
    pytest.param(PUSH_ENCRYPT.replace("+", "-"), DecryptError, id="urlsafe-alphabet"),
    pytest.param(base64.b64encode(b"x" * 15).decode(), DecryptError, id="15-bytes"),
    pytest.param(base64.b64encode(b"x" * 33).decode(), DecryptError, id="33-bytes"),
    pytest.param(raw_encrypt(b"\x00" * 32), DecryptError, id="pad-byte-0"),
    pytest.param(raw_encrypt(b"\x21" * 64), DecryptError, id="pad-byte-33"),
    pytest.param(raw_encrypt(b"\xff" * 32), DecryptError, id="pad-byte-255"),
    pytest.param(raw_encrypt(b"\x20" * 16), DecryptError, id="pad-longer-than-plaintext"),
    pytest.param(raw_encrypt(b"a" * 29 + b"\x01\x03\x03"), DecryptError, id="pad-inconsistent"),
    pytest.param(raw_encrypt(frame(b"")[:-5] + b"\x00" + frame(b"")[-4:]), DecryptError, id="pad-inconsistent-long"),
    pytest.param(raw_encrypt(b"a" * 19 + b"\x0d" * 13), DecryptError, id="plaintext-19-bytes"),
    pytest.param(raw_encrypt(b"a" * 16), DecryptError, id="16-byte-ciphertext"),
    pytest.param(raw_encrypt(frame(b"{}", length=2**31)), LengthMismatch, id="length-2**31"),
    pytest.param(raw_encrypt(frame(b"{}", length=2**32 - 1)), LengthMismatch, id="length-max"),
    pytest.param(raw_encrypt(frame(b"{}", receiver_key=b"", length=3)), LengthMismatch, id="length-plus-one"),
    pytest.param(raw_encrypt(frame(b"{}", receiver_key=b"dingabc")), ReceiverKeyMismatch, id="other"),
    pytest.param(raw_encrypt(frame(b"{}", receiver_key=b"")), ReceiverKeyMismatch, id="no-receiver-key"),
    pytest.param(raw_encrypt(frame(b"{}", receiver_key=RK[:-1])), ReceiverKeyMismatch, id="truncated"),
    pytest.param(raw_encrypt(frame(b"{}", receiver_key=RK + b"x")), ReceiverKeyMismatch, id="extended"),
    pytest.param(raw_encrypt(frame(b"{}", length=1)), ReceiverKeyMismatch, id="length-too-small"),
    pytest.param(raw_encrypt(frame(b"\xff\xfe")), BadPlaintext, id="not-utf8"),
    pytest.param(raw_encrypt(frame(b"\xed\xa0\x80")), BadPlaintext, id="utf8-surrogate"),
    pytest.param("A" * (MAX_ENCRYPT_LENGTH + 64), DecryptError, id="oversized"),
]

ERRCODES = {
    DecryptError: 900008,
    LengthMismatch: 900009,
    ReceiverKeyMismatch: 900010,
    BadPlaintext: 900001,
}


@pytest.mark.parametrize(("encrypt", "error"), MALFORMED)
@pytest.mark.parametrize("method", ["decrypt", "decrypt_json"])
def test_malformed_encrypt(crypto: CallbackCrypto, method: str, encrypt: str, error: type[CallbackCryptoError]) -> None:
    with pytest.raises(error) as info:
        getattr(crypto, method)(encrypt)
    assert type(info.value) is error
    assert (info.value.errcode, info.value.kind) == (ERRCODES[error], "decrypt_failed")


@pytest.mark.parametrize("value", [None, 42, b"YWJj"])
def test_non_string_encrypt(crypto: CallbackCrypto, value: object) -> None:
    with pytest.raises(DecryptError):
        crypto.decrypt(value)  # type: ignore[arg-type]


def test_encrypt_at_size_limit_is_decrypted(crypto: CallbackCrypto) -> None:
    msg = "x" * (MAX_ENCRYPT_LENGTH * 3 // 4 - 96)
    encrypt = crypto.encrypt(msg)
    assert len(encrypt) <= MAX_ENCRYPT_LENGTH
    assert crypto.decrypt(encrypt) == msg


def test_valid_encrypt_over_size_limit_is_refused(crypto: CallbackCrypto) -> None:
    encrypt = crypto.encrypt("x" * MAX_ENCRYPT_LENGTH)
    with pytest.raises(DecryptError):
        crypto.decrypt(encrypt)


@pytest.mark.parametrize(
    "msg",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("", id="empty"),
        pytest.param("[1, 2]", id="array"),
        pytest.param('"text"', id="string"),
        pytest.param("null", id="null"),
        pytest.param("42", id="number"),
        pytest.param('{"a": NaN}', id="nan"),
        pytest.param('{"a": Infinity}', id="infinity"),
        pytest.param('{"a": 1', id="truncated"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested"),
        pytest.param('{"a": ' + "9" * 5000 + "}", id="huge-int"),
    ],
)
def test_decrypt_json_rejects_non_object(crypto: CallbackCrypto, msg: str) -> None:
    encrypt = crypto.encrypt(msg)
    assert crypto.decrypt(encrypt) == msg
    with pytest.raises(BadPlaintext) as info:
        crypto.decrypt_json(encrypt)
    assert (info.value.errcode, info.value.kind) == (900001, "decrypt_failed")


# A backslash escape: the message bytes are plain ASCII (so valid UTF-8), but json.loads turns the escape
# into a lone surrogate, a str that cannot be encoded as UTF-8 (and so never written to Redis).
@pytest.mark.parametrize(
    "msg",
    [
        pytest.param(r'{"EventType":"user_leave_org","UserId":["\ud800"]}', id="in-list-value"),
        pytest.param(r'{"EventType":"\udc00"}', id="low-surrogate-value"),
        pytest.param(r'{"EventType":"x","\ud800":1}', id="in-key"),
        pytest.param(r'{"EventType":"x","a":{"b":[{"\udbff":null}]}}', id="nested-key"),
        pytest.param(r'{"EventType":"x","a":[[["ok","\ud83d"]]]}', id="nested-value"),
        pytest.param(r'{"EventType":"x","a":"\ude00\ud83d"}', id="reversed-pair"),
        pytest.param(r'{"EventType":"x","a":"\\\ud800"}', id="after-escaped-backslash"),
    ],
)
def test_decrypt_json_rejects_lone_surrogate_escape(crypto: CallbackCrypto, msg: str) -> None:
    encrypt = crypto.encrypt(msg)
    assert crypto.decrypt(encrypt) == msg  # the text itself is fine ...
    with pytest.raises(BadPlaintext) as info:  # ... what it parses to is not
        crypto.decrypt_json(encrypt)
    assert (info.value.errcode, info.value.kind) == (900001, "decrypt_failed")


@pytest.mark.parametrize(
    ("msg", "value"),
    [
        pytest.param(r'{"a":"\ud83d\ude00"}', {"a": "\U0001f600"}, id="escaped-pair"),
        pytest.param(r'{"a":"\\ud800"}', {"a": "\\ud800"}, id="escaped-backslash"),
        pytest.param('{"a":"\u00e9\u4e2d"}', {"a": "\u00e9\u4e2d"}, id="non-ascii-utf8"),
    ],
)
def test_decrypt_json_accepts_encodable_escapes(crypto: CallbackCrypto, msg: str, value: dict[str, str]) -> None:
    assert crypto.decrypt_json(crypto.encrypt(msg)) == value


def test_encrypt_rejects_lone_surrogate(crypto: CallbackCrypto) -> None:
    with pytest.raises(BadPlaintext):
        crypto.encrypt("\ud800")


def test_other_aes_key_cannot_decrypt() -> None:
    other = CallbackCrypto(TOKEN, "a" * 43, RECEIVER_KEY)
    with pytest.raises(CallbackCryptoError):
        other.decrypt(PUSH_ENCRYPT)


# --- properties --------------------------------------------------------------------------------------------


@FUZZ
@given(msg=st.text(), receiver_key=st.text(min_size=1), random_bytes=st.binary(min_size=16, max_size=16))
def test_round_trip(msg: str, receiver_key: str, random_bytes: bytes) -> None:
    crypto = CallbackCrypto(TOKEN, AES_KEY, receiver_key)
    encrypt = crypto.encrypt(msg, random_bytes=random_bytes)
    assert len(base64.b64decode(encrypt)) % 32 == 0
    assert crypto.decrypt(encrypt) == msg


@FUZZ
@given(msg=st.text(), receiver_key=st.text(min_size=1), other_key=st.text(min_size=1))
def test_other_receiver_is_rejected(msg: str, receiver_key: str, other_key: str) -> None:
    assume(receiver_key != other_key)
    encrypt = CallbackCrypto(TOKEN, AES_KEY, receiver_key).encrypt(msg)
    with pytest.raises(ReceiverKeyMismatch):
        CallbackCrypto(TOKEN, AES_KEY, other_key).decrypt(encrypt)


@FUZZ
@given(value=st.dictionaries(st.text(), st.one_of(st.none(), st.booleans(), st.integers(), st.text())))
def test_json_round_trip(value: dict[str, object]) -> None:
    crypto = CallbackCrypto(TOKEN, AES_KEY, RECEIVER_KEY)
    assert crypto.decrypt_json(crypto.encrypt(json.dumps(value))) == value


# Text that may hold lone surrogates (st.text never does): json.dumps escapes them (ensure_ascii), so the
# message itself is ASCII and only the parsed object is not UTF-8. Mixed with plain text so that both
# outcomes turn up often.
_SURROGATE_TEXT = st.lists(
    st.characters(codec=None, exclude_categories=()) | st.integers(0xD800, 0xDFFF).map(chr), max_size=8
).map("".join)
_ANY_TEXT = st.text(max_size=8) | st.text(max_size=8) | _SURROGATE_TEXT
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_ANY_TEXT, children, max_size=4),
    max_leaves=8,
)


def _encodable(value: object) -> bool:
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    return True


@FUZZ
@given(value=st.dictionaries(_ANY_TEXT, _ANY_JSON, max_size=3))
def test_decrypt_json_returns_only_utf8_encodable_objects(value: dict[str, object]) -> None:
    """Round trip when every string can be UTF-8; BadPlaintext (never anything else) when one cannot."""
    crypto = CallbackCrypto(TOKEN, AES_KEY, RECEIVER_KEY)
    encrypt = crypto.encrypt(json.dumps(value))
    # JSON joins an escaped high+low surrogate pair into one character (\ud800\udc00 is U+10000), so what the
    # sender meant is json.loads of its text, not the Python value it started from.
    meant = json.loads(json.dumps(value))
    if _encodable(meant):
        decoded = crypto.decrypt_json(encrypt)
        assert decoded == meant
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
    else:
        with pytest.raises(BadPlaintext):
            crypto.decrypt_json(encrypt)


def assert_only_crypto_errors(crypto: CallbackCrypto, encrypt: str) -> None:
    for method in (crypto.decrypt, crypto.decrypt_json):
        try:
            result = method(encrypt)
        except CallbackCryptoError:
            continue
        # Whatever is returned can be written anywhere as UTF-8.
        json.dumps(result, ensure_ascii=False).encode("utf-8")


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_ciphertext_raises_only_crypto_errors(data: bytes) -> None:
    assert_only_crypto_errors(CallbackCrypto(TOKEN, AES_KEY, RECEIVER_KEY), base64.b64encode(data).decode())


@FUZZ
@given(text=st.text())
def test_arbitrary_text_raises_only_crypto_errors(text: str) -> None:
    assert_only_crypto_errors(CallbackCrypto(TOKEN, AES_KEY, RECEIVER_KEY), text)


@FUZZ
@given(
    head=st.binary(min_size=16, max_size=16),
    length=st.integers(min_value=0, max_value=2**32 - 1),
    tail=st.binary(max_size=256),
    pad=st.integers(min_value=0, max_value=255),
    pad_count=st.integers(min_value=0, max_value=40),
)
def test_arbitrary_plaintext_raises_only_crypto_errors(
    head: bytes, length: int, tail: bytes, pad: int, pad_count: int
) -> None:
    # Random ciphertext almost never gets past the padding check; encrypting chosen plaintexts reaches
    # the length, receiver-key and UTF-8 checks too.
    plaintext = head + length.to_bytes(4, "big") + tail + bytes([pad]) * pad_count
    plaintext += b"\x00" * (-len(plaintext) % 16)
    assert_only_crypto_errors(CallbackCrypto(TOKEN, AES_KEY, RECEIVER_KEY), raw_encrypt(plaintext))
