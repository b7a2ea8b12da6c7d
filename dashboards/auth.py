"""Who may see what: sign-in, sessions, wall-screen tokens and the role check on every request.

Roles are ordered viewer < operator < manager < admin (mesflow/users.py). Each page declares
the lowest role that may open it next to its route (`dash.register_page(..., min_role=...)`),
and each of its callbacks is registered through `callback(app, role, ...)`. One Flask
`before_request` gate then checks every request before Dash sees it:

- the page routes (`/`, `/<path>`): the role of the page at that path (unknown paths: viewer);
- `/_dash-update-component`: the role declared for that callback; for Dash's page router, the
  role of the page whose layout it would render (otherwise a viewer could fetch a manager
  page's layout through it); a callback with no declared role is refused; the request must
  name exactly that callback's outputs, inputs and state (pattern-matching ones as the
  browser sends them: concrete dict ids, lists for ALL/ALLSMALLER), else 400;
- everything else (`/_dash-layout`, `/_dash-dependencies`, assets, scripts): any signed-in user;
- only `/login`, `/logout`, `/ack/<token>` (a signed alert link, dashboards/ack_route.py)
  and `/c/<token>` (a customer's order link, dashboards/customer_route.py) are open.

Unauthenticated page loads redirect to /login?next=...; other requests get 401, a too-low role
403. Each callback checks the role again when it runs, so a route mistake alone opens nothing.

Who is asking, in order: a trusted reverse proxy's user header (off unless configured), else
the signed session cookie, re-checked against the database on every request so a removed
user, a changed password or role, or a revoked token ends the session at once. A GET with
`?token=` (a wall screen's bookmark) opens a viewer session and redirects to the same URL
without the token.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlencode

import dash
import flask
import psycopg
from dash._pages import _path_to_page
from werkzeug.exceptions import Forbidden
from werkzeug.wrappers import Response

from dashboards.i18n import normalize_lang, role_label, t
from dashboards.queries import Database
from mesflow import users
from mesflow.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ROLE: Final = "viewer"  # unknown paths (Dash's 404 page) and the app's plumbing
MAX_REQUEST_BYTES: Final = 1 << 20  # no board request comes near; a hostile one gets 413
LOGIN_ENDPOINT: Final = "mesflow_login"
LOGOUT_ENDPOINT: Final = "mesflow_logout"
# /ack/<token> (dashboards/ack_route.py): a signed alert link is its own credential.
ACK_ENDPOINT: Final = "mesflow_ack"
# /c/<token> (dashboards/customer_route.py): a customer's read-only order link, likewise.
CUSTOMER_ENDPOINT: Final = "mesflow_customer"
# Dash's page router: its output when `use_pages=True` (dash.dash._ID_CONTENT/_ID_STORE).
ROUTER_OUTPUT: Final = ".._pages_content.children..._pages_store.data.."
_ROUTER_LOCATION: Final = "_pages_location"
_STATE_KEY: Final = "mesflow.auth"
SESSION_CHECK_TIMEOUT_S: Final = 1.0  # waiting for a pooled connection to re-check a session
DB_RETRY_S: Final = 5.0  # after a failed re-check, cookies are believed this long
_PRINCIPAL: Final = "mesflow_principal"

Kind = Literal["user", "token", "proxy"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a signed-in user, a wall-screen token, or a user named by the proxy."""

    kind: Kind
    name: str
    role: str


# -- failed sign-ins -----------------------------------------------------------------------------


