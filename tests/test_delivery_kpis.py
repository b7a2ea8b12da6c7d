"""Delivery KPIs (sql/025_delivery_kpis.sql, mesflow/delivery_kpis.py, docs/kpis.md) on a
real PostgreSQL: a seeded set of orders across two customers, two products and two months
(plant time Asia/Shanghai, +08:00), including a late order, an unfinished one, one closed
short of its quantity and one cancelled before it started; every figure worked by hand."""

from __future__ import annotations

import csv
import io
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner, Result

from mesflow.cli import main
from mesflow.delivery_kpis import MonthRange, fetch_delivery_kpis, to_csv
from tests.conftest import EXAMPLE_CONFIG

TZ = ZoneInfo("Asia/Shanghai")

# order, customer, product, qty, due, status, created_at, history accepted_at (None: none),
# first work-order start, good, scrap, eta (finish time once good >= qty), last_event_ts.
ORDERS = [
    # Received 08:00, started 12:00: lead 4 h. 100/100 made 15 Oct, due 20 Oct: on time.
    ("A1", "ACME", "P1", 100, "2026-10-20 00:00+08", "open", "2026-09-30 00:00+08",
     "2026-10-01 08:00+08", "2026-10-01 12:00+08", 100, 5, "2026-10-15 10:00+08",
     "2026-10-15 10:00+08"),
    # No history row: received = created_at. Started 1 Nov 01:00 plant time (31 Oct in UTC):
    # lead 49 h. Finished 2 Nov, due 31 Oct: late.
    ("A2", "ACME", "P2", 50, "2026-10-31 12:00+08", "open", "2026-10-30 00:00+08",
     None, "2026-11-01 01:00+08", 50, 0, "2026-11-02 09:00+08", "2026-11-02 09:00+08"),
    # Unfinished: 120 of 200. Lead 1.5 h.
    ("B1", "BETA", "P1", 200, "2026-11-30 00:00+08", "open", "2026-11-03 08:00+08",
     "2026-11-03 08:00+08", "2026-11-03 09:30+08", 120, 30, "2026-11-28 00:00+08",
     "2026-11-20 00:00+08"),
    # Closed by the CRM at 70 of 80 on 18 Nov, due 20 Nov: completed, on time. Lead 6 h.
    ("B2", "BETA", "P2", 80, "2026-11-20 00:00+08", "closed", "2026-11-10 00:00+08",
     "2026-11-10 00:00+08", "2026-11-10 06:00+08", 70, 10, None, "2026-11-18 12:00+08"),
    # Cancelled before it started: in no KPI.
    ("B3", "BETA", "P1", 10, "2026-11-29 00:00+08", "cancelled", "2026-11-25 00:00+08",
     "2026-11-25 00:00+08", None, 0, 0, None, "2026-11-25 00:00+08"),
]  # fmt: skip

# Changes that reached the floor: order, received, [(machine, acknowledged_at or None)].
CHANGES: list[tuple[str, str, list[tuple[str, str | None]]]] = [
    ("A1", "2026-10-02 08:00+08", [("IM-01", "2026-10-02 08:05+08")]),  # 300 s
    # The first acknowledgement counts: 1200 s.
    (
        "B1",
        "2026-11-05 10:00+08",
        [("IM-01", "2026-11-05 10:30+08"), ("IM-02", "2026-11-05 10:20+08")],
    ),
    ("B2", "2026-11-12 08:00+08", [("IM-02", None)]),  # not acknowledged yet
]


