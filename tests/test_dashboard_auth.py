"""Dashboard access control: every route and every callback, without and with each role.

Runs the real app (Flask test client over a real, migrated database) with a test-only page
that needs `manager`, so both sides of each role boundary are exercised. Also: sign-in,
CSRF, throttling, hostile form input, wall-screen tokens and their revocation, the proxy
header, the user commands, the production server's port handling and the bounded pool.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import dash
import psycopg
import psycopg_pool
import pytest
import waitress
from click.testing import CliRunner
from dash import ALL, ALLSMALLER, MATCH, Input, Output, State, html
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboards import auth, context
from dashboards.app import create_app, listen_error
from dashboards.queries import Database
from mesflow import users
from mesflow.cli import main as cli
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from tests.test_dashboard import sign_in

ROLES = users.ROLES
PASSWORD = "pw-for-tests-123"
SECRET = "test-secret-" + "y" * 32
MANAGER_PATH = "/manager-test"
MANAGER_MODULE = "tests.manager_test_page"
# A page whose buttons come and go: pattern-matching callbacks, role operator.
PATTERN_PATH = "/pattern-test"
PATTERN_MODULE = "tests.pattern_test_page"
PM_MATCH = '{"index":["MATCH"],"type":"pm-out"}.children'
PM_ALL = '..pm-total.children...{"index":["ALL"],"type":"pm-out"}.title..'


def _settings(**kw: Any) -> Settings:
    return Settings(auth_session_secret=SECRET, **kw)


@pytest.fixture
def app(db_url: str, plant: PlantConfig) -> Iterator[dash.Dash]:
    """The boards plus a page and a callback that need `manager`; one user per role."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for role in ROLES:
            users.add_user(conn, role, role, PASSWORD)
    built = create_app(_settings(), plant, db_url)
    dash.register_page(
        MANAGER_MODULE,
        path=MANAGER_PATH,
        name="Manager test",
        nav=False,
        min_role="manager",
        layout=lambda **_kw: html.Div(
            [html.Div("manager secret", id="mgr-secret"), html.Button(id="mgr-in")]
        ),
    )
    auth.callback(built, "manager", Output("mgr-secret", "children"), Input("mgr-in", "n_clicks"))(
        lambda n: f"clicked {n}"
    )
    _add_pattern_page(built)
    auth.check_declarations(built)
    try:
        yield built
    finally:
        dash.page_registry.pop(MANAGER_MODULE, None)
        dash.page_registry.pop(PATTERN_MODULE, None)
        context.of(built.server).db.close()


def _add_pattern_page(app: dash.Dash) -> None:
    """Buttons {"type": "pm-btn", "index": i}, each with its own output, and a total."""
    dash.register_page(
        PATTERN_MODULE,
        path=PATTERN_PATH,
        name="Pattern test",
        nav=False,
        min_role="operator",
        layout=lambda **_kw: html.Div(
            [
                html.H1("Buttons", id="pm-title"),
                html.Div(id="pm-total"),
                *[html.Button(id={"type": "pm-btn", "index": i}) for i in range(3)],
                *[html.Div(id={"type": "pm-out", "index": i}) for i in range(3)],
            ]
        ),
    )
    auth.callback(
        app,
        "operator",
        Output({"type": "pm-out", "index": MATCH}, "children"),
        Input({"type": "pm-btn", "index": MATCH}, "n_clicks"),
        Input({"type": "pm-btn", "index": ALLSMALLER}, "n_clicks"),
        State("pm-title", "children"),
    )(lambda n, smaller, title: f"{title}: clicked {n} after {len(smaller)}")

    def total(clicks: list[Any]) -> tuple[str, list[str]]:
        outs = dash.ctx.outputs_list[1]  # as many as the browser has, not as inputs
        return f"{len(clicks)} buttons", [f"of {len(clicks)}"] * len(outs)

    auth.callback(
        app,
        "operator",
        Output("pm-total", "children"),
        Output({"type": "pm-out", "index": ALL}, "title"),
        Input({"type": "pm-btn", "index": ALL}, "n_clicks"),
    )(total)


def _from_addr(app: dash.Dash, addr: str) -> Any:
    client = app.server.test_client()
    client.environ_base["REMOTE_ADDR"] = addr
    return client


def _client(app: dash.Dash, role: str | None) -> Any:
    client = app.server.test_client()
    if role is not None:
        response = sign_in(client, role, PASSWORD)
        assert response.status_code == 303, response.get_data(as_text=True)
    return client


# -- the route and callback matrix ------------------------------------------------------------