class LoginThrottle:
    """Slows down guessing: after `free` failures of a key, each try waits longer.

    Keys are the user name tried and the client address, so one attacker cannot lock a
    user out for long from elsewhere (the wait is bounded by `cap_s`), and cannot try many
    names from one address. The delay doubles per failure (1 s, 2 s, 4 s ... 15 min); a
    success clears it. Bounded memory: the oldest keys go first.
    """

    def __init__(
        self,
        *,
        free: int = 5,
        base_s: float = 1.0,
        cap_s: float = 900.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base_s, self.cap_s, self.max_keys = free, base_s, cap_s, max_keys
        self._clock = clock
        self._keys: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, blocked until
        self._lock = threading.Lock()

    def wait_s(self, *keys: str) -> float:
        """Seconds before a try with these keys is allowed (0: now)."""
        now = self._clock()
        with self._lock:
            until = max((self._keys[k][1] for k in keys if k in self._keys), default=now)
        return max(0.0, until - now)

    def failure(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                failures = self._keys.pop(key, (0, 0.0))[0] + 1
                over = failures - self.free
                delay = 0.0 if over < 0 else min(self.cap_s, self.base_s * 2.0**over)
                self._keys[key] = (failures, now + delay)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)

    def success(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)


# -- configuration ---------------------------------------------------------------------------------


def parse_networks(text: str) -> list[Network]:
    """ "10.0.0.5, 10.1.0.0/16, ::1" -> networks; a bad entry is a ValueError naming it."""
    networks: list[Network] = []
    for part in text.split(","):
        entry = part.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"MESFLOW_AUTH_TRUSTED_PROXIES: {entry!r} is not an address or network"
            ) from None
    return networks


def session_secret(settings: Settings) -> str:
    """MESFLOW_AUTH_SESSION_SECRET, else a key generated once under data_dir and kept.

    Kept, not made per start: a restart must not sign out every wall screen.
    """
    if settings.auth_session_secret:
        return settings.auth_session_secret
    path = Path(settings.data_dir) / "dashboard-session.key"
    try:
        return path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, NotADirectoryError):
        pass
    key = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="ascii").strip()
    except OSError as err:
        log.warning(
            "cannot keep a session key in %s (%s): sessions end when the dashboard restarts;"
            " set MESFLOW_AUTH_SESSION_SECRET",
            path,
            err.strerror or err,
        )
        return key
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


@dataclass
class AuthState:
    """Per app: what the gate needs besides the request."""

    app: dash.Dash
    db: Database
    default_lang: str
    proxy_header: str | None
    trusted_proxies: list[Network]
    page_rules: frozenset[str]
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    db_down_until: float = 0.0  # monotonic time before which sessions are not re-checked
    callback_roles: dict[str, str] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)

    def warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning(msg, *args)


def _state(server: flask.Flask | None = None) -> AuthState:
    state = (server or flask.current_app).config.get(_STATE_KEY)
    if not isinstance(state, AuthState):
        raise RuntimeError("no auth state: was the app built with dashboards.app.create_app?")
    return state


# -- declaring roles -------------------------------------------------------------------------------


def callback(app: dash.Dash, role: str, *dependencies: Any, **kwargs: Any) -> Callable[..., Any]:
    """`app.callback(...)` for a page's callback that needs `role` (the page's own, usually).

    The gate refuses the request before the callback runs, and the callback checks again.
    """
    users.check_role(role)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            require(role)
            return fn(*args, **kw)

        before = set(app.callback_map)
        app.callback(*dependencies, **kwargs)(guarded)
        for key in set(app.callback_map) - before:
            _state(app.server).callback_roles[key] = role
        return guarded

    return decorate


def clientside_callback(
    app: dash.Dash, role: str, function: str, *dependencies: Any, **kwargs: Any
) -> None:
    """`app.clientside_callback(...)` on a page that needs `role`: it runs in the browser
    (no request for the gate to refuse), and is declared like the others for
    `check_declarations`."""
    users.check_role(role)
    before = set(app.callback_map)
    app.clientside_callback(function, *dependencies, **kwargs)
    for key in set(app.callback_map) - before:
        _state(app.server).callback_roles[key] = role


def page_role(page: dict[str, Any]) -> str:
    role = page.get("min_role")
    if not isinstance(role, str) or users.role_rank(role) < 0:
        raise RuntimeError(
            f"page {page.get('module')!r} declares no valid min_role: give "
            f"dash.register_page(..., min_role=...) one of {', '.join(users.ROLES)}"
        )
    return role


