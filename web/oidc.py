"""The OpenID Connect provider (gateway-contract.md): discovery, /oauth/authorize, /oauth/token, /oauth/userinfo.
Authlib's OAuth 2.0 / OpenID Connect server does the protocol; this module is the glue to the store
(identity/clients.py, identity/authorizations.py), the key ring (identity/tokens.py) and the H5 page.

The authorization code flow, step by step:
1. `GET /oauth/authorize`: Authlib checks the client, the exact redirect URI, the scope (openid) and PKCE (S256
   only; required of public clients). The request is kept under a handle and the browser goes to the corp's H5
   page with `oauth=HANDLE`. An unknown client or redirect URI gets an error page, never a redirect.
2. The page signs the person in (`POST /channel/login` with the handle, channel/login.login_for_client), which
   calls `complete_authorization`: Authlib issues the code (single-use, 60 s) and the page goes to the client's
   redirect URI with it.
3. `POST /oauth/token`: Authlib authenticates the client and checks the code, redirect URI and PKCE verifier; the
   ID token is signed with the key ring (ES256, `kid`), the access token kept (hashed) for its lifetime.
4. `GET|POST /oauth/userinfo`: the person's claims, for a live access token.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeGrant,
    ClientMixin,
    InsecureTransportError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    TokenMixin,
    scope_to_list,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, OpenIDCode, UserInfoEndpoint
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from authlib.oidc.core.util import create_half_hash
from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template, request
from werkzeug.wrappers import Response as WerkzeugResponse

from gateway.errors import InvalidRequest, IssuerUnset, UnknownCorp
from identity import tokens
from identity.authorizations import AccessGrant, IssuedCode, PendingAuthorization, fingerprint
from identity.clients import CLIENT_ID_RE, Client
from identity.keys import ALGORITHM
from web.runtime import get_runtime, issuer

log = logging.getLogger(__name__)
bp = Blueprint("oidc", __name__)
EXTENSION = "dtgw.oidc"

SCOPE = "openid"
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
CONFIDENTIAL_METHODS = ("client_secret_basic", "client_secret_post")
PKCE_METHOD = "S256"
# What an ID token and /oauth/userinfo carry (channel/session.session_claims, plus the protocol's own).
CLAIMS = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "corpid",
    "kind",
    "unionid",
    "openid",
    "follower_id",
    "userid",
    "contact_type",
    "linked",
]
DISCOVERY_MAX_AGE = 300


def oidc_issuer() -> str:
    """The provider's issuer: GATEWAY_ISSUER; in sandbox mode without it, the URL the request came in on. Outside
    sandbox mode it is never guessed: relying parties compare it with `iss` character for character."""
    settings = get_runtime().settings
    if not settings.issuer and not settings.sandbox:
        raise IssuerUnset("The OpenID Connect provider is off: GATEWAY_ISSUER is not set")
    return issuer()


# -- Authlib's view of the store ---------------------------------------------------------------------------------


class OidcClient(ClientMixin):
    """A registered client (identity/clients.py) as Authlib asks about it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.client_id = client.client_id
        self.client_metadata: dict[str, Any] = {}  # nothing beyond the defaults: plain JSON userinfo, ES256

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> None:
        """None: OpenID Connect requires redirect_uri in every authorization request (Core §3.1.2.1)."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """`openid` when asked for (other scopes are ignored, RFC 6749 §3.3); None, an invalid_scope, without it."""
        return SCOPE if scope and SCOPE in scope_to_list(scope) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.client.redirect_uris  # exact match, no patterns

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client.check_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return False
        return method == "none" if self.client.public else method in CONFIDENTIAL_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


class StoredCode(AuthorizationCodeMixin):
    """An authorization code taken from the store (identity/authorizations.IssuedCode)."""

    def __init__(self, code: str, issued: IssuedCode) -> None:
        self.code = code
        self.issued = issued
        self.code_challenge = issued.code_challenge
        self.code_challenge_method = issued.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.issued.redirect_uri

    def get_scope(self) -> str:
        return self.issued.scope

    def get_nonce(self) -> str | None:
        return self.issued.nonce

    def get_auth_time(self) -> int:
        return self.issued.auth_time


class AccessToken(TokenMixin):
    """A live access token (identity/authorizations.AccessGrant) of a still registered client."""

    def __init__(self, grant: AccessGrant, client: OidcClient) -> None:
        self.grant = grant
        self.client = client
        self.scope = grant.scope

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.grant.client_id)

    def get_scope(self) -> str:
        return self.grant.scope

    def get_expires_in(self) -> int:
        return self.grant.expires_at - self.grant.issued_at

    def is_expired(self) -> bool:
        return time.time() >= self.grant.expires_at

    def is_revoked(self) -> bool:
        return False  # a revoked token is deleted from the store, so it is never found

    def get_user(self) -> dict[str, Any]:
        return self.grant.claims

    def get_client(self) -> OidcClient:
        return self.client


def query_client(client_id: str) -> OidcClient | None:
    if not isinstance(client_id, str) or not CLIENT_ID_RE.match(client_id):
        return None
    client = get_runtime().clients.get(client_id)
    return OidcClient(client) if client else None


def save_token(token: dict[str, Any], oauth_request: OAuth2Request) -> None:
    """Keep an access token (hashed) with the person's claims, bound to the code it was exchanged for."""
    code = oauth_request.authorization_code
    get_runtime().authorizations.save_access_token(
        token["access_token"],
        AccessGrant(client_id=oauth_request.client.get_client_id(), scope=token["scope"], claims=oauth_request.user),
        ttl=int(token["expires_in"]),
        code=code.code if isinstance(code, StoredCode) else None,
    )