@pytest.fixture
def kpi_db(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        for (no, cust, prod, qty, due, status, created, accepted, started, good, scrap, eta,
             last) in ORDERS:  # fmt: skip
            conn.execute(
                "INSERT INTO crm_order (order_no, version, customer, priority, product, qty,"
                " due, status, event_ts, changed_by, created_at)"
                " VALUES (%s, 1, %s, 5, %s, %s, %s, %s, %s, 'crm', %s)",
                (no, cust, prod, qty, due, status, created, created),
            )
            if accepted:
                conn.execute(
                    "INSERT INTO order_history (order_no, version, changed_by, accepted_at,"
                    " event_ts, change) VALUES (%s, 1, 'crm', %s, %s, '{}')",
                    (no, accepted, accepted),
                )
            conn.execute(
                "INSERT INTO order_progress (order_no, customer, priority, product, qty, due,"
                " status, version, good, scrap, eta, at_risk, last_event_ts)"
                " VALUES (%s, %s, 5, %s, %s, %s, %s, 1, %s, %s, %s, false, %s)",
                (no, cust, prod, qty, due, status, good, scrap, eta, last),
            )
            # Two work orders; the second starts an hour after the first: the first counts.
            half = good // 2
            for i, (g, s) in enumerate(((half, scrap), (good - half, 0))):
                conn.execute(
                    "INSERT INTO work_order_progress (work_order, order_no, product, qty,"
                    " machine, good, scrap, rate_per_h, started_at, last_event_ts)"
                    " VALUES (%s, %s, %s, %s, 'IM-01', %s, %s, 0, %s::timestamptz"
                    " + make_interval(hours => %s), %s)",
                    (f"{no}-{i}", no, prod, qty, g, s, started, i, last),
                )
        for no, received, notices in CHANGES:
            row = conn.execute(
                "INSERT INTO change_request (order_no, from_version, to_version, requested_by,"
                " source, received_at, change, snapshot, status, decided_at, applied_at)"
                " VALUES (%s, 1, 2, 'crm', 'crm', %s, '{}', '{}', 'applied', %s, %s)"
                " RETURNING id",
                (no, received, received, received),
            ).fetchone()
            assert row is not None
            cid = row[0]
            for machine, ack in notices:
                conn.execute(
                    "INSERT INTO floor_notice (change_request_id, order_no, summary, machine,"
                    " acknowledged_by, acknowledged_at) VALUES (%s, %s, 'qty', %s, %s, %s)",
                    (cid, no, machine, "op" if ack else None, ack),
                )
    return db_url


def view(url: str, query: str, tz: str = "Asia/Shanghai") -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        conn.execute(f"SET TIME ZONE '{tz}'")
        cur = conn.execute(query)
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_order_rows(kpi_db: str) -> None:
    rows = {r["order_no"]: r for r in view(kpi_db, "SELECT * FROM v_order_delivery")}
    assert rows["A1"]["lead_time_s"] == 4 * 3600
    assert rows["A2"]["lead_time_s"] == 49 * 3600  # from created_at: no history row
    assert rows["B1"]["lead_time_s"] == 5400
    assert rows["B3"]["lead_time_s"] is None
    assert [rows[o]["completed"] for o in ("A1", "A2", "B1", "B2", "B3")] == [
        True, True, False, True, False,
    ]  # fmt: skip
    assert [rows[o]["on_time"] for o in ("A1", "A2", "B1", "B2", "B3")] == [
        True, False, None, True, None,
    ]  # fmt: skip
    assert rows["A2"]["start_month"] == "2026-11"  # plant time, not UTC
    assert rows["B2"]["completed_month"] == "2026-11"


def test_views_by_month_customer_product(kpi_db: str) -> None:
    lead = view(kpi_db, "SELECT * FROM v_kpi_lead_time ORDER BY month, customer, product")
    assert [(r["month"], r["customer"], r["product"], r["orders"], r["lead_time_median_s"])
            for r in lead] == [
        ("2026-10", "ACME", "P1", 1, 14400.0),
        ("2026-11", "ACME", "P2", 1, 176400.0),
        ("2026-11", "BETA", "P1", 1, 5400.0),
        ("2026-11", "BETA", "P2", 1, 21600.0),
    ]  # fmt: skip
    on_time = view(kpi_db, "SELECT * FROM v_kpi_on_time ORDER BY month, customer, product")
    assert [(r["month"], r["customer"], r["product"], r["completed"], r["on_time"],
             r["on_time_rate"]) for r in on_time] == [
        ("2026-10", "ACME", "P1", 1, 1, 1.0),
        ("2026-11", "ACME", "P2", 1, 0, 0.0),
        ("2026-11", "BETA", "P2", 1, 1, 1.0),
    ]  # fmt: skip
    chg = view(kpi_db, "SELECT * FROM v_kpi_change_response ORDER BY month, customer, product")
    assert [(r["month"], r["customer"], r["product"], r["changes"], r["unacknowledged"],
             r["response_median_s"], r["response_p90_s"]) for r in chg] == [
        ("2026-10", "ACME", "P1", 1, 0, 300.0, 300.0),
        ("2026-11", "BETA", "P1", 1, 0, 1200.0, 1200.0),
        ("2026-11", "BETA", "P2", 1, 1, None, None),
    ]  # fmt: skip
    scrap = view(kpi_db, "SELECT * FROM v_kpi_scrap WHERE month = '2026-11' ORDER BY 2, 3")
    assert [(r["customer"], r["product"], r["good"], r["scrap"]) for r in scrap] == [
        ("ACME", "P2", 50, 0), ("BETA", "P1", 120, 30), ("BETA", "P2", 70, 10),
    ]  # fmt: skip
    both = view(kpi_db, "SELECT * FROM v_delivery_kpis ORDER BY month, customer, product")
    assert len(both) == 4
    beta_p2 = next(r for r in both if (r["customer"], r["product"]) == ("BETA", "P2"))
    assert (beta_p2["orders_started"], beta_p2["changes"], beta_p2["on_time_rate"],
            beta_p2["scrap_rate"]) == (1, 1, 1.0, 10 / 80)  # fmt: skip


def test_months_follow_the_session_time_zone(kpi_db: str) -> None:
    # In UTC order A2 starts on 31 Oct: the same rows, another month.
    utc = view(kpi_db, "SELECT order_no, start_month FROM v_order_delivery", tz="UTC")
    assert {r["order_no"]: r["start_month"] for r in utc}["A2"] == "2026-10"


def test_by_month_hand_worked(kpi_db: str) -> None:
    rows = {r.key: r for r in fetch_delivery_kpis(kpi_db, TZ, "month", MonthRange())}
    assert list(rows) == ["2026-10", "2026-11"]
    oct_, nov = rows["2026-10"], rows["2026-11"]
    assert (oct_.orders_started, oct_.lead_time_median_s, oct_.on_time_rate) == (1, 14400, 1.0)
    assert oct_.scrap_rate == pytest.approx(5 / 105)
    # Nov leads 5400, 21600, 176400: median 21600; p90 21600 + 0.8 * 154800 = 145440.
    assert nov.orders_started == 3
    assert nov.lead_time_avg_s == pytest.approx(67800)
    assert nov.lead_time_median_s == pytest.approx(21600)
    assert nov.lead_time_p90_s == pytest.approx(145440)
    assert (nov.completed, nov.on_time, nov.on_time_rate) == (2, 1, 0.5)
    assert (nov.good, nov.scrap) == (240, 40)
    assert nov.scrap_rate == pytest.approx(40 / 280)
    assert (nov.changes, nov.unacknowledged, nov.response_median_s) == (2, 1, 1200)


def test_by_customer_and_product_hand_worked(kpi_db: str) -> None:
    cust = {r.key: r for r in fetch_delivery_kpis(kpi_db, TZ, "customer", MonthRange())}
    # ACME leads 14400 and 176400: a true median over both months, not a median of medians.
    assert cust["ACME"].lead_time_median_s == pytest.approx(95400)
    assert cust["ACME"].lead_time_p90_s == pytest.approx(160200)
    assert (cust["ACME"].completed, cust["ACME"].on_time_rate) == (2, 0.5)
    assert cust["ACME"].scrap_rate == pytest.approx(5 / 155)
    assert cust["BETA"].lead_time_p90_s == pytest.approx(19980)
    assert (cust["BETA"].completed, cust["BETA"].on_time_rate) == (1, 1.0)
    assert (cust["BETA"].changes, cust["BETA"].unacknowledged) == (2, 1)
    prod = {r.key: r for r in fetch_delivery_kpis(kpi_db, TZ, "product", MonthRange())}
    assert prod["P1"].lead_time_median_s == pytest.approx(9900)
    assert (prod["P1"].changes, prod["P1"].response_median_s) == (2, 750)
    assert prod["P1"].response_p90_s == pytest.approx(1110)
    assert prod["P2"].on_time_rate == 0.5
    # Filters: one month, one customer.
    nov_beta = fetch_delivery_kpis(
        kpi_db, TZ, "product", MonthRange("2026-11", "2026-11"), customer="BETA"
    )
    assert [(r.key, r.orders_started, r.completed) for r in nov_beta] == [
        ("P1", 1, 0), ("P2", 1, 1),
    ]  # fmt: skip


def run(url: str, *args: str) -> Result:
    env = {
        "MESFLOW_DATABASE_URL": url,
        "MESFLOW_PLANT_CONFIG": str(EXAMPLE_CONFIG),
        "MESFLOW_LANGUAGE": "en",
    }
    return CliRunner().invoke(main, ["report", "--kpis", *args], env=env)


def test_report_csv_exact(kpi_db: str) -> None:
    result = run(kpi_db, "--by", "customer", "--csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "customer,orders_started,lead_time_avg_s,lead_time_median_s,lead_time_p90_s,changes,"
        "unacknowledged,response_median_s,response_p90_s,completed,on_time,on_time_rate,good,"
        "scrap,scrap_rate,made,sent_to_rework,rework_rate\n"
        "ACME,2,95400.0,95400.0,160200.0,1,0,300.0,300.0,2,1,0.5,150,5,0.0323,0,0,\n"
        "BETA,2,13500.0,13500.0,19980.0,2,1,1200.0,1200.0,1,1,1.0,190,40,0.1739,0,0,\n"
    )
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["customer"] == "ACME"
    # The same CSV as the board's export (dashboards/kpi_queries.py uses to_csv too).
    assert result.stdout == to_csv(
        fetch_delivery_kpis(kpi_db, TZ, "customer", MonthRange()), "customer"
    )


def test_report_table_and_month_filter(kpi_db: str) -> None:
    result = run(kpi_db, "--month", "2026-11", "--by", "product")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "2026-11" in lines[0] and "Asia/Shanghai" in lines[0]
    p2 = next(line for line in lines if line.startswith("P2"))
    assert "1d 3:30" in p2  # median of A2's 49 h and B2's 6 h
    assert "50.0%" in p2
    result = run(kpi_db, "--from", "2026-10", "--to", "2026-10", "--csv")
    assert result.stdout.splitlines()[1].startswith("2026-10,1,14400.0")
    assert len(result.stdout.splitlines()) == 2


def test_report_errors(kpi_db: str) -> None:
    assert run(kpi_db, "--month", "2026-13").exit_code == 2
    assert run(kpi_db, "--month", "2026-11", "--from", "2026-10").exit_code == 2
    assert run(kpi_db, "--from", "2026-11", "--to", "2026-10").exit_code == 2
    assert run(kpi_db, "--by", "shift").exit_code == 2
    empty = run(kpi_db, "--month", "2027-01", "--csv")
    assert empty.exit_code == 0 and empty.stdout.count("\n") == 1
    env = {"MESFLOW_DATABASE_URL": kpi_db, "MESFLOW_PLANT_CONFIG": str(EXAMPLE_CONFIG)}
    plain = CliRunner().invoke(
        main, ["report", "--date", "2026-11-20", "--by", "customer"], env=env
    )
    assert plain.exit_code == 2 and "--kpis" in plain.output


def test_the_trend_says_when_no_order_is_completed_yet() -> None:
    """A month with orders started and none completed has no on-time rate: the chart says
    so, and draws no zero line that would read as 0 % on time."""
    from dashboards.pages.kpis import trend_figure
    from mesflow.delivery_kpis import DeliveryKpiRow

    def month(key: str, rate: float | None) -> DeliveryKpiRow:
        done = 0 if rate is None else 4
        return DeliveryKpiRow(key, 5, None, None, None, 4, 4, None, None, done,
                              round(done * (rate or 0)), rate, 26, 1, 0.037, 27, 0, 0.0)  # fmt: skip

    for lang, words in (("en", "No order completed"), ("zh", "尚无完成的订单")):
        fig = trend_figure([month("2026-12", None)], lang)
        assert [a.text for a in fig.layout.annotations] == [
            "No order completed in this selection yet"
            if lang == "en"
            else "所选范围内尚无完成的订单"
        ]
        assert words in fig.layout.annotations[0].text
        assert fig.layout.yaxis.zeroline is False
    fig = trend_figure([month("2026-11", 0.75), month("2026-12", None)], "en")
    assert not fig.layout.annotations
    assert list(fig.data[0].y) == [75.0]