def _concrete(dep: dict[str, str], **extra: Any) -> Any:
    """What dash-renderer sends for a declared dependency: a pattern-matching id (a JSON
    string in /_dash-dependencies) becomes concrete ids, MATCH as index 1, ALL and
    ALLSMALLER as a list (ids 0 and 1)."""
    if not dep["id"].startswith("{"):
        return {**dep, **extra}
    pattern = json.loads(dep["id"])

    def with_index(i: int) -> dict[str, Any]:
        return {k: (i if isinstance(v, list) else v) for k, v in pattern.items()}

    if ["ALL"] in pattern.values() or ["ALLSMALLER"] in pattern.values():
        return [{"id": with_index(i), "property": dep["property"], **extra} for i in (0, 1)]
    return {"id": with_index(1), "property": dep["property"], **extra}


def _prop_id(item: dict[str, Any]) -> str:
    id_ = item["id"]
    text = id_ if isinstance(id_, str) else json.dumps(id_, sort_keys=True, separators=(",", ":"))
    return f"{text}.{item['property']}"


def _callback_body(dep: dict[str, Any], pathname: str = "/") -> dict[str, Any]:
    """A request like dash-renderer's for one callback from /_dash-dependencies."""
    output = dep["output"]
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    outputs = [
        _concrete(dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))) for p in parts
    ]

    def value(item: dict[str, str]) -> Any:
        return {"pathname": pathname, "search": ""}.get(item["property"])

    inputs = [_concrete(i, value=value(i)) for i in dep["inputs"]]
    return {
        "output": output,
        "outputs": outputs if len(outputs) > 1 or output.startswith("..") else outputs[0],
        "inputs": inputs,
        "state": [_concrete(s, value=None) for s in dep["state"]],
        "changedPropIds": [_prop_id(i) for i in inputs if isinstance(i, dict)],
    }


def _cases(app: dash.Dash) -> list[tuple[str, str, str, dict[str, Any] | None, str]]:
    """(label, method, path, json body, role needed) for every route and server callback."""
    admin = _client(app, "admin")
    index = admin.get("/").get_data(as_text=True)
    suites = re.findall(r'src="(/_dash-component-suites/[^"]+)"', index)
    css = re.findall(r'href="(/assets/[^"]+)"', index)
    assert suites and css, index
    deps = admin.get("/_dash-dependencies").get_json()
    server_side = [d for d in deps if not d.get("clientside_function")]
    # Every callback the app would run is in the matrix, router included.
    assert {d["output"] for d in server_side} == {
        k for k, v in app.callback_map.items() if v.get("callback") is not None
    }
    cases: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
        ("page /", "GET", "/", None, "viewer"),
        ("page /andon", "GET", "/andon?lang=en", None, "viewer"),
        ("page unknown (404 page)", "GET", "/no-such-page", None, "viewer"),
        ("page manager", "GET", MANAGER_PATH, None, "manager"),
        ("layout", "GET", "/_dash-layout", None, "viewer"),
        ("dependencies", "GET", "/_dash-dependencies", None, "viewer"),
        ("reload hash", "GET", "/_reload-hash", None, "viewer"),
        ("favicon", "GET", "/_favicon.ico", None, "viewer"),
        ("flask static", "GET", "/static/nothing.js", None, "viewer"),
        ("asset css", "GET", css[0], None, "viewer"),
        *[(f"script {p}", "GET", p, None, "viewer") for p in suites[:3]],
        (
            "unknown callback",
            "POST",
            "/_dash-update-component",
            {"output": "nope.children", "inputs": []},
            "refused",
        ),
    ]
    for dep in server_side:
        if dep["output"] == auth.ROUTER_OUTPUT:
            for path, role in (("/andon", "viewer"), (MANAGER_PATH, "manager"), ("/x", "viewer")):
                body = _callback_body(dep, path)
                cases.append((f"router {path}", "POST", "/_dash-update-component", body, role))
        else:
            role = auth.declared_roles(app)[dep["output"]]
            body = _callback_body(dep)
            cases.append(
                (f"callback {dep['output']}", "POST", "/_dash-update-component", body, role)
            )
    # Every route of the app is in the matrix: a route added later without a case fails here.
    adapter = app.server.url_map.bind("localhost")
    covered = {adapter.match(path.split("?")[0], method)[0] for _l, method, path, _b, _r in cases}
    covered |= {auth.LOGIN_ENDPOINT, auth.LOGOUT_ENDPOINT}  # tested on their own below
    covered |= {auth.ACK_ENDPOINT}  # open by design (a signed link): tests/test_alerts_board.py
    covered |= {auth.CUSTOMER_ENDPOINT}  # open by design (/c/<token>): tests/test_customer_link.py
    assert {rule.endpoint for rule in app.server.url_map.iter_rules()} <= covered
    return cases