def check_declarations(app: dash.Dash) -> None:
    """At start: every page and every callback has a role (closed by default, not open)."""
    for page in dash.page_registry.values():
        page_role(page)
    roles = _state(app.server).callback_roles
    missing = [key for key in app.callback_map if key not in roles and key != ROUTER_OUTPUT]
    if missing:
        raise RuntimeError(f"callbacks without a role (use dashboards.auth.callback): {missing}")


def role_for_path(app: dash.Dash, path: str) -> str:
    """The role the page at `path` needs (Dash's own path matching, so they cannot disagree)."""
    page, _vars = _path_to_page(app.strip_relative_path(path) or "")
    return page_role(page) if page else DEFAULT_ROLE


def current_principal() -> Principal | None:
    principal = flask.g.get(_PRINCIPAL)
    return principal if isinstance(principal, Principal) else None


def require(role: str) -> Principal:
    """The caller, if their role is at least `role`; else 403 (callbacks call this too)."""
    principal = current_principal()
    if principal is None or not users.has_role(principal.role, role):
        raise Forbidden(f"needs role {role}")
    return principal


# -- installing ------------------------------------------------------------------------------------


def install(app: dash.Dash, settings: Settings, db: Database) -> None:
    """Sign-in routes, cookie settings and the gate on `app`; call before registering pages."""
    server = app.server
    prefix = app.config.routes_pathname_prefix
    server.config[_STATE_KEY] = AuthState(
        app=app,
        db=db,
        default_lang=settings.language,
        proxy_header=settings.auth_proxy_header or None,
        trusted_proxies=parse_networks(settings.auth_trusted_proxies),
        page_rules=frozenset({prefix, prefix + "<path:path>"}),
    )
    server.secret_key = session_secret(settings)
    server.config.update(
        SESSION_COOKIE_NAME="mesflow_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.auth_cookie_secure,
        # Rolling: every request renews it, so a wall screen polling every 2 s never expires
        # and a person is signed out after this long without a request.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.auth_session_hours),
        SESSION_REFRESH_EACH_REQUEST=True,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
    )
    server.add_url_rule("/login", LOGIN_ENDPOINT, _login_view, methods=["GET", "POST"])
    server.add_url_rule("/logout", LOGOUT_ENDPOINT, _logout_view, methods=["GET", "POST"])
    server.before_request(_gate)
    server.after_request(_headers)


# -- the gate --------------------------------------------------------------------------------------


def _gate() -> Response | None:
    request = flask.request
    if request.endpoint in (LOGIN_ENDPOINT, LOGOUT_ENDPOINT, ACK_ENDPOINT, CUSTOMER_ENDPOINT):
        return None
    state = _state()
    is_page = request.url_rule is not None and request.url_rule.rule in state.page_rules
    if is_page and request.method in ("GET", "HEAD") and "token" in request.args:
        return _token_sign_in(state)
    principal = _resolve(state)
    setattr(flask.g, _PRINCIPAL, principal)
    if principal is None:
        if is_page and request.method in ("GET", "HEAD"):
            return flask.redirect(_login_url(_here(request)), code=302)
        return _json_error(401, "sign in first: /login")
    required = _required_role(state, is_page)
    if required is None:
        return _json_error(403, "unknown callback")
    if users.has_role(principal.role, required):
        if request.path == state.app.config.requests_pathname_prefix + "_dash-update-component":
            body = request.get_json(silent=True, cache=True)
            spec = state.app.callback_map.get(body["output"]) if isinstance(body, dict) else None
            if not well_formed_callback(body, spec):
                return _json_error(400, "malformed callback request")
        return None
    if is_page:
        return _forbidden_page(principal, required)
    return _json_error(403, f"needs role {required}")


def _required_role(state: AuthState, is_page: bool) -> str | None:
    """The role this request needs; None for a callback nobody declared (refused)."""
    request = flask.request
    if is_page:
        return role_for_path(state.app, request.path)
    if request.path == state.app.config.requests_pathname_prefix + "_dash-update-component":
        body = request.get_json(silent=True, cache=True)
        output = body.get("output") if isinstance(body, dict) else None
        if output == ROUTER_OUTPUT and isinstance(body, dict):
            return role_for_path(state.app, _router_pathname(body))
        return state.callback_roles.get(output) if isinstance(output, str) else None
    return DEFAULT_ROLE


