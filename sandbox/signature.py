"""Compute dd.config signatures and the URL forms the DingTalk client accepts for a page.

This is the simulator's own, deliberately independent implementation: it is the judge of the gateway's
signing code, so it must not share code with it.
"""

from __future__ import annotations

import hashlib
import re

HASHES = ("sha1", "sha256")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def sign(*, ticket: str, nonce: str, timestamp: str, url: str, hash_name: str = "sha1") -> str:
    """Return the lowercase hex dd.config signature of these values."""
    if hash_name not in HASHES:
        raise ValueError(f"unsupported hash {hash_name!r}")
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    # surrogatepass: a hostile client may send lone surrogates; they must not crash the check.
    return hashlib.new(hash_name, plain.encode("utf-8", "surrogatepass")).hexdigest()


def form_decode(text: str) -> str:
    """Percent-decode text by HTML form rules: '+' is a space, %XX a UTF-8 byte, bad escapes kept."""
    data = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x2B:  # '+'
            out.append(0x20)
            i += 1
        elif byte == 0x25 and _is_escape(data[i + 1 : i + 3]):
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", "replace")


def _is_escape(pair: bytes) -> bool:
    """Tell whether pair is the two hex digits of a %XX escape."""
    return len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX


def accepted_urls(href: str) -> list[str]:
    """List the URL strings a page at href may have been signed with.

    The client drops the #fragment, then accepts the URL raw (Android) or with only its query
    percent-decoded (what the official server sample does for iOS), with the scheme as given or
    lower-cased (the official sample lower-cases it; a real location.href already has it lower-case).
    """
    url = href.split("#", 1)[0]
    forms = [url]
    base, sep, query = url.partition("?")
    if sep:
        forms.append(f"{base}?{form_decode(query)}")
    accepted: list[str] = []
    for form in forms:
        for candidate in (form, _lower_scheme(form)):
            if candidate not in accepted:
                accepted.append(candidate)
    return accepted


def _lower_scheme(url: str) -> str:
    """Lower-case the URL's scheme, leaving the rest untouched."""
    match = _SCHEME.match(url)
    if match is None:
        return url
    return match.group(0).lower() + url[match.end() :]