@pytest.mark.parametrize("role", [None, *ROLES])
def test_every_route_and_callback_checks_the_role(app: dash.Dash, role: str | None) -> None:
    cases = _cases(app)
    client = _client(app, role)
    failures = []
    for label, method, path, body, needed in cases:
        response = client.open(path, method=method, json=body)
        status = response.status_code
        is_page = label.startswith("page")
        if role is None:
            ok = (
                status == 302 and response.headers["Location"].startswith("/login?next=")
                if is_page
                else status == 401
            )
        elif needed == "refused" or not users.has_role(role, needed):
            ok = status == 403
        else:
            ok = status not in (302, 401, 403) and status < 500
            if is_page or label.startswith(("callback", "router")):
                ok = ok and status == 200
            if label == "page manager" or label == f"router {MANAGER_PATH}":
                ok = ok and "manager secret" in response.get_data(as_text=True)
        if not ok:
            failures.append((label, needed, status))
    assert not failures, f"role {role}: {failures}"


def test_callbacks_check_the_role_themselves(app: dash.Dash) -> None:
    """With the route gate removed, a callback still refuses a lower role."""
    funcs = app.server.before_request_funcs[None]
    funcs.remove(auth._gate)

    def no_principal() -> None:
        __import__("flask").g.mesflow_principal = None

    funcs.append(no_principal)
    dep = next(
        d for d in _deps(app) if d["output"] == "mgr-secret.children"
    )  # the manager callback
    client = app.server.test_client()
    assert client.post("/_dash-update-component", json=_callback_body(dep)).status_code == 403


def _deps(app: dash.Dash) -> list[dict[str, Any]]:
    return list(_client(app, "admin").get("/_dash-dependencies").get_json())


def test_undeclared_roles_are_refused_at_start(app: dash.Dash) -> None:
    app.callback(Output("mgr-in", "children"), Input("mgr-in", "n_clicks"))(lambda n: n)
    with pytest.raises(RuntimeError, match="callbacks without a role"):
        auth.check_declarations(app)
    dash.register_page("tests.no_role_page", path="/no-role", layout=html.Div())
    try:
        with pytest.raises(RuntimeError, match="declares no valid min_role"):
            auth.check_declarations(app)
    finally:
        dash.page_registry.pop("tests.no_role_page", None)


# -- pattern-matching callbacks ----------------------------------------------------------------


def _btn(index: int, clicks: Any = None) -> dict[str, Any]:
    return {"id": {"index": index, "type": "pm-btn"}, "property": "n_clicks", "value": clicks}


def _match_body() -> dict[str, Any]:
    """Literally what dash-renderer 4.4 posts when button 2 is clicked (ids are objects, an
    ALLSMALLER input is a list; see fillVals/unwrapIfNotMulti and the payload in
    dash-renderer's callbacks code)."""
    return {
        "output": PM_MATCH,
        "outputs": {"id": {"index": 2, "type": "pm-out"}, "property": "children"},
        "inputs": [_btn(2, 3), [_btn(0, 1), _btn(1)]],
        "changedPropIds": ['{"index":2,"type":"pm-btn"}.n_clicks'],
        "parsedChangedPropsIds": [{"index": 2, "type": "pm-btn"}],
        "state": [{"id": "pm-title", "property": "children", "value": "Buttons"}],
    }


def _all_body() -> dict[str, Any]:
    """Multi-output with an ALL output: `outputs` holds a dict and a list; no state key."""
    return {
        "output": PM_ALL,
        "outputs": [
            {"id": "pm-total", "property": "children"},
            [{"id": {"index": i, "type": "pm-out"}, "property": "title"} for i in range(3)],
        ],
        "inputs": [[_btn(0, 1), _btn(1), _btn(2, 3)]],
        "changedPropIds": ['{"index":0,"type":"pm-btn"}.n_clicks'],
        "parsedChangedPropsIds": [{"index": 0, "type": "pm-btn"}],
    }


def test_pattern_matching_callbacks_pass_the_gate_with_the_role(app: dash.Dash) -> None:
    """MATCH/ALLSMALLER and ALL callbacks through Dash's real endpoint: run for the page's
    role and above, 403 below it, 401 without a session."""
    url = "/_dash-update-component"
    for role in ("operator", "admin"):
        client = _client(app, role)
        assert client.get(PATTERN_PATH).status_code == 200
        match = client.post(url, json=_match_body())
        assert match.status_code == 200, match.get_data(as_text=True)
        assert match.get_json()["response"] == {
            '{"index":2,"type":"pm-out"}': {"children": "Buttons: clicked 3 after 2"}
        }
        total = client.post(url, json=_all_body())
        assert total.status_code == 200, total.get_data(as_text=True)
        response = total.get_json()["response"]
        assert response["pm-total"] == {"children": "3 buttons"}
        assert response['{"index":1,"type":"pm-out"}'] == {"title": "of 3"}
    viewer = _client(app, "viewer")
    assert viewer.get(PATTERN_PATH).status_code == 403
    anonymous = app.server.test_client()
    for body in (_match_body(), _all_body()):
        assert viewer.post(url, json=body).status_code == 403
        assert anonymous.post(url, json=body).status_code == 401
    # The gate is what refuses them, not only the callback: its own check comes second.
    assert viewer.post(url, json=_match_body()).get_json() == {"error": "needs role operator"}