_WILDCARDS: Final = frozenset({"MATCH", "ALL", "ALLSMALLER"})
_MULTI: Final = frozenset({"ALL", "ALLSMALLER"})  # the browser sends a list for these
DeclaredId = str | dict[str, Any]


def _declared_id(raw: str) -> DeclaredId:
    """An id as Dash keeps it in callback_map: dict ids (pattern-matching) are JSON strings."""
    if raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(parsed, dict):
            return parsed
    return raw


def _wildcard(value: Any) -> str | None:
    """ "MATCH", "ALL" or "ALLSMALLER" for a wildcard in a declared dict id (Dash: ["ALL"])."""
    if isinstance(value, list) and len(value) == 1 and value[0] in _WILDCARDS:
        return str(value[0])
    return None


def _id_matches(sent: Any, declared: DeclaredId, matched: dict[str, Any]) -> bool:
    """Is `sent` a concrete id the declared one (string, or dict with wildcards) stands for?

    `matched` collects the values sent for MATCH keys: one request is about one MATCH value.
    """
    if isinstance(declared, str):
        return isinstance(sent, str) and sent == declared
    if not isinstance(sent, dict) or sent.keys() != declared.keys():
        return False
    for key, want in declared.items():
        got = sent[key]
        wild = _wildcard(want)
        if wild is None:
            ok = type(got) is type(want) and got == want
        else:  # a wildcard stands for a string or number (what Dash allows in ids)
            ok = isinstance(got, str | int | float)
            ok = ok and (wild != "MATCH" or matched.setdefault(key, got) == got)
        if not ok:
            return False
    return True


def _dep_matches(sent: Any, declared: DeclaredId, prop: str, matched: dict[str, Any]) -> bool:
    """One entry of a request's outputs/inputs/state against one declared dependency."""

    def one(item: Any) -> bool:
        return (
            isinstance(item, dict)
            and item.get("property") == prop
            and _id_matches(item.get("id"), declared, matched)
        )

    if isinstance(declared, dict) and any(_wildcard(v) in _MULTI for v in declared.values()):
        return isinstance(sent, list) and all(one(item) for item in sent)
    return one(sent)


def _deps_match(sent: Any, declared: list[tuple[DeclaredId, str]], matched: dict[str, Any]) -> bool:
    return (
        isinstance(sent, list)
        and len(sent) == len(declared)
        and all(_dep_matches(s, d, p, matched) for s, (d, p) in zip(sent, declared, strict=True))
    )


