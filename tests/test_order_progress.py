"""Order progress (streams/order_progress.py): pure logic, plus its migration."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from mesflow.db import migrate
from mesflow.events import OrderEvent, WorkOrderEvent
from mesflow.plant import PlantConfig
from streams.hour_clock import from_us, to_us
from streams.order_progress import (
    Callback,
    IdealCycles,
    OrderProgress,
    OrderProgressRow,
    OrderRow,
    WorkOrderProgressRow,
)

T0 = to_us(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
MIN = 60_000_000
HOUR = 60 * MIN
# Ideal cycle times are the best possible: the measured rates below are slower.
IDEAL = IdealCycles(by_pair={("M1", "P-100"): 3.0}, by_machine={"M2": 20.0}, default=30.0)


def at(minutes: float) -> int:
    return T0 + round(minutes * MIN)


def dt(t: int) -> datetime:
    return from_us(t)


def order(
    version: int = 1,
    *,
    qty: int = 1000,
    due_min: float = 24 * 60,
    status: str = "open",
    ts_min: float = 0,
    priority: int = 2,
) -> OrderEvent:
    return OrderEvent.model_validate(
        {
            "type": "order",
            "ts": dt(at(ts_min)),
            "order_no": "SO-1",
            "version": version,
            "customer": "ACME",
            "priority": priority,
            "product": "P-100",
            "qty": qty,
            "due": dt(at(due_min)),
            "status": status,
        }
    )


def work_order(wo: str = "WO-1", qty: int = 1000, machine: str | None = "M1") -> WorkOrderEvent:
    return WorkOrderEvent.model_validate(
        {
            "type": "work_order",
            "ts": dt(T0),
            "work_order": wo,
            "order_no": "SO-1",
            "product": "P-100",
            "qty": qty,
            "machine": machine,
        }
    )


def split(
    out: list[OrderRow],
) -> tuple[dict[str, WorkOrderProgressRow], OrderProgressRow | None, list[Callback]]:
    wos = {r.work_order: r for r in out if isinstance(r, WorkOrderProgressRow)}
    orders = [r for r in out if isinstance(r, OrderProgressRow)]
    cbs = [r for r in out if isinstance(r, Callback)]
    return wos, (orders[-1] if orders else None), cbs


def started(qty: int = 1000, wo_qty: int = 1000, due_min: float = 24 * 60) -> OrderProgress:
    p = OrderProgress("SO-1", IDEAL)
    p.on_order(order(qty=qty, due_min=due_min))
    p.on_work_order(work_order(qty=wo_qty))
    p.on_wo_started("WO-1", "M1", T0)
    p.flush()
    return p


def test_progress_and_rate_from_absolute_totals() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(10), 100, 2)
    p.on_parts("WO-1", "M1", at(20), 200, 3)
    p.on_parts("WO-1", "M1", at(20), 200, 3)  # repeated: absolute, not added
    wos, o, _ = split(p.flush())
    assert (wos["WO-1"].good, wos["WO-1"].scrap) == (200, 3)
    assert wos["WO-1"].progress == pytest.approx(0.2)
    assert wos["WO-1"].rate_per_h == pytest.approx(600.0)  # 200 parts in 20 min
    assert wos["WO-1"].started_at == dt(T0)
    assert o is not None and (o.good, o.scrap, o.progress) == (200, 3, pytest.approx(0.2))
    # Past 30 minutes the window starts at the sample at or before now - 30 min.
    p.on_parts("WO-1", "M1", at(40), 400, 3)
    wos, _, _ = split(p.flush())
    assert wos["WO-1"].rate_per_h == pytest.approx(600.0)  # 300 since 10 min / 0.5 h
    assert wos["WO-1"].last_event_ts == dt(at(40))


def test_rate_sums_machines() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(30), 300, 0)
    p.on_wo_started("WO-1", "M2", at(30))
    p.on_parts("WO-1", "M2", at(60), 150, 0)
    p.on_parts("WO-1", "M1", at(60), 600, 0)
    wos, o, _ = split(p.flush())
    assert wos["WO-1"].good == 750
    # Last 30 min: M1 made 300, M2 150 -> 900 parts/h.
    assert wos["WO-1"].rate_per_h == pytest.approx(900.0)
    assert o is not None and o.good == 750


def test_revision_downwards() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(10), 300, 0)
    p.flush()
    p.on_parts("WO-1", "M1", at(11), 250, 50)  # 50 moved to scrap by a late report
    wos, o, _ = split(p.flush())
    assert (wos["WO-1"].good, wos["WO-1"].scrap) == (250, 50)
    assert o is not None and (o.good, o.scrap) == (250, 50)
    assert wos["WO-1"].rate_per_h == pytest.approx(250 / (11 / 60))


def test_eta_with_rate() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(30), 300, 0)  # 600/h, 700 left
    wos, o, _ = split(p.flush())
    assert wos["WO-1"].eta == dt(at(30 + 70))
    assert o is not None and o.eta == dt(at(100))


def test_eta_without_rate_uses_ideal_cycle_time() -> None:
    p = OrderProgress("SO-1", IDEAL)
    p.on_order(order(qty=1000))
    _, o, _ = split(p.flush())
    # No work order: the fastest machine listing the product (M1, 3 s).
    assert o is not None and o.eta == dt(T0 + 1000 * 3 * 1_000_000)
    p.on_work_order(work_order(machine="M2"))
    wos, o, _ = split(p.flush())
    assert wos["WO-1"].rate_per_h == 0
    assert wos["WO-1"].eta == dt(T0 + 1000 * 20 * 1_000_000)  # M2's own 20 s
    assert o is not None and o.eta == wos["WO-1"].eta


def test_stopped_work_order_rate_decays_to_ideal() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(30), 300, 0)
    p.flush()
    p.on_clock(at(61))  # nothing made for 31 minutes
    wos, _, _ = split(p.flush())
    assert wos["WO-1"].rate_per_h == 0
    assert wos["WO-1"].eta == dt(at(61) + 700 * 3 * 1_000_000)


def test_finished_work_order() -> None:
    p = started(qty=1000, wo_qty=500)
    p.on_parts("WO-1", "M1", at(30), 500, 0)
    wos, o, _ = split(p.flush())
    assert wos["WO-1"].completed_at == dt(at(30))
    assert wos["WO-1"].eta == dt(at(30))
    # 500 of the order are not covered by a work order: after WO-1, at the order's rate.
    assert o is not None and o.eta == dt(at(30 + 30))


def test_risk_transitions_on_qty_and_due_changes() -> None:
    p = started(due_min=120)
    p.on_parts("WO-1", "M1", at(30), 300, 0)  # ETA 100 min, due 120
    _, o, cbs = split(p.flush())
    assert o is not None and not o.at_risk
    assert [c.event_type for c in cbs] == ["milestone"]
    # The CRM raises the quantity mid-production (its snapshot's time, 31 min, is now "now"):
    # 1200 left at 600/h -> ETA 31 + 120 = 151 min > due.
    p.on_order(order(2, qty=1500, due_min=120, ts_min=31))
    _, o, cbs = split(p.flush())
    assert o is not None and o.at_risk and o.eta == dt(at(31 + 120))
    assert [(c.event_type, c.dedupe) for c in cbs] == [("at_risk", "SO-1:risk:1")]
    assert cbs[0].payload == {
        "eta": dt(at(151)),
        "due": dt(at(120)),
        "good": 300,
        "qty": 1500,
    }
    # A later due date brings it back on track.
    p.on_order(order(3, qty=1500, due_min=180, ts_min=32))
    _, o, cbs = split(p.flush())
    assert o is not None and not o.at_risk
    assert [(c.event_type, c.dedupe) for c in cbs] == [("back_on_track", "SO-1:risk:2")]
    assert cbs[0].payload["due"] == dt(at(180))
    # An earlier due date: at risk again, a new key.
    p.on_order(order(4, qty=1500, due_min=90, ts_min=33))
    _, o, cbs = split(p.flush())
    assert o is not None and o.at_risk
    assert [(c.event_type, c.dedupe) for c in cbs] == [("at_risk", "SO-1:risk:3")]
    # An older version is ignored.
    p.on_order(order(2, qty=10, due_min=9999, ts_min=34))
    assert p.flush() == []  # ignored entirely: no rows, no callbacks


def test_hold_is_never_at_risk_and_sends_no_back_on_track() -> None:
    p = started(due_min=60)
    p.on_parts("WO-1", "M1", at(30), 300, 0)
    _, o, cbs = split(p.flush())
    assert o is not None and o.at_risk
    assert [c.event_type for c in cbs] == ["milestone", "at_risk"]
    p.on_order(order(2, due_min=60, status="on_hold", ts_min=31))
    _, o, cbs = split(p.flush())
    assert o is not None and not o.at_risk and o.good == 300 and cbs == []
    p.on_order(order(3, due_min=60, ts_min=32))  # reopened, still late: already told
    _, o, cbs = split(p.flush())
    assert o is not None and o.at_risk and cbs == []


def test_milestones_in_order_and_once() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(10), 100, 0)
    assert split(p.flush())[2] == []
    p.on_parts("WO-1", "M1", at(20), 600, 4)  # 10 % -> 60 %
    _, _, cbs = split(p.flush())
    assert [(c.event_type, c.dedupe) for c in cbs] == [
        ("milestone", "SO-1:m25"),
        ("milestone", "SO-1:m50"),
    ]
    assert cbs[0].payload == {
        "percent": 25,
        "good": 600,
        "scrap": 4,
        "qty": 1000,
        "eta": dt(at(20) + round(400 * HOUR / 1800)),
    }
    # A downward revision and back up: nothing is retracted nor sent again.
    p.on_parts("WO-1", "M1", at(21), 400, 4)
    p.on_parts("WO-1", "M1", at(22), 610, 4)
    assert split(p.flush())[2] == []
    p.on_parts("WO-1", "M1", at(23), 750, 4)  # exactly 75 %
    assert [c.dedupe for c in split(p.flush())[2]] == ["SO-1:m75"]


def test_completed_once() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(50), 1000, 7)
    wos, o, cbs = split(p.flush())
    assert [c.event_type for c in cbs] == ["milestone"] * 3 + ["completed"]
    assert cbs[-1] == Callback(
        "SO-1",
        "completed",
        {"good": 1000, "scrap": 7, "qty": 1000, "completed_at": dt(at(50))},
        "SO-1:completed",
    )
    assert o is not None and o.progress == 1.0 and o.eta == dt(at(50)) and not o.at_risk
    assert wos["WO-1"].completed_at == dt(at(50))
    p.on_parts("WO-1", "M1", at(51), 990, 17)  # revised below: not retracted
    p.on_parts("WO-1", "M1", at(52), 1010, 17)
    assert split(p.flush())[2] == []


def test_work_started_on_start_or_first_part() -> None:
    p = OrderProgress("SO-1", IDEAL)
    p.on_order(order())
    p.on_work_order(work_order("WO-1", 500))
    p.on_work_order(work_order("WO-2", 500, "M2"))
    p.on_wo_started("WO-1", "M1", at(5))
    p.on_wo_started("WO-1", "M1", at(6))  # again: once per work order
    p.on_parts("WO-2", "M2", at(7), 1, 0)  # no wo_start seen: the first part counts
    _, _, cbs = split(p.flush())
    assert cbs == [
        Callback(
            "SO-1",
            "work_started",
            {"work_order": "WO-1", "machine": "M1", "started_at": dt(at(5))},
            "SO-1:started:WO-1",
        ),
        Callback(
            "SO-1",
            "work_started",
            {"work_order": "WO-2", "machine": "M2", "started_at": dt(at(7))},
            "SO-1:started:WO-2",
        ),
    ]


def test_cancellation_acknowledged_once_per_version() -> None:
    p = started(due_min=60)
    p.on_parts("WO-1", "M1", at(30), 300, 5)
    p.flush()
    p.on_order(order(2, due_min=60, status="cancelled", ts_min=31))
    p.on_order(order(2, due_min=60, status="cancelled", ts_min=31))  # replayed delivery
    _, o, cbs = split(p.flush())
    assert cbs == [
        Callback(
            "SO-1",
            "cancellation_acknowledged",
            {"version": 2, "good": 300, "scrap": 5},
            "SO-1:cancel:2",
        )
    ]
    assert o is not None and o.status == "cancelled" and not o.at_risk and o.good == 300
    # Production after a cancellation: figures kept, no progress callbacks.
    p.on_parts("WO-1", "M1", at(40), 800, 5)
    _, o, cbs = split(p.flush())
    assert o is not None and o.good == 800 and cbs == []
    p.on_order(order(3, due_min=60, status="cancelled", ts_min=41))
    assert [c.dedupe for c in split(p.flush())[2]] == ["SO-1:cancel:3"]


def test_unknown_order_first_then_snapshot() -> None:
    p = OrderProgress("SO-1", IDEAL)
    p.on_work_order(work_order())
    p.on_wo_started("WO-1", "M1", T0)
    p.on_parts("WO-1", "M1", at(30), 300, 0)
    wos, o, cbs = split(p.flush())
    assert cbs == []
    assert wos["WO-1"].good == 300 and wos["WO-1"].eta == dt(at(100))
    assert o is not None
    assert (o.customer, o.qty, o.due, o.status, o.progress, o.at_risk) == (
        None,
        None,
        None,
        None,
        None,
        False,
    )
    assert (o.good, o.eta) == (300, dt(at(100)))
    # Parts of a work order the order step has not seen the work_order event of yet.
    p.on_parts("WO-9", "M3", at(30), 10, 0)
    wos, _, _ = split(p.flush())
    assert wos["WO-9"].qty is None and wos["WO-9"].progress is None and wos["WO-9"].eta is None
    # The snapshot arrives: the callbacks catch up.
    p.on_order(order(due_min=60, ts_min=31))
    _, o, cbs = split(p.flush())
    assert o is not None and o.customer == "ACME" and o.at_risk
    assert [c.dedupe for c in cbs] == [
        "SO-1:started:WO-1",
        "SO-1:started:WO-9",
        "SO-1:m25",
        "SO-1:risk:1",
    ]


def _script(p: OrderProgress, flush_every: int) -> list[OrderRow]:
    steps = [
        lambda: p.on_order(order(due_min=100)),
        lambda: p.on_work_order(work_order()),
        lambda: p.on_wo_started("WO-1", "M1", T0),
        lambda: p.on_parts("WO-1", "M1", at(10), 100, 0),
        lambda: p.on_parts("WO-1", "M1", at(20), 300, 1),
        lambda: p.on_order(order(2, qty=2000, due_min=100, ts_min=21)),
        lambda: p.on_order(order(3, qty=2000, due_min=500, ts_min=22)),
        lambda: p.on_parts("WO-1", "M1", at(40), 1000, 2),
        lambda: p.on_order(order(4, qty=2000, due_min=500, status="cancelled", ts_min=41)),
    ]
    out: list[OrderRow] = []
    for i, step in enumerate(steps, 1):
        step()
        if i % flush_every == 0:
            out.extend(p.flush())
    out.extend(p.flush())
    return out


def test_dedupe_keys_are_deterministic_whatever_the_batching() -> None:
    runs = [_script(OrderProgress("SO-1", IDEAL), n) for n in (1, 3, 100)]
    keys = [[(c.event_type, c.dedupe) for c in split(r)[2]] for r in runs]
    assert keys[0] == keys[1] == keys[2]
    assert keys[0] == [
        ("work_started", "SO-1:started:WO-1"),
        ("milestone", "SO-1:m25"),
        ("at_risk", "SO-1:risk:1"),
        ("back_on_track", "SO-1:risk:2"),
        ("milestone", "SO-1:m50"),
        ("cancellation_acknowledged", "SO-1:cancel:4"),
    ]
    # The last rows are the same too.
    assert split(runs[0])[1] == split(runs[2])[1]


def test_pickle_round_trip() -> None:
    p = started()
    p.on_parts("WO-1", "M1", at(10), 100, 0)
    p.on_parts("WO-1", "M1", at(20), 300, 1)
    p.flush()
    q = pickle.loads(pickle.dumps(p))
    for x in (p, q):
        x.on_parts("WO-1", "M1", at(30), 600, 1)
        x.on_order(order(2, qty=1000, due_min=31))
    assert p.flush() == q.flush()
    assert len(pickle.dumps(q)) < 2000  # small: snapshotted every couple of seconds


def test_samples_stay_few() -> None:
    p = started()
    for i in range(1, 5 * 60 * 30):  # a part every 2 s for five hours
        p.on_parts("WO-1", "M1", T0 + i * 2_000_000, i, 0)
        if i % 100 == 0:
            p.flush()
    wos, _, _ = split(p.flush())
    assert len(p.wos["WO-1"].runs["M1"].samples) <= 32
    assert wos["WO-1"].rate_per_h == pytest.approx(1800, rel=0.04)


def test_mapping_and_plant_ideal_cycles(plant: PlantConfig) -> None:
    p = OrderProgress("SO-1", {("M1", "P-100"): 5.0})
    p.on_order(order(qty=100))
    _, o, _ = split(p.flush())
    assert o is not None and o.eta == dt(T0 + 500 * 1_000_000)
    assert pickle.loads(pickle.dumps(p)).ideal == p.ideal
    ideal = IdealCycles.from_plant(plant)
    machine = next(iter(plant.machines))
    assert ideal(machine, None) == plant.ideal_cycle_seconds(machine)
    for product in plant.products:
        for m, s in product.ideal_cycle_seconds.items():
            assert ideal(m, product.id) == s


def test_migration_creates_tables_and_views(empty_db_url: str) -> None:
    migrate(empty_db_url, log=lambda _m: None)
    now = datetime(2026, 11, 20, tzinfo=UTC)
    rows = [  # order_no, priority, due (days), at_risk
        ("SO-A", 2, 1, False),
        ("SO-B", 1, 3, False),
        ("SO-C", 3, 5, True),
        ("SO-D", 1, 2, False),
    ]
    with psycopg.connect(empty_db_url) as conn:
        for no, prio, days, risk in rows:
            conn.execute(
                """INSERT INTO order_progress (order_no, customer, priority, product, qty, due,
                       status, version, good, scrap, progress, eta, at_risk, last_event_ts)
                   VALUES (%s, 'ACME', %s, 'P-100', 100, %s, 'open', 1, 10, 0, 0.1, %s, %s, %s)""",
                (no, prio, now + timedelta(days=days), now, risk, now),
            )
        conn.execute(
            """INSERT INTO work_order_progress (work_order, order_no, product, qty, machine, good,
                   scrap, progress, rate_per_h, eta, started_at, completed_at, last_event_ts)
               VALUES ('WO-1', 'SO-A', 'P-100', 100, 'M1', 10, 0, 0.1, 60, %s, %s, NULL, %s)""",
            (now, now, now),
        )
        board = conn.execute("SELECT order_no, rank FROM v_order_board ORDER BY rank").fetchall()
        assert board == [("SO-C", 1), ("SO-D", 2), ("SO-B", 3), ("SO-A", 4)]
        wo = conn.execute(
            "SELECT work_order, customer, priority, remaining FROM v_work_order_progress"
        ).fetchall()
        assert wo == [("WO-1", "ACME", 2, 90)]