def _malformed() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []

    def case(label: str, base: dict[str, Any], change: Any) -> None:
        body = json.loads(json.dumps(base))
        change(body)
        cases.append((label, body))

    m, a = _match_body(), _all_body()
    case("MATCH input as a list", m, lambda b: b["inputs"].__setitem__(0, [_btn(2)]))
    case("ALLSMALLER input as one", m, lambda b: b["inputs"].__setitem__(1, _btn(0)))
    case("ALL input as one", a, lambda b: b["inputs"].__setitem__(0, _btn(0)))
    case("ALL list holding a string", a, lambda b: b["inputs"][0].append("x"))
    case("ALL output as one", a, lambda b: b["outputs"].__setitem__(1, b["outputs"][1][0]))
    case("two MATCH values", m, lambda b: b["inputs"][0]["id"].__setitem__("index", 1))
    case("pattern sent as id", m, lambda b: b["inputs"][0]["id"].__setitem__("index", ["MATCH"]))
    case("wildcard value a dict", m, lambda b: b["outputs"]["id"].__setitem__("index", {}))
    case("other id type", m, lambda b: b["inputs"][0]["id"].__setitem__("type", "other"))
    case("extra id key", m, lambda b: b["inputs"][0]["id"].__setitem__("x", 1))
    case("id a string", m, lambda b: b["inputs"][0].__setitem__("id", "pm-btn"))
    case("other property", m, lambda b: b["inputs"][0].__setitem__("property", "value"))
    case("input missing", m, lambda b: b["inputs"].pop())
    case("other state id", m, lambda b: b["state"][0].__setitem__("id", "mgr-secret"))
    case("state missing", m, lambda b: b.pop("state"))
    case("outputs missing", a, lambda b: b.pop("outputs"))
    case("changedPropIds a number", m, lambda b: b.__setitem__("changedPropIds", 7))
    case("changedPropIds holding a list", a, lambda b: b["changedPropIds"].append([1]))
    return cases


def test_malformed_pattern_matching_requests_are_400(app: dash.Dash) -> None:
    client = _client(app, "operator")
    failures = []
    for label, body in _malformed():
        response = client.post("/_dash-update-component", json=body)
        if response.status_code != 400:
            failures.append((label, response.status_code))
    assert not failures, failures


# -- sign-in ----------------------------------------------------------------------------------


def test_sign_in_sets_a_safe_cookie_and_goes_back(app: dash.Dash) -> None:
    client = app.server.test_client()
    first = client.get("/andon?lang=en")
    assert first.status_code == 302
    login_url = first.headers["Location"]
    assert login_url == "/login?next=%2Fandon%3Flang%3Den&lang=en"
    page = client.get(login_url).get_data(as_text=True)
    assert "Sign in" in page and 'name="next" value="/andon?lang=en"' in page
    done = sign_in(client, "viewer", PASSWORD, next_url="/andon?lang=en")
    assert done.status_code == 303 and done.headers["Location"] == "/andon?lang=en"
    cookie = done.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "mesflow_session=" in cookie
    assert client.get("/andon?lang=en").status_code == 200
    router = next(d for d in _deps(app) if d["output"] == auth.ROUTER_OUTPUT)
    board = client.post("/_dash-update-component", json=_callback_body(router, "/andon"))
    assert "logout?lang=zh" in board.get_data(as_text=True)  # a person can sign out
    assert client.get("/logout").status_code == 303
    assert client.get("/andon").status_code == 302


