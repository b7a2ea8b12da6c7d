"""Bytewax wiring of the out-of-limit spans step (logic: streams/limit_spans.py).

Built only when the plant file has process limits, so a plant without them pays nothing.
"""

from __future__ import annotations

import pickle
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from mesflow.events import WorkOrderEndReport, WorkOrderEvent, WorkOrderStartReport
from mesflow.plant import PlantConfig
from streams.inspections_flow import rows_of
from streams.limit_spans import LimitSpan, LimitTracker, ProductRun, limits_of
from streams.process_values import ProcessValues

_REPORTS = (WorkOrderStartReport, WorkOrderEndReport)


def _inputs(batch: list[Any]) -> list[tuple[str, Any]]:
    # One call per batch: the values, and the machines' work-order events and reports.
    # The validator's output: (machine, [(seq, event), ...]) per machine, and lists of the
    # rest (streams/dataflow.py, _grouped).
    out: list[tuple[str, Any]] = []
    for x in batch:
        if type(x) is tuple:
            machine = x[0]
            for item in x[1]:
                te = type(item[1])
                if te is WorkOrderEvent or te in _REPORTS:
                    out.append((machine, item))
        else:
            for v in x:
                if type(v) is ProcessValues:
                    out.append((v.machine, v))
    # Back in log order (a machine's values and reports interleave): both carry the seq first.
    out.sort(key=_seq)
    return out


def _seq(item: tuple[str, Any]) -> int:
    return int(item[1][0])


class LimitLogic(StatefulBatchLogic[Any, list[LimitSpan | ProductRun], bytes]):
    def __init__(self, resume: bytes | None, plant: PlantConfig) -> None:
        self.plant = plant
        self.tracker: LimitTracker | None = pickle.loads(resume) if resume else None
        if self.tracker is not None:
            self.tracker.limits = limits_of(plant, self.tracker.machine)

    def on_batch(self, values: list[Any]) -> tuple[list[list[LimitSpan | ProductRun]], bool]:
        tr = self.tracker
        out: dict[tuple[str, Any], LimitSpan | ProductRun] = {}  # the last state of each
        for x in values:
            if type(x) is ProcessValues:
                if tr is None:
                    tr = self.tracker = LimitTracker(x.machine, limits_of(self.plant, x.machine))
                for s in tr.on_values(x):
                    out[(s.name, s.start)] = s
                continue
            seq, ev = x
            if tr is None:
                tr = self.tracker = LimitTracker(ev.machine, limits_of(self.plant, ev.machine))
            runs = tr.on_work_order(ev) if type(ev) is WorkOrderEvent else tr.on_report(seq, ev)
            for r in runs:
                out[("", r.start)] = r  # "" : no value name starts so (a product run)
        return [list(out.values())], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.tracker, protocol=pickle.HIGHEST_PROTOCOL)


def limit_span_rows(plant: PlantConfig, checked: Stream[Any]) -> Stream[Any]:
    """Spans and product runs, from the validator's output (machine events and process values)."""
    keyed = op.flat_map_batch("limit_inputs", checked, _inputs)
    spans = op.stateful_batch("limit_spans", keyed, lambda resume: LimitLogic(resume, plant))
    return op.flat_map_batch("limit_span_rows", spans, rows_of)
