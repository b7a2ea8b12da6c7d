"""Promise dates for sales: POST /api/v1/promise answers "if we take N of product P with
priority K now, when would it be done, and what would slip?" (docs/crm.md, docs/dispatch.md).

An APIRouter that create_app (collectors/crm_api.py) includes, so the same guard
authenticates every request and limits its body, and errors have the same problem+json
shape. Read-only: the answer comes from the dispatch lists computed on read
(dashboards/dispatch_queries.py); nothing is stored or changed.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` in the
# route signatures, which string annotations would hide.
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from dashboards import dispatch_queries as dq
from mesflow.db import connect
from mesflow.dispatch import HORIZON_DAYS
from mesflow.plant import PlantConfig
from streams.hour_clock import from_us


def _wall_us() -> int:
    return time.time_ns() // 1000


class PromiseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product: str = Field(min_length=1, max_length=200, description="A product id of the plant.")
    qty: int = Field(strict=True, gt=0, le=1_000_000_000, description="Parts wanted.")
    priority: int = Field(
        strict=True, gt=0, le=1_000_000, description="The order's priority, 1 = most urgent."
    )
    machine: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Ask about this machine only (default: every machine that can run it).",
    )


class SlipOut(BaseModel):
    order_no: str
    work_order: str
    due: datetime
    finish_before: datetime | None = Field(description="Projected finish without the new order.")
    finish_after: datetime | None = Field(
        description="Projected finish with it (null: not within the horizon)."
    )


class BasisOut(BaseModel):
    rate_per_hour: float = Field(description="Good parts per planned hour assumed.")
    source: Literal["measured", "ideal"]


class PromiseOut(BaseModel):
    finish: datetime | None = Field(
        description="Projected finish in plant time; null: not within `horizon_days`."
    )
    start: datetime | None
    machine: str
    within_days: float = Field(description="The horizon of the projection, in days.")
    message: str = Field(description="The answer in plain words (English).")
    slips: list[SlipOut] = Field(
        description="Orders that are on time today and would finish after their due date."
    )
    basis: BasisOut
    as_of: datetime = Field(description="The 'now' the projection starts from.")


def router(
    plant: PlantConfig,
    database_url: str,
    caller: Callable[..., Any],
    clock: Callable[[], int] | None = None,
) -> APIRouter:
    """The promise route; `caller` is create_app's authentication dependency. `clock`
    (microseconds since the epoch) is the wall clock unless a test fixes it."""
    from collectors.crm_api import Problem, _invalid  # here: crm_api imports this module

    now_us = clock or (lambda: _wall_us())  # looked up per call: a test may fix it
    tz = plant.tz
    products = {p.id for p in plant.products}
    api = APIRouter(prefix="/api/v1", tags=["promise dates"])

    def local(t: int | None) -> datetime | None:
        return None if t is None else from_us(t).astimezone(tz)

    @api.post(
        "/promise",
        response_model=PromiseOut,
        summary="When would a new order be done, and what would slip? (changes nothing)",
        responses={422: {"model": Problem, "description": "Unknown product or machine."}},
    )
    def post_promise(body: PromiseIn, _who: Annotated[Any, Depends(caller)]) -> PromiseOut:
        if body.product not in products:
            raise _invalid("product", f"unknown product {body.product[:80]!r}")
        if body.machine is not None and body.machine not in plant.machines:
            raise _invalid("machine", f"unknown machine {body.machine[:80]!r}")
        now = now_us()
        with connect(database_url) as conn:
            inputs = dq.read_inputs(conn, plant, now)
        answer = dq.promise_answer(
            plant, inputs, now, body.product, body.qty, body.priority, body.machine
        )
        if answer is None:
            where = f"machine {body.machine!r}" if body.machine else "any machine"
            raise _invalid(
                "machine" if body.machine else "product",
                f"{where} cannot run product {body.product!r} (plant file: products)",
            )
        new = answer.impact.new
        finish = local(answer.finish)
        message = (
            f"{body.qty} × {body.product} would be done by {finish:%Y-%m-%d %H:%M} on "
            f"{answer.machine}"
            if finish is not None
            else f"not within {HORIZON_DAYS} days on any machine"
        )
        if answer.impact.pushed:
            message += f"; {len(answer.impact.pushed)} order(s) would finish after their due date"
        return PromiseOut(
            finish=finish,
            start=local(answer.start),
            machine=answer.machine,
            within_days=HORIZON_DAYS,
            message=message,
            slips=[
                SlipOut(
                    order_no=s.job.order_no,
                    work_order=s.job.work_order,
                    due=from_us(s.job.due).astimezone(tz),
                    finish_before=local(s.finish_before),
                    finish_after=local(s.finish_after),
                )
                for s in answer.impact.pushed
            ],
            basis=BasisOut(rate_per_hour=round(new.rate.per_hour, 3), source=new.rate.source),
            as_of=from_us(now).astimezone(tz),
        )

    return api