def test_login_page_in_chinese_by_default(app: dash.Dash) -> None:
    page = app.server.test_client().get("/login").get_data(as_text=True)
    assert "用户名" in page and "密码" in page and 'lang="zh-CN"' in page


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "/"),
        ("/andon?lang=en", "/andon?lang=en"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/a\r\nSet-Cookie: x=1", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_next_stays_on_this_server(raw: str | None, expected: str) -> None:
    assert auth.safe_next(raw) == expected


def test_wrong_password_csrf_and_open_redirect(app: dash.Dash) -> None:
    client = app.server.test_client()
    assert sign_in(client, "viewer", "wrong-password").status_code == 401
    assert sign_in(client, "nobody", PASSWORD).status_code == 401
    # No CSRF token, or someone else's: refused before the password is looked at.
    assert (
        client.post("/login", data={"username": "viewer", "password": PASSWORD}).status_code == 400
    )
    other = app.server.test_client()
    token = re.search(r'name="csrf" value="([^"]+)"', other.get("/login").get_data(as_text=True))
    assert token is not None
    forged = {"username": "viewer", "password": PASSWORD, "csrf": token.group(1)}
    assert client.post("/login", data=forged).status_code == 400
    # A `next` off this server lands on "/".
    done = sign_in(client, "viewer", PASSWORD, next_url="https://evil.example/x")
    assert done.status_code == 303 and done.headers["Location"] == "/"


def test_repeated_failures_slow_down_and_a_success_clears(app: dash.Dash) -> None:
    client = app.server.test_client()
    statuses = [sign_in(client, "operator", "wrong-password").status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]  # five free tries, then a wait
    blocked = sign_in(client, "operator", PASSWORD)  # the right password, too soon
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    # The same name from another address is slowed down too (the key is the name as well).
    elsewhere = _from_addr(app, "10.7.7.7")
    assert sign_in(elsewhere, "operator", PASSWORD).status_code == 429


def test_throttle_doubles_and_is_bounded() -> None:
    now = [0.0]
    throttle = auth.LoginThrottle(free=2, base_s=1.0, cap_s=8.0, max_keys=3, clock=lambda: now[0])
    waits = []
    for _ in range(7):
        throttle.failure("user:a")
        waits.append(throttle.wait_s("user:a"))
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    now[0] += 8.0
    assert throttle.wait_s("user:a") == 0.0
    throttle.success("user:a")
    throttle.failure("user:a")
    assert throttle.wait_s("user:a") == 0.0
    for key in ("b", "c", "d", "e"):
        throttle.failure(key)
    assert len(throttle._keys) == 3  # oldest forgotten first


_hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "' OR 1=1 --",
            "admin'; DROP TABLE dashboard_user; --",
            "\x00",
            "admin\x00",
            "张三",
            "‮admin",
            "a" * 70_000,
            "%00",
            "{{7*7}}",
            "<script>alert(1)</script>",
        ]
    ),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(username=_hostile_text, password=_hostile_text)
def test_hostile_login_input_never_fails(app: dash.Dash, username: str, password: str) -> None:
    # A fresh address per example, so the throttle does not hide the login path behind 429.
    ip = f"10.{len(username) % 250}.{len(password) % 250}.{time.monotonic_ns() % 250}"
    client = _from_addr(app, ip)
    response = sign_in(client, username, password)
    assert response.status_code in (400, 401, 413, 429), response.status_code
    body = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body  # escaped where echoed
    if response.status_code == 401 and username == "{{7*7}}":
        assert 'value="{{7*7}}"' in body  # echoed as text, never evaluated as a template


