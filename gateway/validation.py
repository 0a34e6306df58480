"""One way to validate input: a marshmallow schema, whose field errors become one `invalid_request`; the one
rule for a body that must be a JSON object, for corpids and agentids, and for page URLs and origins (below)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler used below
from marshmallow import Schema, ValidationError
from werkzeug.datastructures import MultiDict

from gateway.errors import InvalidRequest

# The one rule for corpids and agentids, wherever one comes in (a page's query or body, `flask corp add`).
CORPID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
CORPID_SHAPE = "1-64 of A-Z a-z 0-9 _ . -"
AGENT_ID_RE = re.compile(r"^[0-9]{1,20}$")
JSON_OBJECT_HINT = "Send Content-Type: application/json with a JSON object body."


def json_object(data: Any, *, what: str = "body", hint: str = JSON_OBJECT_HINT) -> dict[str, Any]:
    """`data` (a parsed JSON body, None if it was not JSON) if it is an object; else `invalid_request`."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"The {what} is not a JSON object", hint=hint)
    return data


def load(schema: Schema, data: Any, *, what: str = "request", hint: str | None = None) -> dict[str, Any]:
    """Validate `data`; on failure raise InvalidRequest naming every field and its problem."""
    try:
        return dict(schema.load(data))
    except ValidationError as e:
        detail = "; ".join(
            f"{field}: {' '.join(str(m) for m in msgs) if isinstance(msgs, list) else msgs}"
            for field, msgs in sorted(e.normalized_messages().items())
        )
        raise InvalidRequest(f"Invalid {what}: {detail}", hint=hint) from None


def parse_query(query_string: str) -> dict[str, str]:
    """A raw WSGI QUERY_STRING parsed as `request.args` parses it (first value of each name).

    For callers that cache by the raw string, to skip parsing on a hit. A query that is not UTF-8 is
    `invalid_request` (werkzeug itself raises UnicodeDecodeError).
    """
    # The call werkzeug's Request.args makes: invalid percent-escapes stay as they were.
    return MultiDict(parse_qsl(query_text(query_string), keep_blank_values=True, errors="werkzeug.url_quote")).to_dict()


def query_text(query_string: str) -> str:
    """A raw WSGI QUERY_STRING (Latin-1 by the WSGI rules) as the UTF-8 text it must be, or `invalid_request`."""
    try:
        return query_string.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidRequest(
            "The query string is not UTF-8", hint="Percent-encode each parameter value (encodeURIComponent)."
        ) from None


# -- URLs and origins, read as a browser reads them ------------------------------------------------------------
#
# The one home of the rule. What the gateway signs or grants is decided by a URL's origin, so the origin must be
# the one a browser computes (WHATWG URL Standard), not the one urllib.parse computes. The two differ on input no
# browser puts in `location.href` or an `Origin` header: a backslash (a browser reads `\` as `/` in http(s) URLs,
# so `https://evil.com\@h5.example.com/` is evil.com to it and h5.example.com to urlsplit), userinfo, tab,
# newline and other control characters (a browser drops or encodes them), spaces, percent-encoded or non-ASCII
# hosts, IPv4 addresses in shorthand (`127.1`). All of these are refused rather than guessed at.

