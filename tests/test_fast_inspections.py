"""The inspection step's memos (streams/inspections.py: shift-time offsets, plant-local
days, and each run's rows and patrols kept while their inputs are the same and the clock
has not reached an instant they compare with) change no row: every batch gives exactly the rows of an
instance that forgets its memos before every batch, whatever the reports, part totals and
batch cuts (the clock moves with the batches' event times)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.events import parse_event
from mesflow.plant import PlantConfig
from streams.inspections import InspectionRun, InspectionRunSet, Inspections
from streams.validate import OrderInput
from tests.test_inspections import POLICY, at, check, end, parts, start, with_policy

WOS = ("WO-1", "WO-2")


@st.composite
def items(draw: st.DrawFn) -> list[Any]:
    out: list[Any] = []
    minute = 0.0
    totals = dict.fromkeys(WOS, 0)
    for _ in range(draw(st.integers(1, 40))):
        minute += draw(st.sampled_from([0.5, 3, 11, 25, 61, 130]))
        wo = draw(st.sampled_from(WOS))
        kind = draw(
            st.sampled_from(["start", "end", "first", "patrol", "last", "parts", "parts", "wo"])
        )
        if kind == "wo":  # its product (named in the run rows) set or changed
            product = draw(st.sampled_from(["P-100", "P-400"]))
            body: dict[str, Any] = {"type": "work_order", "ts": at(minute).isoformat()}
            body |= {"work_order": wo}
            body |= {"order_no": "SO-1", "product": product, "qty": 10}
            out.append(OrderInput("SO-1", parse_event(json.dumps(body))))  # type: ignore[arg-type]
        elif kind == "start":
            out.append(start(minute, wo))
        elif kind == "end":
            out.append(end(minute, wo))
        elif kind == "parts":
            totals[wo] += draw(st.integers(0, 7))
            out.append(parts(minute, totals[wo], wo))
        else:
            out.append(check(minute, kind, draw(st.sampled_from(["pass", "fail"])), wo))
    return out


def forget(steps: Inspections) -> None:
    steps._same.clear()
    steps._wake.clear()
    steps._patrol_memo.clear()
    steps._patrol_prefix.clear()
    steps._runs_of.clear()
    steps._naming = None
    steps._later.clear()
    steps._days.clear()


class Same:
    """The incremental rows against the full recomputation's: the same rows, except that
    a machine's run set (a replace of its runs) comes only when it was derived anew, so
    each machine's last set is compared, as the table holds it."""

    def __init__(self) -> None:
        self.sets: tuple[dict[str, InspectionRunSet], dict[str, InspectionRunSet]] = ({}, {})

    def __call__(self, fast: list[Any], full: list[Any]) -> None:
        def others(rows: list[Any]) -> list[Any]:
            return [r for r in rows if type(r) is not InspectionRunSet]

        assert others(fast) == others(full)
        for rows, last in zip((fast, full), self.sets, strict=True):
            last.update((r.machine, r) for r in rows if type(r) is InspectionRunSet)
        assert self.sets[0] == self.sets[1]


@settings(max_examples=50, deadline=None)
@given(items(), st.integers(1, 6), st.booleans())
def test_memos_change_no_row(plant: PlantConfig, xs: list[Any], batch: int, patrol: bool) -> None:
    # Without patrols, the last piece's day of showing is the only instant the clock meets.
    p = with_policy(
        plant, POLICY if patrol else POLICY.model_copy(update={"patrol_every_minutes": 0})
    )
    fast, fresh = Inspections(p, lag_s=0), Inspections(p, lag_s=0)
    same = Same()  # a machine's run set again only when derived anew
    for i in range(0, len(xs), batch):
        forget(fresh)
        same(fast.feed(xs[i : i + batch]), fresh.feed(xs[i : i + batch]))
    for now in (10**6 * 3600, 10**6 * 86400 * 2):  # later, as live ticks would
        forget(fresh)
        clock = fast.state.clock + now
        same(fast.tick(clock), fresh.tick(clock))
    forget(fresh)
    same(fast.settle(), fresh.settle())


def test_a_product_change_derives_the_machines_that_ran_it_again(plant: PlantConfig) -> None:
    """The work order -> machines index stays complete as reports come after it was built:
    an ended run (no flag: not derived at every batch) is derived again when its work
    order's product becomes known."""
    quiet = POLICY.model_copy(
        update={
            "first_article_within_parts": 0,
            "block_until_first_article_passes": False,
            "patrol_every_minutes": 0,
            "last_piece_required": False,
        }
    )
    steps = Inspections(with_policy(plant, quiet), lag_s=0)

    def product(wo: str, minute: float) -> OrderInput:
        body: dict[str, Any] = {"type": "work_order", "ts": at(minute).isoformat()}
        body |= {"work_order": wo, "order_no": "SO-1", "product": "P-100", "qty": 10}
        return OrderInput("SO-1", parse_event(json.dumps(body)))  # type: ignore[arg-type]

    steps.feed([product("WO-9", 0)])  # the index is built here
    steps.feed([start(1, "WO-1"), end(30, "WO-1")])
    rows = steps.feed([product("WO-1", 31)])
    assert [(r.work_order, r.product) for r in rows if type(r) is InspectionRun] == [
        ("WO-1", "P-100")
    ]