def test_malformed_login_bodies(app: dash.Dash) -> None:
    client = app.server.test_client()
    raw = [
        b"username=%ff%fe%ed%a0%80&password=%00%00&csrf=%ff",  # invalid UTF-8, lone surrogate
        b"username=" + b"a" * (2 << 20),  # larger than any form: 413
        b"\x00\x01\x02",
        b"username[]=a&username[]=b&password=x&password=y",
    ]
    for body in raw:
        response = client.post(
            "/login", data=body, content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code in (400, 401, 413), (body[:40], response.status_code)
    assert client.post("/login", data=b"{}", content_type="application/json").status_code == 400
    # An oversized callback request is refused before Dash reads it.
    viewer = _client(app, "viewer")
    big = viewer.post(
        "/_dash-update-component", data=b"x" * (2 << 20), content_type="application/json"
    )
    assert big.status_code == 413


# -- stored secrets, session invalidation -------------------------------------------------------


def test_passwords_and_tokens_are_stored_hashed(app: dash.Dash, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _row, token = users.create_token(conn, "hall-1")
        stored = conn.execute("SELECT password_hash FROM dashboard_user").fetchall()
        tokens = conn.execute("SELECT token_sha256 FROM dashboard_token").fetchall()
    assert len(stored) == 4
    hashes = [h for (h,) in stored]
    assert all(h.startswith("scrypt:") and PASSWORD not in h for h in hashes)
    assert len(set(hashes)) == 4  # salted: the same password hashes differently per user
    assert tokens == [(users.hash_token(token),)] and token not in tokens[0][0]


def test_password_change_role_change_and_removal_end_sessions(app: dash.Dash, db_url: str) -> None:
    sessions = {name: _client(app, name) for name in ("operator", "manager", "admin")}
    for client in sessions.values():
        assert client.get("/_dash-layout").status_code == 200
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.set_password(conn, "operator", "a-new-password")
        users.set_role(conn, "manager", "viewer")
        users.remove_user(conn, "admin")
    for client in sessions.values():
        assert client.get("/_dash-layout").status_code == 401
    demoted = _client(app, "manager")  # signs in again, now as a viewer
    assert demoted.get(MANAGER_PATH).status_code == 403
    assert "查看者" in demoted.get(MANAGER_PATH).get_data(as_text=True)  # "your role: viewer"


# -- wall-screen tokens --------------------------------------------------------------------------


def test_token_url_opens_a_viewer_session_until_revoked(app: dash.Dash, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row, token = users.create_token(conn, "hall-2-tv")
    tv = app.server.test_client()
    first = tv.get(f"/andon?token={token}&lang=en")
    # The token leaves the address bar: the session cookie carries on.
    assert first.status_code == 302 and first.headers["Location"] == "/andon?lang=en"
    assert tv.get("/andon?lang=en").status_code == 200
    andon = next(d for d in _deps(app) if "andon-board" in d["output"])
    assert tv.post("/_dash-update-component", json=_callback_body(andon)).status_code == 200
    assert tv.get(MANAGER_PATH).status_code == 403  # read-only: viewer pages only
    router = next(d for d in _deps(app) if d["output"] == auth.ROUTER_OUTPUT)
    board = tv.post("/_dash-update-component", json=_callback_body(router, "/andon"))
    assert board.status_code == 200 and "logout?lang" not in board.get_data(as_text=True)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT last_used_at IS NOT NULL FROM dashboard_token WHERE id = %s", (row.id,)
        ).fetchone() == (True,)
        assert users.revoke_token(conn, "hall-2-tv") == 1
    assert tv.post("/_dash-update-component", json=_callback_body(andon)).status_code == 401
    assert tv.get("/andon").status_code == 302
    again = app.server.test_client().get(f"/andon?token={token}&lang=en")
    assert again.status_code == 401 and "revoked" in again.get_data(as_text=True)
    assert app.server.test_client().get("/andon?token=mft_guess").status_code == 401


# -- trusted proxy header ------------------------------------------------------------------------


def test_proxy_header_only_from_trusted_addresses(db_url: str, plant: PlantConfig) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.add_user(conn, "alice", "viewer", None)  # no password: proxy only
    app = create_app(
        _settings(auth_proxy_header="X-Remote-User", auth_trusted_proxies="10.1.0.0/16"),
        plant,
        db_url,
    )
    try:
        proxy = _from_addr(app, "10.1.2.3")
        stranger = _from_addr(app, "10.2.0.1")
        header = {"X-Remote-User": "alice"}
        assert proxy.get("/andon", headers=header).status_code == 200
        assert proxy.get("/_dash-layout", headers=header).status_code == 200
        assert proxy.get("/andon", headers={"X-Remote-User": "mallory"}).status_code == 302
        assert proxy.get("/andon").status_code == 302  # no header, no session
        assert stranger.get("/andon", headers=header).status_code == 302  # header ignored
        assert stranger.get("/_dash-layout", headers=header).status_code == 401
        # A proxy-only user has no password that works.
        assert sign_in(stranger, "alice", "").status_code == 401
    finally:
        context.of(app.server).db.close()


def test_bad_trusted_proxy_setting_is_an_error(plant: PlantConfig) -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        create_app(_settings(auth_trusted_proxies="10.0.0.1, not-an-ip"), plant, "postgresql:///x")


# -- user and token commands ---------------------------------------------------------------------


def test_user_and_token_commands(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESFLOW_DATABASE_URL", db_url)
    run = CliRunner().invoke
    added = run(
        cli, ["user", "add", "wang", "--role", "manager", "--password-stdin"], input="s3cret-pass\n"
    )
    assert added.exit_code == 0 and "role manager" in added.output, added.output
    assert run(cli, ["user", "add", "wang", "--role", "viewer", "--generate"]).exit_code == 1
    gen = run(cli, ["user", "add", "li", "--role", "viewer", "--generate"])
    password = re.search(r"password: (\S+)", gen.output)
    assert gen.exit_code == 0 and password
    listed = run(cli, ["user", "list"]).output
    assert "wang" in listed and "manager" in listed and "s3cret" not in listed
    with psycopg.connect(db_url) as conn:
        assert users.authenticate(conn, "wang", "s3cret-pass") is not None
        assert users.authenticate(conn, "li", password.group(1)) is not None
    assert run(cli, ["user", "passwd", "wang", "--password-stdin"], input="short\n").exit_code == 1
    assert (
        run(cli, ["user", "passwd", "wang", "--password-stdin"], input="another-pass\n").exit_code
        == 0
    )
    assert run(cli, ["user", "role", "wang", "admin"]).exit_code == 0
    assert run(cli, ["user", "add", "bad name", "--role", "viewer", "--generate"]).exit_code == 1
    assert run(cli, ["user", "remove", "li"]).exit_code == 0
    assert run(cli, ["user", "remove", "li"]).exit_code == 1
    created = run(cli, ["token", "create", "hall-3", "--base-url", "http://mes.local:8050"])
    url = re.search(
        r"wall-screen URL: (http://mes\.local:8050/andon\?token=mft_\S+)", created.output
    )
    assert created.exit_code == 0 and url, created.output
    listed = run(cli, ["token", "list"]).output
    assert "hall-3" in listed and "live" in listed and "mft_" not in listed
    assert run(cli, ["token", "revoke", "hall-3"]).exit_code == 0
    assert "revoked" in run(cli, ["token", "list"]).output
    assert run(cli, ["token", "revoke", "hall-3"]).exit_code == 1


def test_user_command_with_database_down(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MESFLOW_DATABASE_URL", f"postgresql://x@127.0.0.1:{port}/x")
    result = CliRunner().invoke(cli, ["user", "list"])
    assert result.exit_code == 1
    assert "cannot reach the database at postgresql://x@127.0.0.1" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_demo_logins_are_stable_and_work(app: dash.Dash, db_url: str, tmp_path: Any) -> None:
    first = users.demo_logins(db_url, tmp_path)
    again = users.demo_logins(db_url, tmp_path)
    assert first == again  # a restarted demo keeps its logins (browsers stay signed in)
    assert oct((tmp_path / "demo-logins.json").stat().st_mode & 0o777) == "0o600"
    assert sign_in(app.server.test_client(), "admin", first.password).status_code == 303
    assert app.server.test_client().get(f"/andon?token={first.token}").status_code == 302


# -- serving -------------------------------------------------------------------------------------


def test_restart_keeps_its_port_with_connections_in_time_wait(
    db_url: str, plant: PlantConfig
) -> None:
    app = create_app(_settings(), plant, db_url)
    try:
        server = waitress.create_server(app.server, host="127.0.0.1", port=0, threads=2)
        port = int(server.effective_port)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        # The server closes the connection first, so its side lingers in TIME_WAIT.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while conn.recv(65536):
                pass
        server.close()
        thread.join(5)
        time_wait = subprocess.run(
            ["ss", "-tan", "state", "time-wait", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
        ).stdout
        assert f":{port}" in time_wait, time_wait
        # A plain bind (what the old free_port did) fails now...
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        # ...the dashboard's server binds the same port again.
        again = waitress.create_server(app.server, host="127.0.0.1", port=port, threads=2)
        assert int(again.effective_port) == port
        again.close()
    finally:
        context.of(app.server).db.close()


def test_a_port_really_taken_is_one_clear_error(db_url: str, tmp_path: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            **os.environ,
            "MESFLOW_DATABASE_URL": db_url,
            "MESFLOW_HTTP_PORT": str(port),
            "MESFLOW_DATA_DIR": str(tmp_path),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "mesflow.cli", "run", "dashboard"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"mesflow dashboard: port {port} on 127.0.0.1 is already in use by another program"
        f" (is a dashboard still running? `ss -ltnp 'sport = :{port}'` shows which); stop it"
        " or set MESFLOW_HTTP_PORT"
    ], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_listen_error_messages() -> None:
    import errno

    assert "not an address" in listen_error("10.9.9.9", 80, OSError(errno.EADDRNOTAVAIL, "x"))
    assert "permission" in listen_error("0.0.0.0", 80, OSError(errno.EACCES, "x"))


def test_dashboard_serves_and_stops_cleanly_on_sigterm(db_url: str, tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MESFLOW_DATABASE_URL": db_url,
        "MESFLOW_HTTP_PORT": str(port),
        "MESFLOW_DATA_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesflow.cli", "run", "dashboard"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"GET /andon HTTP/1.0\r\n\r\n")
                    reply = b"".join(iter(lambda: conn.recv(4096), b"")).decode()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert reply.startswith("HTTP/1.0 302") and "Server: mesflow" in reply, reply
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "no users yet, nobody can sign in" in out  # a fresh database has no users
    assert (tmp_path / "dashboard-session.key").stat().st_mode & 0o077 == 0


# -- bounded pool --------------------------------------------------------------------------------


def test_pool_never_opens_more_than_its_maximum(db_url: str) -> None:
    db = Database(db_url, max_size=2, timeout=10)
    seen: list[int] = []

    def count(conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_sleep(0.2)")
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mesflow-dashboard'"
        ).fetchone()
        assert row is not None
        seen.append(int(row[0]))

    try:
        threads = [threading.Thread(target=db.run, args=(count,)) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert len(seen) == 8 and max(seen) <= 2
        # All busy for longer than the timeout: a clear pool error, not a new connection.
        short = Database(db_url, max_size=1, timeout=0.3)
        try:
            hold = threading.Thread(
                target=short.run, args=(lambda c: c.execute("SELECT pg_sleep(1)"),)
            )
            hold.start()
            time.sleep(0.2)
            with pytest.raises(psycopg_pool.PoolTimeout):
                short.run(lambda c: c.execute("SELECT 1"))
            hold.join(5)
        finally:
            short.close()
    finally:
        db.close()


def test_session_key_is_kept_or_falls_back(tmp_path: Any) -> None:
    kept = Settings(data_dir=tmp_path / "var")
    assert auth.session_secret(kept) == auth.session_secret(kept)  # restarts keep sessions
    assert (tmp_path / "var" / "dashboard-session.key").stat().st_mode & 0o077 == 0
    (tmp_path / "file").write_text("not a directory")
    unwritable = Settings(data_dir=tmp_path / "file" / "var")
    assert len(auth.session_secret(unwritable)) == 64  # a key for this run, and a warning
    assert auth.session_secret(Settings(auth_session_secret="given")) == "given"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_hostile_callback_requests_never_fail(app: dash.Dash, data: st.DataObject) -> None:
    """A signed-in client sending any shape or value to any callback: 200, 204 or 400."""
    client = _signed_in_viewer(app)
    deps = [d for d in _deps_cached(app) if not d.get("clientside_function")]
    dep = data.draw(st.sampled_from(deps))
    body: Any = _callback_body(dep, "/andon")  # any JSON after a mutation
    mutation = data.draw(st.sampled_from(["values", "inputs", "outputs", "state", "body"]))
    if mutation == "values":
        for entry in body["inputs"] + body["state"]:
            for item in entry if isinstance(entry, list) else [entry]:  # ALL: a list
                item["value"] = data.draw(_json)
    elif mutation == "body":
        body = data.draw(_json)
    else:
        body[mutation] = data.draw(_json)
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code in (200, 204, 400, 403), (body, response.status_code)


@pytest.mark.parametrize("pathname", ["", "andon", "orders/SO-1", None])
def test_router_requests_without_a_browser_pathname_are_400(app: dash.Dash, pathname: Any) -> None:
    # Found by the fuzz test above: an empty pathname made Dash's path_template matching
    # (used by /orders/<order_no>) answer 500. A browser's pathname always starts with "/".
    client = _signed_in_viewer(app)
    router = next(d for d in _deps_cached(app) if "_pages_content" in d["output"])
    body = _callback_body(router, "/andon")
    for item in body["inputs"]:
        if item["property"] == "pathname":
            item["value"] = pathname
    assert client.post("/_dash-update-component", json=body).status_code == 400
    body = _callback_body(router, "/andon")
    assert client.post("/_dash-update-component", json=body).status_code == 200


_CACHE: dict[int, Any] = {}  # id(app) -> signed-in viewer client: one sign-in per app


def _signed_in_viewer(app: dash.Dash) -> Any:
    if id(app) not in _CACHE:
        _CACHE.clear()
        _CACHE[id(app)] = _client(app, "viewer")
    return _CACHE[id(app)]


def _deps_cached(app: dash.Dash) -> list[dict[str, Any]]:
    return list(_signed_in_viewer(app).get("/_dash-dependencies").get_json())


def test_user_store_refuses_bad_text_without_crashing(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for name, password in [("\ud800", "\udc80"), ("a\x00b", "x"), ("ok", "\x00" * 5000)]:
            assert users.authenticate(conn, name, password) is None
        for bad in ["a b", "x" * 65, "", "\ud800", "a\x00"]:
            with pytest.raises(users.UserError):
                users.add_user(conn, bad, "viewer", "long-enough-pw")
        for pw in ["short", "a" * 1025, "long-enough\x00", "long-enough\udc80"]:
            with pytest.raises(users.UserError):
                users.add_user(conn, "fine", "viewer", pw)
        with pytest.raises(users.UserError):
            users.add_user(conn, "fine", "superuser", "long-enough-pw")
        assert users.add_user(conn, " 张伟 ", "viewer", "long-enough-pw").username == "张伟"
        assert users.authenticate(conn, "张伟", "long-enough-pw") is not None


def test_database_down_keeps_signed_sessions_without_waiting(plant: PlantConfig) -> None:
    """Signed cookies are believed while the database is away, and requests do not queue."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(_settings(), plant, f"postgresql://x@127.0.0.1:{port}/x")
    try:
        serializer = app.server.session_interface.get_signing_serializer(app.server)
        cookie = serializer.dumps({"kind": "token", "sub": "1", "name": "tv", "role": "viewer"})
        tv = app.server.test_client()
        tv.set_cookie("mesflow_session", cookie)
        started = time.monotonic()
        assert tv.get("/_dash-layout").status_code == 200
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(5):
            assert tv.get("/_dash-layout").status_code == 200
        assert first < auth.SESSION_CHECK_TIMEOUT_S + 3 and time.monotonic() - started < 0.5
        assert app.server.test_client().get("/_dash-layout").status_code == 401  # no cookie
        forged = app.server.test_client()
        forged.set_cookie("mesflow_session", cookie[:-3] + "abc")  # not our signature
        assert forged.get("/_dash-layout").status_code == 401
    finally:
        context.of(app.server).db.close()