def new_access_token(**_: Any) -> str:
    return secrets.token_urlsafe(32)


# -- the grant and its extensions --------------------------------------------------------------------------------


class CodeGrant(AuthorizationCodeGrant):
    """The authorization code grant, its codes in the store (single-use: taken in one command)."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        data = self.request.payload.data
        # Request objects are not supported (discovery says so): refuse rather than ignore (Core §6).
        if data.get("request"):
            raise RequestNotSupportedError(redirect_uri=redirect_uri)
        if data.get("request_uri"):
            raise RequestURINotSupportedError(redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code: str, oauth_request: OAuth2Request) -> None:
        data = oauth_request.payload.data
        issued = IssuedCode(
            client_id=oauth_request.client.get_client_id(),
            redirect_uri=oauth_request.payload.redirect_uri,
            scope=oauth_request.scope,
            claims=oauth_request.user,
            auth_time=int(time.time()),  # the person signed in with DingTalk just now, on the page
            nonce=data.get("nonce") or None,
            code_challenge=data.get("code_challenge") or None,
            code_challenge_method=data.get("code_challenge_method") or None,
        )
        get_runtime().authorizations.issue_code(code, issued)

    def query_authorization_code(self, code: str, client: OidcClient) -> StoredCode | None:
        rt = get_runtime()
        issued, replayed = rt.authorizations.take_code(code, token_ttl=rt.settings.session_ttl)
        if issued is None:
            if replayed:
                log.warning(
                    "client=%s presented a used code (%s): the access token it gave is revoked",
                    client.get_client_id(),
                    fingerprint(code)[:12],
                )
            return None
        if issued.client_id != client.get_client_id():
            log.warning("client=%s presented a code of client=%s", client.get_client_id(), issued.client_id)
            return None
        return StoredCode(code, issued)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Nothing to do: `query_authorization_code` took it out of the store."""

    def authenticate_user(self, authorization_code: StoredCode) -> dict[str, Any]:
        return authorization_code.issued.claims


class S256Challenge(CodeChallenge):
    """PKCE with S256 only: a public client must send a challenge, and `plain` (or no method) is refused."""

    SUPPORTED_CODE_CHALLENGE_METHOD = [PKCE_METHOD]

    def validate_code_challenge(self, grant: CodeGrant, redirect_uri: str) -> None:
        super().validate_code_challenge(grant, redirect_uri)
        data = grant.request.payload.data
        if data.get("code_challenge"):
            if data.get("code_challenge_method") != PKCE_METHOD:
                raise InvalidRequestError("code_challenge_method must be S256 (plain is not accepted)")
        elif grant.request.client.client.public:
            raise InvalidRequestError("A public client must send code_challenge with code_challenge_method=S256")