def _declared_outputs(output: str) -> list[tuple[DeclaredId, str]]:
    """The outputs named by a callback_map key ("id.prop" or "..id.prop...id.prop..")."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    declared: list[tuple[DeclaredId, str]] = []
    for part in parts:
        id_, _, prop = part.rpartition(".")
        # Dash escapes dots inside ids in the key (dash._utils.create_callback_id).
        declared.append((_declared_id(id_.replace("\\.", ".")), prop))
    return declared


def well_formed_callback(body: Any, spec: dict[str, Any] | None) -> bool:
    """Does a callback request name exactly the callback's own outputs, inputs and state?

    Dash's dispatcher answers 500 on a request of another shape; a hostile or broken client
    gets 400 here instead. Pattern-matching ids (dict ids with MATCH/ALL/ALLSMALLER) must be
    concrete ids of the declared pattern, in a list where the wildcard is ALL or ALLSMALLER
    (as dash-renderer sends them), with one value per MATCH key.
    """
    if not isinstance(body, dict) or spec is None:
        return False
    output = body["output"]
    matched: dict[str, Any] = {}
    if spec.get("no_output"):
        if body.get("outputs") not in (None, []):
            return False
    else:
        outputs = body.get("outputs")
        sent_out = outputs if output.startswith("..") else [outputs]
        if not _deps_match(sent_out, _declared_outputs(output), matched):
            return False
    for kind in ("inputs", "state"):
        declared = [(_declared_id(d["id"]), d["property"]) for d in spec.get(kind, [])]
        if not _deps_match(body.get(kind, []), declared, matched):
            return False
    changed = body.get("changedPropIds", [])  # Dash tests `in` and indexes a dict with these
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return False
    if output == ROUTER_OUTPUT:  # Dash's router takes strings only
        values = [i.get("value") for i in body["inputs"]]
        # A browser always sends its pathname, and it starts with "/"; a missing or empty
        # one crashes Dash's matching of path_template pages (e.g. /orders/<order_no>).
        if _router_pathname(body).startswith("/\x00"):
            return False
        return all(v is None or isinstance(v, str) for v in values)
    return True


def _router_pathname(body: dict[str, Any]) -> str:
    """The path whose layout the router callback is asked for (not a path: the 404 page)."""
    inputs = body.get("inputs")
    if isinstance(inputs, list):
        for item in inputs:
            if (
                isinstance(item, dict)
                and item.get("id") == _ROUTER_LOCATION
                and item.get("property") == "pathname"
                and isinstance(item.get("value"), str)
                and item["value"].startswith("/")  # a browser's pathname always does
            ):
                return str(item["value"])
    return "/\x00not-a-page"


def _resolve(state: AuthState) -> Principal | None:
    """Who is asking: trusted proxy header, else a session still valid in the database."""
    request = flask.request
    if state.proxy_header:
        named = request.headers.get(state.proxy_header)
        if named is not None:
            if _trusted(state, request.remote_addr):
                return _proxy_principal(state, named)
            state.warn_once(
                f"untrusted:{request.remote_addr}",
                "ignoring the %s header from %s: not in MESFLOW_AUTH_TRUSTED_PROXIES",
                state.proxy_header,
                request.remote_addr,
            )
    session = flask.session
    kind, sub, role = session.get("kind"), session.get("sub"), session.get("role")
    if kind not in ("user", "token") or not isinstance(sub, str) or not isinstance(role, str):
        return None
    # The cookie is signed by us, so it was valid when issued. While the database is away,
    # believe it: wall screens stay up (showing their banner) instead of every request
    # waiting for a connection. Revocation applies again once the database is back.
    from_cookie = Principal(kind, str(session.get("name") or sub), role)
    if time.monotonic() < state.db_down_until:
        return from_cookie
    try:
        principal = state.db.run(
            lambda conn: _still_valid(conn, session), timeout=SESSION_CHECK_TIMEOUT_S
        )
    except psycopg.Error as err:
        state.db_down_until = time.monotonic() + DB_RETRY_S
        state.warn_once("db-down", "cannot re-check sessions (%s); trusting signed cookies", err)
        return from_cookie
    if principal is None:
        session.clear()
    return principal


def _still_valid(conn: psycopg.Connection, session: Any) -> Principal | None:
    sub = str(session["sub"])
    if session["kind"] == "user":
        user = users.get_user(conn, sub)
        if user is None or user.session_epoch != session.get("epoch"):
            return None
        return Principal("user", user.username, user.role)
    if sub.isdigit() and users.token_is_live(conn, int(sub)):
        return Principal("token", str(session.get("name") or sub), "viewer")
    return None


def _trusted(state: AuthState, addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return any(ip in net for net in state.trusted_proxies)


def _proxy_principal(state: AuthState, named: str) -> Principal | None:
    try:
        user = state.db.run(lambda conn: users.get_user(conn, named))
    except psycopg.Error as err:
        state.warn_once("db-down-proxy", "cannot look up proxy user (%s)", err)
        return None
    if user is None:
        state.warn_once(f"proxy-unknown:{named[:64]}", "proxy names unknown user %r", named[:64])
        return None
    return Principal("proxy", user.username, user.role)


def _token_sign_in(state: AuthState) -> Response:
    request = flask.request
    lang = _lang(state)
    ip_key = f"ip:{request.remote_addr}"
    wait = state.throttle.wait_s(ip_key)
    if wait > 0:
        return _throttled(lang, wait)
    secret = request.args.get("token", "")
    try:
        token = state.db.run(lambda conn: users.token_by_secret(conn, secret))
    except psycopg.Error:
        return _message_page(503, lang, t("login_db_down", lang))
    if token is None:
        state.throttle.failure(ip_key)
        return _message_page(401, lang, t("token_invalid", lang))
    flask.session.clear()
    flask.session.update(kind="token", sub=str(token.id), name=token.name, role=token.role)
    flask.session.permanent = True
    rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
    return flask.redirect(request.path + (f"?{urlencode(rest)}" if rest else ""), code=302)


# -- sign-in pages --------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="{{ html_lang }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · mesflow</title>
<style>
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
background:#10151c;color:#e8edf2;font:18px/1.5 "Noto Sans CJK SC","Microsoft YaHei",system-ui,sans-serif}
main{background:#1b232d;padding:2rem 2.5rem;border-radius:10px;min-width:20rem;max-width:30rem}
h1{margin:0 0 1.2rem;font-size:1.6rem} label{display:block;margin:.8rem 0 .2rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;border-radius:5px;border:1px solid #4a5866;background:#0d1117;color:#e8edf2}
button{margin-top:1.4rem;width:100%;padding:.6rem;font-size:1.05rem;border:0;border-radius:5px;background:#2f81f7;color:#fff;cursor:pointer}
.msg{background:#5c1e1e;padding:.6rem .8rem;border-radius:5px;margin-bottom:1rem}
.lang{display:block;margin-top:1rem;text-align:right;color:#9fb3c8}
a{color:#9fb3c8}
</style></head><body><main>
<h1>{{ title }}</h1>
{% if message %}<div class="msg" role="alert">{{ message }}</div>{% endif %}
{% if form %}
<form method="post" action="{{ action }}">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="next" value="{{ next }}">
<input type="hidden" name="lang" value="{{ lang }}">
<label for="username">{{ username_label }}</label>
<input id="username" name="username" autocomplete="username" required maxlength="64" value="{{ username }}" autofocus>
<label for="password">{{ password_label }}</label>
<input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024">
<button type="submit">{{ submit }}</button>
</form>
{% endif %}
{% if link %}<p><a href="{{ link }}">{{ link_text }}</a></p>{% endif %}
<a class="lang" href="{{ other_lang_url }}">{{ other_lang }}</a>
</main></body></html>
"""


