"""Bytewax wiring of the production-problem step (logic: streams/order_problems.py)."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from mesflow.plant import PlantConfig
from streams.inspections_flow import rows_of
from streams.order_problems import INPUT_TYPES, OrderProblems
from streams.order_progress import Callback

_INPUTS = frozenset(INPUT_TYPES)
_LIVE_LAG_US = 10_000_000  # as the alert step: rows arrive within seconds live


def _wall_us() -> int:
    return time.time_ns() // 1000


class ProblemLogic(StatefulBatchLogic[Any, list[Callback], bytes]):
    TICK = timedelta(seconds=15)

    def __init__(self, resume: bytes | None, plant: PlantConfig, live: bool) -> None:
        self.problems = OrderProblems.from_plant(plant, pickle.loads(resume) if resume else None)
        self.live = live

    def on_batch(self, values: list[Any]) -> tuple[list[list[Callback]], bool]:
        return [self.problems.feed(values, _wall_us() if self.live else None)], self.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + self.TICK if self.live and self.problems.state.open else None

    def on_notify(self) -> tuple[list[list[Callback]], bool]:
        # Live, a machine that is down and silent sends no rows: the wall clock moves on.
        wall = _wall_us()
        return [self.problems.tick(wall - _LIVE_LAG_US, wall)], self.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.problems.state, protocol=pickle.HIGHEST_PROTOCOL)


def order_problem_rows(results: Stream[Any], plant: PlantConfig, live: bool) -> Stream[Any]:
    """`results` with the production-problem callbacks merged in (lists of rows)."""
    inputs = op.flat_map_batch(
        "problem_inputs",
        results,
        lambda lists: [("plant", x) for rows in lists for x in rows if type(x) in _INPUTS],
    )
    step = op.stateful_batch(
        "order_problems", inputs, lambda resume: ProblemLogic(resume, plant, live)
    )
    return op.merge(
        "results_and_problems", results, op.flat_map_batch("problem_rows", step, rows_of)
    )