class IdTokens(OpenIDCode):
    """The ID token of the code flow, signed by the key ring (ES256, `kid`): the person's session claims, `aud` the
    client, the request's `nonce`, `auth_time` and `at_hash`."""

    def __init__(self) -> None:
        super().__init__(require_nonce=False)

    def exists_nonce(self, nonce: str, oauth_request: OAuth2Request) -> bool:
        # Replays are stopped by single-use codes and checked by the client against the nonce it sent (Core
        # §3.1.3.7); the provider keeps no nonce history.
        return False

    def get_client_algorithm(self, client: OidcClient) -> str:
        return ALGORITHM

    def generate_user_info(self, user: dict[str, Any], scope: str) -> dict[str, Any]:
        return dict(user)

    def encode_id_token(self, token: dict[str, Any], oauth_request: OAuth2Request) -> str:
        rt = get_runtime()
        code: StoredCode = oauth_request.authorization_code
        claims = {**oauth_request.user, "auth_time": code.get_auth_time()}
        if code.get_nonce():
            claims["nonce"] = code.get_nonce()
        claims["at_hash"] = create_half_hash(token["access_token"], ALGORITHM).decode()
        audience = oauth_request.client.get_client_id()
        return tokens.sign(rt.keys, claims, issuer=oidc_issuer(), audience=audience, ttl=rt.settings.session_ttl)