def _lang(state: AuthState) -> str:
    values = flask.request.values if flask.request.method == "POST" else flask.request.args
    return normalize_lang(values.get("lang") or None, state.default_lang)


def _render(status: int, lang: str, title: str, **fields: Any) -> Response:
    other = "en" if lang == "zh" else "zh"
    args = {k: v for k, v in flask.request.args.items() if k not in ("lang", "token")}
    page = flask.render_template_string(
        _PAGE,
        html_lang="zh-CN" if lang == "zh" else "en",
        lang=lang,
        title=title,
        message=fields.pop("message", None),
        form=fields.pop("form", False),
        link=fields.pop("link", None),
        link_text=fields.pop("link_text", ""),
        username_label=t("username", lang),
        password_label=t("password", lang),
        submit=t("login_submit", lang),
        other_lang=t("language", lang),
        other_lang_url=flask.request.path + "?" + urlencode({**args, "lang": other}),
        **fields,
    )
    response = flask.make_response(page, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _message_page(status: int, lang: str, message: str) -> Response:
    return _render(
        status,
        lang,
        "mesflow",
        message=message,
        link=_login_url("/", lang),
        link_text=t("login_title", lang),
    )


def _throttled(lang: str, wait: float) -> Response:
    seconds = max(1, int(wait + 0.999))
    response = _render(
        429,
        lang,
        t("login_title", lang),
        message=t("login_throttled", lang).format(seconds=seconds),
    )
    response.headers["Retry-After"] = str(seconds)
    return response


def _login_form(
    status: int, lang: str, *, message: str | None = None, username: str = "", next_url: str = "/"
) -> Response:
    csrf = flask.session.get("csrf")
    if not isinstance(csrf, str):
        csrf = secrets.token_urlsafe(32)
        flask.session["csrf"] = csrf
    return _render(
        status,
        lang,
        t("login_title", lang),
        message=message,
        form=True,
        action=flask.url_for(LOGIN_ENDPOINT),
        csrf=csrf,
        next=next_url,
        username=username,
    )


def _login_view() -> Response:
    state = _state()
    request = flask.request
    lang = _lang(state)
    if request.method == "GET":
        return _login_form(200, lang, next_url=safe_next(request.args.get("next")))
    form = request.form
    next_url = safe_next(form.get("next"))
    username = form.get("username", "")[:200]
    sent, expected = form.get("csrf", ""), flask.session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
    ):
        return _login_form(
            400, lang, message=t("login_expired", lang), username=username, next_url=next_url
        )
    keys = (f"ip:{request.remote_addr}", f"user:{username.strip().casefold()[:64]}")
    wait = state.throttle.wait_s(*keys)
    if wait > 0:
        return _throttled(lang, wait)
    password = form.get("password", "")
    try:
        user = state.db.run(lambda conn: users.authenticate(conn, username, password))
    except psycopg.Error as err:
        log.warning("sign-in: database unreachable (%s)", err)
        return _login_form(
            503, lang, message=t("login_db_down", lang), username=username, next_url=next_url
        )
    if user is None:
        state.throttle.failure(*keys)
        log.info("sign-in failed for %r from %s", username[:64], request.remote_addr)
        return _login_form(
            401, lang, message=t("login_failed", lang), username=username, next_url=next_url
        )
    state.throttle.success(*keys)
    flask.session.clear()  # a new session id-less cookie: nothing of the anonymous one survives
    flask.session.update(kind="user", sub=user.username, role=user.role, epoch=user.session_epoch)
    flask.session.permanent = True
    log.info("signed in: %s (%s) from %s", user.username, user.role, request.remote_addr)
    return flask.redirect(next_url, code=303)


