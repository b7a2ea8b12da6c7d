"""Traceability for the CRM: GET a lot's orders and customers, or an order's lots,
machines, operators, stops and inspections (docs/crm.md, docs/traceability.md).

An APIRouter that create_app (collectors/crm_api.py) includes under the API prefix, so the
same guard authenticates every request (bearer token or signed request), and errors have
the same problem+json shape. Read-only: nothing here writes.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` in the
# route signatures, which string annotations would hide.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import AfterValidator

from mesflow import trace
from mesflow.db import connect
from mesflow.events import Id
from mesflow.ingest_log import safe_text
from mesflow.plant import PlantConfig


def _no_controls(value: str) -> str:
    # A lot or order id never holds a control character: refuse one with a 422 naming
    # the field rather than looking it up (the contract refuses NUL already).
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("may not contain control characters")
    return value


TraceId = Annotated[Id, AfterValidator(_no_controls)]


def router(plant: PlantConfig, database_url: str, caller: Callable[..., Any]) -> APIRouter:
    """The trace routes; `caller` is create_app's authentication dependency."""
    from collectors.crm_api import Problem  # here: crm_api imports this module

    tz = plant.tz
    api = APIRouter(prefix="/api/v1/trace", tags=["traceability"])

    @api.get(
        "/lots/{lot}",
        summary="A lot's reports, orders and customers",
        responses={404: {"model": Problem, "description": "No report names this lot."}},
    )
    def get_lot(lot: Annotated[TraceId, Path()], _who: Annotated[Any, Depends(caller)]) -> Any:
        with connect(database_url) as conn:
            found = trace.lot_trace(conn, lot, tz)
        if not found.found:
            raise HTTPException(404, f"no report names lot {safe_text(lot)[:80]!r}")
        return trace.jsonable(
            {
                "lot": lot,
                "reports": found.reports,
                "orders": found.orders,
                "production_lots": found.products,
                "material_lots": found.materials,
            }
        )

    @api.get(
        "/orders/{order_no}",
        summary="An order's lots, work orders, machines, operators, stops and inspections",
        responses={404: {"model": Problem, "description": "No such order."}},
    )
    def get_order(
        order_no: Annotated[TraceId, Path()], _who: Annotated[Any, Depends(caller)]
    ) -> Any:
        with connect(database_url) as conn:
            found = trace.order_trace(conn, order_no, tz)
        if not found.found:
            raise HTTPException(404, f"unknown order {safe_text(order_no)[:80]!r}")
        return trace.jsonable(
            {
                "order_no": order_no,
                "order": found.order,
                **{name: getattr(found, name) for name in trace.SECTIONS},
            }
        )

    return api