class AccessTokens(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> AccessToken | None:
        rt = get_runtime()
        grant = rt.authorizations.access(token_string)
        if grant is None:
            return None
        client = rt.clients.get(grant.client_id)
        if client is None:  # the client was removed: its tokens stop working at once
            return None
        return AccessToken(grant, OidcClient(client))


class UserInfo(UserInfoEndpoint):
    def generate_user_info(self, user: dict[str, Any], scope: str) -> dict[str, Any]:
        return dict(user)


def create_server(app: Flask) -> AuthorizationServer:
    """Authlib's authorization server for this app: the code grant with PKCE and ID tokens, and userinfo."""
    server = AuthorizationServer(query_client=query_client, save_token=save_token)
    server.init_app(app)
    ttl = get_runtime(app).settings.session_ttl  # the key ring keeps a retired key published this long
    server.register_token_generator(
        "default", BearerTokenGenerator(new_access_token, expires_generator=lambda client, grant_type: ttl)
    )
    server.register_grant(CodeGrant, [S256Challenge(required=True), IdTokens()])
    protector = ResourceProtector()
    protector.register_token_validator(AccessTokens(realm="userinfo"))
    server.register_endpoint(UserInfo(resource_protector=protector))
    return server


def get_server() -> AuthorizationServer:
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> None:
    """Build the provider and mount its routes."""
    app.extensions[EXTENSION] = create_server(app)
    app.register_blueprint(bp)


# -- the routes --------------------------------------------------------------------------------------------------

# Browser apps (public clients) call these from their own origin. No cookie or other ambient credential is involved
# (the token endpoint needs the code and its verifier, userinfo a bearer token), so any origin may read the answers.
CROSS_ORIGIN = frozenset({"oidc.discovery", "oidc.token", "oidc.userinfo"})


@bp.after_request
def allow_browser_apps(response: Response) -> Response:
    if request.endpoint in CROSS_ORIGIN and "Origin" in request.headers:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.get("/.well-known/openid-configuration")
def discovery() -> Response:
    base = oidc_issuer()
    response = jsonify(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "userinfo_endpoint": f"{base}/oauth/userinfo",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "scopes_supported": [SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "code_challenge_methods_supported": [PKCE_METHOD],
            "claims_supported": CLAIMS,
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }
    )
    response.headers["Cache-Control"] = f"public, max-age={DISCOVERY_MAX_AGE}"
    return response


@bp.route("/oauth/authorize", methods=["GET", "POST"])  # Core §3.1.2.1: both, the POST form-encoded
def authorize() -> WerkzeugResponse | tuple[str, int, dict[str, str]]:
    """Validate an authorization request and send the browser to the corp's sign-in page with a handle."""
    base = oidc_issuer()
    server = get_server()
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        if error.redirect_uri:  # the client and its redirect URI are known: it hears of the error (RFC 6749 §4.1.2.1)
            return server.handle_error_response(None, error)
        return error_page(error)
    client: Client = grant.request.client.client
    rt = get_runtime()
    try:
        corp = rt.corp(client.corpid)
    except UnknownCorp:
        log.error("client=%s names corp=%s, which is not registered", client.client_id, client.corpid)
        missing = OAuth2Error(
            "The gateway has no sign-in for this client's corp",
            error="server_error",
            redirect_uri=grant.redirect_uri,
            state=grant.request.payload.state,
        )
        return server.handle_error_response(None, missing)
    data = grant.request.payload.data
    pending = PendingAuthorization(
        client_id=client.client_id,
        corpid=corp.corpid,
        redirect_uri=grant.redirect_uri,
        scope=grant.request.scope,
        state=data.get("state"),
        nonce=data.get("nonce") or None,
        code_challenge=data.get("code_challenge") or None,
        code_challenge_method=data.get("code_challenge_method") or None,
    )
    handle = rt.authorizations.open(pending)
    log.info(
        "client=%s corp=%s: to the sign-in page (handle %s)", client.client_id, corp.corpid, fingerprint(handle)[:12]
    )
    page = f"{base}/channel/login?" + urlencode({"corpid": corp.corpid, "agentid": corp.agent_id, "oauth": handle})
    response = redirect(page, 302)
    response.headers["Cache-Control"] = "no-store"
    return response


INSECURE_HINT = (
    "OAuth runs over https only (http on the loopback interface). Behind a TLS proxy, set GATEWAY_TRUST_PROXY=1 so "
    "the gateway sees the scheme the browser used (X-Forwarded-Proto)."
)


def error_page(error: OAuth2Error) -> tuple[str, int, dict[str, str]]:
    """The person's page for a request that cannot go back to the client (unknown client or redirect URI)."""
    hint = INSECURE_HINT if isinstance(error, InsecureTransportError) else None
    html = render_template("oauth_error.html", error=error.error, description=error.get_error_description(), hint=hint)
    return html, 400, {"Cache-Control": "no-store"}


@bp.post("/oauth/token")
def token() -> Response:
    oidc_issuer()
    server = get_server()
    try:
        return server.create_token_response()
    except InsecureTransportError as error:  # raised before Authlib's own error handling
        return server.handle_error_response(None, error)


@bp.route("/oauth/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    oidc_issuer()
    server = get_server()
    try:
        return server.create_endpoint_response("userinfo")
    except InsecureTransportError as error:
        return server.handle_error_response(None, error)


def complete_authorization(pending: PendingAuthorization, claims: dict[str, Any]) -> str:
    """Issue the code for a pending authorization once the page has signed the person in; return where the page
    goes: the client's redirect URI with `code` and `state` (or `error`, if the request no longer validates)."""
    server = get_server()
    try:
        # The URL only tells Authlib the transport (https, or loopback in sandbox mode); the parameters are the
        # ones /oauth/authorize validated, validated again: the client may have been removed or changed since.
        oauth_request = OAuth2Request("GET", request.url)
        oauth_request.payload = BasicOAuth2Payload(pending.params())
        grant = server.get_authorization_grant(oauth_request)
        redirect_uri = grant.validate_authorization_request()
        _, _, headers = grant.create_authorization_response(redirect_uri, claims)
    except OAuth2Error as error:
        if not error.redirect_uri:  # the client or its redirect URI is gone: nowhere safe to send the person
            raise InvalidRequest(
                f"oauth: {error.get_error_description() or error.error}",
                hint="The application's registration changed during the sign-in; start again from the application.",
            ) from error
        error.state = pending.state
        _, _, headers = error()
    return str(dict(headers)["Location"])