def _logout_view() -> Response:
    lang = _lang(_state())
    flask.session.clear()
    return flask.redirect(_login_url("/", lang), code=303)


def _forbidden_page(principal: Principal, required: str) -> Response:
    lang = _lang(_state())
    message = t("forbidden", lang).format(
        role=role_label(principal.role, lang), required=role_label(required, lang)
    )
    return _render(
        403,
        lang,
        "mesflow",
        message=message,
        link=flask.url_for(LOGOUT_ENDPOINT, lang=lang),
        link_text=t("switch_user", lang),
    )


# -- helpers ---------------------------------------------------------------------------------------


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not raw or len(raw) > 2000 or not raw.startswith("/") or raw.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x20 or c == "\x7f" for c in raw):
        return "/"
    return raw


def _here(request: flask.Request) -> str:
    query = request.query_string.decode("utf-8", "replace")
    return request.path + (f"?{query}" if query else "")


def _login_url(next_url: str, lang: str | None = None) -> str:
    params = {"next": next_url}
    if lang:
        params["lang"] = lang
    else:
        asked = flask.request.args.get("lang")
        if asked:
            params["lang"] = normalize_lang(asked)
    return flask.url_for(LOGIN_ENDPOINT) + "?" + urlencode(params)


def _json_error(status: int, message: str) -> Response:
    response = flask.make_response(json.dumps({"error": message}), status)
    response.headers["Content-Type"] = "application/json"
    response.headers["Cache-Control"] = "no-store"
    return response


def _headers(response: flask.Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if flask.request.endpoint == LOGIN_ENDPOINT:
        response.headers["X-Frame-Options"] = "DENY"  # no sign-in form inside another site
    return response


def declared_roles(app: dash.Dash) -> dict[str, str]:
    """Callback output -> role, for tests and docs."""
    return dict(_state(app.server).callback_roles)


def page_roles() -> dict[str, str]:
    """Page path -> role, for tests and docs."""
    return {page["path"]: page_role(page) for page in dash.page_registry.values()}
