"""The customer's view (issue 12, item 6): /c/<token> shows one order and nothing else.

The plant is test_traceability's seeded plant (two orders, SO-A of ACME and SO-B of Beta,
run through the real dataflow, so order_progress and the CRM callbacks are real).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dashboards.app import create_app as create_board
from mesflow import customer_links as cl
from mesflow.cli import main
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from tests.test_traceability import api, seed  # noqa: F401  (api: a fixture)

SECRET = "s" * 40
# What SO-B's page must never show of SO-A, and the reverse; and what no page shows.
PRIVATE = ["ACME", "Beta", "IM-01", "IM-02", "WO-A1", "WO-B1", "wang", "zhao", "li<", "RESIN"]


@pytest.fixture
def plant_db(api: TestClient, db_url: str, plant: PlantConfig, tmp_path: Path) -> str:  # noqa: F811
    seed(api, db_url, plant, tmp_path / "rec")
    return db_url


@pytest.fixture
def board(plant_db: str, plant: PlantConfig) -> Iterator[Any]:
    app = create_board(Settings(auth_session_secret=SECRET), plant, plant_db)
    yield app.server.test_client()


def make(db_url: str, order_no: str, lang: str = "en", **kw: Any) -> tuple[cl.CustomerLink, str]:
    with psycopg.connect(db_url) as conn:
        return cl.create(conn, order_no, "mgr", kw.pop("days", 30), lang, **kw)


def body(resp: Any) -> str:
    return str(resp.get_data(as_text=True))


def test_a_link_shows_its_order_and_nothing_else(board: Any, plant_db: str) -> None:
    _, token_a = make(plant_db, "SO-A", "en")
    _, token_b = make(plant_db, "SO-B", "zh")
    a = board.get(f"/c/{token_a}")
    assert a.status_code == 200
    html = body(a)
    assert "SO-A" in html and "Order progress" in html
    assert "SO-B" not in html
    for word in PRIVATE:
        assert word not in html, word
    # Its figures: 1000 ordered, 200 good (60 + 140 counted on IM-01), so 20 %.
    assert "1,000" in html and ">200<" in html and 'aria-valuenow="20"' in html
    assert "Production started" in html  # the work_started callback
    assert a.headers["Cache-Control"] == "no-store"
    assert a.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in html.lower()  # a plain page, no app
    assert 'href="/' not in html  # no way into the app
    b = board.get(f"/c/{token_b}")
    html_b = body(b)
    assert b.status_code == 200 and "SO-B" in html_b and "订单生产进度" in html_b
    assert "SO-A" not in html_b
    for word in PRIVATE:
        assert word not in html_b, word


def test_revoked_and_expired_links_show_nothing(board: Any, plant_db: str) -> None:
    link, token = make(plant_db, "SO-A")
    assert board.get(f"/c/{token}").status_code == 200
    with psycopg.connect(plant_db) as conn:
        assert not cl.revoke(conn, link.id, "mgr", order_no="SO-B")  # another order's link id
        assert cl.revoke(conn, link.id, "mgr", order_no="SO-A")
        assert not cl.revoke(conn, link.id, "mgr")  # once
    gone = board.get(f"/c/{token}")
    assert gone.status_code == 410
    assert "SO-A" not in body(gone) and "no longer valid" in body(gone)
    assert gone.headers["Cache-Control"] == "no-store"
    # Expired: made 31 days ago for 30 days.
    _, old = make(plant_db, "SO-A", now=datetime.now(UTC) - timedelta(days=31))
    expired = board.get(f"/c/{old}")
    assert expired.status_code == 410 and "SO-A" not in body(expired)


def test_forged_or_damaged_tokens_are_404(board: Any, plant_db: str) -> None:
    _, token = make(plant_db, "SO-A")
    forged = cl.new_token()
    for path in (
        f"/c/{forged}",
        f"/c/{token[:-1]}",  # truncated
        f"/c/{token}x",
        f"/c/{token}/more",
        f"/c/{token[:-1]}%00",
        "/c/",
        "/c/" + "A" * 5000,
        "/c/%F0%9F%98%80",
        "/c/' OR 1=1 --",
    ):
        resp = board.get(path)
        assert resp.status_code == 404, path
        assert "SO-A" not in body(resp) and "Traceback" not in body(resp)
        assert resp.headers["Cache-Control"] == "no-store"


def test_only_a_hash_is_stored_and_the_token_is_never_logged(
    board: Any, plant_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link, token = make(plant_db, "SO-A")
    with psycopg.connect(plant_db) as conn:
        row = conn.execute(
            "SELECT customer_link::text, token_hash FROM customer_link WHERE id = %s", (link.id,)
        ).fetchone()
    assert row is not None
    assert token not in row[0]
    assert bytes(row[1]) == hashlib.sha256(token.encode()).digest()
    board.get(f"/c/{token}")
    with psycopg.connect(plant_db) as conn:
        cl.revoke(conn, link.id, "mgr")
    board.get(f"/c/{token}")
    assert token not in caplog.text


def test_the_cli_creates_lists_and_revokes(
    board: Any, plant_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESFLOW_DATABASE_URL", plant_db)
    runner = CliRunner()
    out = runner.invoke(main, ["customer-link", "create", "SO-1-missing", "--days", "30"])
    assert out.exit_code != 0 and "unknown_order" in out.output
    out = runner.invoke(main, ["customer-link", "create", "SO-B", "--days", "30", "--lang", "en"])
    assert out.exit_code == 0, out.output
    token = re.search(r"/c/([A-Za-z0-9_-]{43})$", out.output.strip())
    assert token, out.output
    assert board.get(f"/c/{token.group(1)}").status_code == 200
    listed = runner.invoke(main, ["customer-link", "list", "SO-B"])
    assert listed.exit_code == 0 and "\tok\t" in listed.output
    link_id = listed.output.split("\t")[0]
    assert token.group(1) not in listed.output
    assert runner.invoke(main, ["customer-link", "revoke", link_id]).exit_code == 0
    assert board.get(f"/c/{token.group(1)}").status_code == 410
    assert "revoked" in runner.invoke(main, ["customer-link", "list", "SO-B"]).output
    assert runner.invoke(main, ["customer-link", "revoke", link_id]).exit_code != 0


def test_only_the_c_prefix_is_open(board: Any, plant_db: str) -> None:
    _, token = make(plant_db, "SO-A")
    assert board.get(f"/c/{token}").status_code == 200  # not signed in
    # Neighbours of the prefix are the boards' own and closed: signed out, a page sends to
    # /login and anything else is 401.
    for path in ("/c", f"/cx/{token}", f"/C/{token}", "/trace", "/orders/SO-A"):
        resp = board.get(path)
        assert resp.status_code in (302, 401), path
        assert "SO-A" not in body(resp) or resp.status_code == 302, path
        if resp.status_code == 302:
            assert "/login" in resp.headers["Location"], path
    # The page only answers GET: a POST falls to the gate (401), nothing shown.
    post = board.post(f"/c/{token}")
    assert post.status_code in (401, 405) and "SO-A" not in body(post)
