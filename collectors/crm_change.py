"""Change control in the CRM API (mesflow/change_control.py, docs/crm.md "Change control").

Two parts: the hooks `screen` and `applied` that the order intake (collectors/crm_api.py,
post_order) calls inside its transaction, and an APIRouter with
`GET /api/v1/change-requests/{id}` that create_app includes behind the same guard.
"""

# No `from __future__ import annotations`: FastAPI must see the local `caller` in the
# route signatures, which string annotations would hide.
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.encoders import jsonable_encoder
from pydantic import Field

from mesflow import change_control
from mesflow.db import connect
from mesflow.plant import PlantConfig
from mesflow.settings import Settings

RequestId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def screen(
    conn: psycopg.Connection[Any],
    *,
    order_no: str,
    stored_version: int,
    version: int,
    change: dict[str, Any],
    snapshot: dict[str, Any],
    client: str,
) -> Any:
    """For a newer version of an existing order, under the intake's lock: an IntakeResult
    to answer at once (held, or stale against a held version), or the Screen to go on with."""
    from collectors.crm_api import IntakeResult  # here: crm_api imports this module

    above = change_control.stale_pending(conn, order_no, version)
    if above is not None:
        return IntakeResult(
            status="ignored", reason="stale_version", order_no=order_no, version=version,
            stored_version=above,
        )  # fmt: skip
    got = change_control.screen_intake(
        conn, order_no=order_no, from_version=stored_version, to_version=version,
        change=change, snapshot={"order_no": order_no, "version": version, **snapshot},
        requested_by=client,
    )  # fmt: skip
    if got.held:
        return IntakeResult(
            status="held",
            reason="order_locked: a work order has started; the change waits for a planner",
            order_no=order_no,
            version=version,
            stored_version=stored_version,
            changed=sorted(change),
            change_request=got.change_request,
            superseded=got.superseded,
        )
    return got


def applied(
    conn: psycopg.Connection[Any],
    plant: PlantConfig,
    settings: Settings,
    screened: Any,
    *,
    order_no: str,
    stored_version: int,
    version: int,
    change: dict[str, Any],
    snapshot: dict[str, Any],
    client: str,
) -> int | None:
    """After the intake applied a change at once: record it and tell the floor."""
    return change_control.after_apply(
        conn, plant, change_control.load_alerts(settings.alerts_config, plant),
        order_no=order_no, from_version=stored_version, to_version=version, change=change,
        snapshot={"order_no": order_no, "version": version, **snapshot},
        requested_by=client, source="crm",
        superseded=getattr(screened, "superseded", None),
    )  # fmt: skip


def router(database_url: str, caller: Callable[..., Any]) -> APIRouter:
    """GET of a change request; `caller` is create_app's authentication dependency."""
    from collectors.crm_api import Problem  # here: crm_api imports this module

    api = APIRouter(prefix="/api/v1/change-requests", tags=["change control"])

    @api.get(
        "/{request_id}",
        summary="A change request of a locked order and its decision",
        responses={404: {"model": Problem, "description": "No such change request."}},
    )
    def get_change_request(
        request_id: Annotated[RequestId, Path()], _who: Annotated[Any, Depends(caller)]
    ) -> Any:
        with connect(database_url) as conn:
            found = change_control.get_request(conn, request_id)
        if found is None:
            raise HTTPException(404, f"unknown change request {request_id}")
        return jsonable_encoder(found)

    return api