Origin = tuple[str, str, int]  # (scheme, host, port), lower-case, default port filled in; IPv6 without brackets
DEFAULT_PORTS = {"http": 80, "https": 443}
PAGE_URL_HINT = "Pass url=location.href from the page as it is (encodeURIComponent), without the #fragment."
ORIGIN_HINT = "An origin is scheme://host[:port] exactly as the browser's location.origin shows it."

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_DOMAIN = re.compile(r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*\.?")
_NUMERIC_LABEL = re.compile(r"0[xX][0-9A-Fa-f]*|[0-9]+")  # the URL Standard's "ends in a number"
_PORT = re.compile(r"[0-9]{1,5}")
_NAMES = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte", " ": "a space"}


class UrlRefused(ValueError):
    """A URL or origin that a browser would read differently from a plain parser, or that no page can have."""

    def __init__(self, reason: str, hint: str = PAGE_URL_HINT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


@dataclass(frozen=True)
class WebUrl:
    """An absolute http(s) URL split as a browser splits it."""

    scheme: str
    host: str
    port: int
    rest: str  # path, query and fragment, untouched

    @property
    def origin(self) -> Origin:
        return self.scheme, self.host, self.port

    def serialized_origin(self) -> str:
        """`scheme://host[:port]` as browsers send it in `Origin` (no default port, IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


def parse_web_url(url: str) -> WebUrl:
    """Split an absolute http(s) URL as a browser does; raise UrlRefused where browsers and urllib disagree."""
    bad = _CONTROL_OR_SPACE.search(url)
    if bad:
        char = bad.group()
        what = _NAMES.get(char, f"the control character U+{ord(char):04X}")
        raise UrlRefused(
            f"contains {what} at position {bad.start()}; a browser drops or percent-encodes it, so no page's "
            "real URL has one"
        )
    scheme, colon, rest = url.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme) or scheme.lower() not in DEFAULT_PORTS:
        raise UrlRefused("must be an absolute http:// or https:// URL")
    scheme = scheme.lower()
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    if "\\" in head:
        raise UrlRefused(
            "contains a backslash before the query; a browser reads it as '/', so the host it goes to is not "
            "the one the rest of the URL names"
        )
    if not head.startswith("//") or head.startswith("///"):
        raise UrlRefused(f"must start with {scheme}:// followed by the host")
    authority = head[2:].partition("/")[0]
    if "@" in authority:
        raise UrlRefused("contains a user name or password (user@host); a page URL has none")
    host, port = _host_and_port(authority, scheme)
    return WebUrl(scheme=scheme, host=host, port=port, rest=rest[2 + len(authority) :])


def _host_and_port(authority: str, scheme: str) -> tuple[str, int]:
    if authority.startswith("["):
        literal, bracket, after = authority[1:].partition("]")
        try:
            if not bracket or "%" in literal:
                raise ValueError(literal)
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            raise UrlRefused(f"host [{literal} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise UrlRefused("has characters after the IPv6 address's ']'")
        port_text = after[1:] if after else ""
    else:
        name, _, port_text = authority.partition(":")
        host = _domain(name)
    if port_text == "":
        return host, DEFAULT_PORTS[scheme]
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
        raise UrlRefused(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _domain(name: str) -> str:
    if not name:
        raise UrlRefused("has no host")
    if "*" in name:
        raise UrlRefused(
            f"host {name!r} has a wildcard; a browser sends one exact origin, so a pattern never matches",
            hint="Register every origin the pages are served from, one --origin each.",
        )
    if not name.isascii():
        try:
            ascii_form = name.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_form = None
        raise UrlRefused(
            f"host {name!r} is not ASCII; browsers use its punycode form"
            + (f" ({ascii_form.lower()})" if ascii_form else ""),
            hint="Use the host exactly as location.href shows it (xn--…).",
        )
    if "%" in name:
        raise UrlRefused(f"host {name!r} is percent-encoded; a browser decodes it to another name")
    host = name.lower()
    if not _DOMAIN.fullmatch(host):
        raise UrlRefused(f"host {name!r} has characters that are not allowed in a host name")
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        # A browser reads a host ending in a number as an IPv4 address, in any of several spellings (127.1,
        # 0x7f.0.0.1, 2130706433) that it rewrites to dotted decimal: only that form is taken as is.
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = ""
        if canonical != host:
            raise UrlRefused(f"host {name!r} is an IPv4 address not written as four decimal numbers (a.b.c.d)")
    return host


def page_origin(url: str) -> Origin:
    """The origin of a page URL to sign, as the browser showing that page computes it; else `invalid_request`."""
    try:
        return parse_web_url(url).origin
    except UrlRefused as e:
        raise InvalidRequest(f"url: {e.reason}", hint=e.hint) from None


def canonical_origin(value: str) -> str:
    """An origin to register, as browsers serialise it (`scheme://host[:port]`); raise UrlRefused if none can match.

    Letter case, an explicit default port and a lone trailing '/' are normalised away; a path, query, fragment,
    userinfo, wildcard or another scheme is refused, because no browser would ever send such an origin.
    """
    try:
        parsed = parse_web_url(value)
    except UrlRefused as e:
        raise UrlRefused(
            f"origin {value!r} {e.reason}", hint=e.hint if e.hint != PAGE_URL_HINT else ORIGIN_HINT
        ) from None
    if parsed.rest not in ("", "/"):
        raise UrlRefused(
            f"origin {value!r} must be scheme://host[:port] only (no path, query or fragment)", hint=ORIGIN_HINT
        )
    return parsed.serialized_origin()


@lru_cache(maxsize=256)
def origin_from_header(value: str) -> Origin | None:
    """The origin an `Origin` header names, if it is exactly a serialised origin (what browsers send); else None.

    Anything else (a path, upper case, an explicit default port, userinfo, `null`) gets no CORS grant: echoing
    an odd string back would grant whatever a client reads into it.
    """
    try:
        parsed = parse_web_url(value)
    except UrlRefused:
        return None
    return parsed.origin if parsed.rest == "" and parsed.serialized_origin() == value else None
