"""CRM order intake: an HTTP API that lands orders and work orders in the ingest log.

Shape shared by every collector: receive (HTTP), map to the event contract (`order`,
`work_order`), hand to the ingest log, and only then answer the source. Each accepted
request is one transaction: the inbox row (delivery id), the version-guarded snapshot,
the history row (who, when, what changed) and the canonical event in the ingest log.
So a 2xx means it is stored, and a 4xx/5xx means nothing is (ARCHITECTURE rule 2).

Integrator documentation: docs/crm.md; OpenAPI at /docs and /openapi.json.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at
# runtime, and the dependencies in them are local to create_app.
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from mesflow.db import connect
from mesflow.events import EventTime, Id, OrderEvent, WorkOrderEvent
from mesflow.ingest_log import LogRecord, append, dedupe_key
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from notify import webhooks

log = logging.getLogger("crm_api")

API_PREFIX = "/api/v1"
ORDER_FIELDS = ("customer", "priority", "product", "qty", "due", "status")
WORK_ORDER_FIELDS = ("order_no", "product", "qty", "machine")


# --- request and response models (the OpenAPI schema is generated from these) ---------


class OrderIn(BaseModel):
    """A full snapshot of one CRM order. Send every field on every change."""

    model_config = ConfigDict(extra="ignore")

    order_no: Id = Field(description="The CRM's order number, unique per CRM.")
    version: NonNegativeInt = Field(
        description="Rises with every change of the order; a version not above the stored one "
        "is ignored."
    )
    customer: str = Field(min_length=1, max_length=200)
    priority: PositiveInt = Field(description="1 is the most urgent.")
    product: Id = Field(description="A product id of the plant configuration.")
    qty: PositiveInt = Field(description="Ordered quantity (parts).")
    due: EventTime = Field(description="Due time, RFC 3339 with offset.")
    status: Literal["open", "on_hold", "cancelled", "closed"] = Field(
        description="A hold or a cancellation is a status, never a delete."
    )
    ts: EventTime | None = Field(
        default=None, description="When the CRM made this change (RFC 3339); default: receipt."
    )
    id: Id | None = Field(default=None, description="The CRM's event id, if it has one.")

    def event(self, received: datetime) -> OrderEvent:
        return OrderEvent(
            type="order",
            ts=self.ts or received,
            id=self.id,
            order_no=self.order_no,
            version=self.version,
            customer=self.customer,
            priority=self.priority,
            product=self.product,
            qty=self.qty,
            due=self.due,
            status=self.status,
        )


class WorkOrderIn(BaseModel):
    """One work order of an order (the MES's unit of execution); send it whole."""

    model_config = ConfigDict(extra="ignore")

    work_order: Id
    order_no: Id = Field(description="The order it feeds; post the order first.")
    product: Id = Field(description="Must be the order's product.")
    qty: PositiveInt
    machine: Id | None = Field(default=None, description="A machine id of the plant, if planned.")
    ts: EventTime | None = Field(
        default=None,
        description="When the CRM made this change; an older one than the stored is ignored.",
    )
    id: Id | None = None

    def event(self, received: datetime) -> WorkOrderEvent:
        return WorkOrderEvent(
            type="work_order",
            ts=self.ts or received,
            id=self.id,
            work_order=self.work_order,
            order_no=self.order_no,
            product=self.product,
            qty=self.qty,
            machine=self.machine,
        )


class IntakeResult(BaseModel):
    status: Literal["accepted", "duplicate", "ignored", "unchanged"]
    reason: str | None = None
    order_no: str | None = None
    work_order: str | None = None
    version: int | None = None
    stored_version: int | None = None
    changed: list[str] = Field(default_factory=list, description="Fields this change altered.")


class FieldProblem(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    error: str
    message: str
    fields: list[FieldProblem] = Field(default_factory=list)


# --- configuration ---------------------------------------------------------------------


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """'client:value,client2:value2' -> {client: value}; a value may contain ':'."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        client, sep, value = item.partition(":")
        if not sep or not client or not value:
            raise ValueError(f"{what}: expected client:value, got {item.split(':')[0]!r}...")
        pairs[client.strip()] = value.strip()
    return pairs


@dataclass(frozen=True)
class Clients:
    """Who may post: bearer token -> client id, and client id -> whsec_ signing secret."""

    tokens: dict[str, str]  # token -> client
    secrets: dict[str, str]  # client -> whsec_

    @classmethod
    def from_settings(cls, settings: Settings) -> "Clients":
        tokens = parse_pairs(settings.crm_tokens, "MESFLOW_CRM_TOKENS")
        secrets = parse_pairs(settings.crm_signing_secrets, "MESFLOW_CRM_SIGNING_SECRETS")
        for client, secret in secrets.items():
            try:
                webhooks.secret_key(secret)
            except ValueError as err:
                raise ValueError(f"MESFLOW_CRM_SIGNING_SECRETS, client {client}: {err}") from None
        return cls({token: client for client, token in tokens.items()}, secrets)


@dataclass(frozen=True)
class Caller:
    client: str
    delivery_id: str | None


# --- the app ---------------------------------------------------------------------------


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _validation_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = []
    for err in exc.errors():
        name = _field_name(tuple(err.get("loc", ())))
        kind = str(err.get("type", ""))
        msg = str(err.get("msg", "invalid"))
        if kind == "missing":
            msg = "this field is required"
        elif kind == "json_invalid":
            name, msg = "body", f"not valid JSON: {err.get('ctx', {}).get('error', msg)}"
        fields.append(FieldProblem(field=name, message=msg, type=kind))
    text = "; ".join(f"{f.field}: {f.message}" for f in fields)
    body = Problem(error="invalid_request", message=f"nothing stored: {text}", fields=fields)
    return JSONResponse(status_code=422, content=body.model_dump())


def _invalid(field: str, message: str) -> HTTPException:
    # Checks against the plant and the stored orders, reported like pydantic's own.
    problem = Problem(
        error="invalid_request",
        message=f"nothing stored: {field}: {message}",
        fields=[FieldProblem(field=field, message=message, type="value_error")],
    )
    return HTTPException(status_code=422, detail=problem.model_dump())


def create_app(plant: PlantConfig, database_url: str, settings: Settings) -> FastAPI:
    """The intake app; `clients` come from settings (MESFLOW_CRM_TOKENS, ..._SIGNING_SECRETS)."""
    clients = Clients.from_settings(settings)
    if not clients.tokens and not clients.secrets:
        log.warning("no CRM client configured: every request will be refused (docs/crm.md)")
    products = {p.id for p in plant.products}
    machines = set(plant.machines)

    app = FastAPI(
        title="mesflow CRM order intake",
        version="1",
        description="The CRM posts order snapshots and work orders; see docs/crm.md.",
        responses={
            401: {"model": Problem, "description": "No valid bearer token or signature."},
            422: {"model": Problem, "description": "A field is invalid; nothing is stored."},
        },
    )
    app.add_exception_handler(RequestValidationError, _validation_problem)

    async def http_problem(request: Request, exc: Exception) -> JSONResponse:
        # Every error has the same shape (Problem), including starlette's own 404/405.
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.detail, dict):
            content = exc.detail
        else:
            error = _ERROR_NAMES.get(exc.status_code, "error")
            content = Problem(error=error, message=str(exc.detail)).model_dump()
        return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)

    app.add_exception_handler(StarletteHTTPException, http_problem)

    bearer = HTTPBearer(auto_error=False, description="A token from MESFLOW_CRM_TOKENS.")

    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        idempotency_key: Annotated[
            str | None,
            Header(
                description="Delivery id for a bearer request: a repeat is answered "
                "'duplicate' and changes nothing."
            ),
        ] = None,
    ) -> Caller:
        """Bearer token or Standard Webhooks signature; the delivery id for the inbox."""
        if credentials is not None:
            client = clients.tokens.get(credentials.credentials)
            if client is None:
                raise HTTPException(401, "unknown bearer token", {"WWW-Authenticate": "Bearer"})
            return Caller(client, request.headers.get("webhook-id") or idempotency_key)
        if "webhook-signature" in request.headers:
            body = await request.body()
            last: webhooks.SignatureError | None = None
            # A handful of CRMs at most: trying each one's secret identifies the sender.
            for client, secret in clients.secrets.items():
                try:
                    msg_id = webhooks.verify(secret, request.headers, body)
                except webhooks.SignatureError as err:
                    last = err
                    continue
                return Caller(client, msg_id)
            raise HTTPException(401, f"bad signature: {last or 'no signing client configured'}")
        raise HTTPException(
            401,
            "authentication required: Authorization: Bearer <token>, or a Standard Webhooks "
            "signed request",
            {"WWW-Authenticate": "Bearer"},
        )

    @contextmanager
    def transaction() -> Iterator[psycopg.Connection[Any]]:
        # A connection per request: CRM traffic is a few requests a minute, and a fresh
        # connection cannot carry a broken state from an earlier request.
        with connect(database_url) as conn, conn.transaction():
            yield conn

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        f"{API_PREFIX}/orders",
        response_model=IntakeResult,
        response_model_exclude_none=True,
        status_code=200,
        responses={201: {"model": IntakeResult, "description": "A new order was stored."}},
        summary="Create or change an order (full snapshot)",
    )
    def post_order(order: OrderIn, who: Annotated[Caller, Depends(caller)]) -> JSONResponse:
        if products and order.product not in products:
            raise _invalid(
                "product", f"unknown product {order.product!r}; known: {sorted(products)}"
            )
        received = datetime.now(UTC)
        event = order.event(received)
        with transaction() as conn:
            dup = _claim_delivery(conn, who, "order", order.order_no)
            if dup is not None:
                return _result(200, dup)
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('crm_order'), hashtext(%s))",
                (order.order_no,),
            )
            old = conn.execute(
                f"SELECT version, {', '.join(ORDER_FIELDS)} FROM crm_order WHERE order_no = %s",
                (order.order_no,),
            ).fetchone()
            if old is not None and order.version <= old[0]:
                result = IntakeResult(
                    status="ignored",
                    reason="stale_version",
                    order_no=order.order_no,
                    version=order.version,
                    stored_version=int(old[0]),
                )
                _finish_delivery(conn, who, result)
                return _result(200, result)
            new = {f: getattr(order, f) for f in ORDER_FIELDS}
            change = _diff(dict(zip(ORDER_FIELDS, old[1:], strict=True)) if old else None, new)
            # The guard repeats the check above in SQL: correct even without the lock.
            row = conn.execute(
                """INSERT INTO crm_order (order_no, version, customer, priority, product, qty,
                                          due, status, event_ts, changed_by)
                   VALUES (%(order_no)s, %(version)s, %(customer)s, %(priority)s, %(product)s,
                           %(qty)s, %(due)s, %(status)s, %(ts)s, %(client)s)
                   ON CONFLICT (order_no) DO UPDATE
                   SET version = EXCLUDED.version, customer = EXCLUDED.customer,
                       priority = EXCLUDED.priority, product = EXCLUDED.product,
                       qty = EXCLUDED.qty, due = EXCLUDED.due, status = EXCLUDED.status,
                       event_ts = EXCLUDED.event_ts, changed_by = EXCLUDED.changed_by,
                       updated_at = now()
                   WHERE EXCLUDED.version > crm_order.version
                   RETURNING version""",
                {**new, "order_no": order.order_no, "version": order.version, "ts": event.ts,
                 "client": who.client},
            ).fetchone()  # fmt: skip
            assert row is not None
            _history(conn, order.order_no, None, order.version, who, event.ts, change)
            # append() opens conn.transaction() itself: nested here it is a savepoint, so
            # the log row commits with the snapshot or not at all.
            append(
                conn,
                [
                    LogRecord(
                        f"crm:{who.client}",
                        event.model_dump_json(exclude_none=True).encode(),
                        dedupe_key(f"order:{order.order_no}:{order.version}"),
                    )
                ],
            )
            result = IntakeResult(
                status="accepted",
                order_no=order.order_no,
                version=order.version,
                changed=sorted(change),
            )
            _finish_delivery(conn, who, result)
        log.info(
            "order %s v%d from %s accepted: %s",
            order.order_no,
            order.version,
            who.client,
            ", ".join(sorted(change)) or "no field changed",
        )
        return _result(201 if old is None else 200, result)

    @app.post(
        f"{API_PREFIX}/work-orders",
        response_model=IntakeResult,
        response_model_exclude_none=True,
        status_code=200,
        responses={201: {"model": IntakeResult, "description": "A new work order was stored."}},
        summary="Create or change a work order",
    )
    def post_work_order(wo: WorkOrderIn, who: Annotated[Caller, Depends(caller)]) -> JSONResponse:
        if wo.machine is not None and wo.machine not in machines:
            raise _invalid("machine", f"unknown machine {wo.machine!r}")
        received = datetime.now(UTC)
        event = wo.event(received)
        with transaction() as conn:
            order = conn.execute(
                "SELECT product FROM crm_order WHERE order_no = %s", (wo.order_no,)
            ).fetchone()
            if order is None:
                raise _invalid("order_no", f"unknown order {wo.order_no!r}: post the order first")
            if order[0] != wo.product:
                raise _invalid(
                    "product", f"the order {wo.order_no} is for {order[0]!r}, not {wo.product!r}"
                )
            dup = _claim_delivery(conn, who, "work_order", wo.work_order)
            if dup is not None:
                return _result(200, dup)
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('work_order'), hashtext(%s))",
                (wo.work_order,),
            )
            old = conn.execute(
                f"""SELECT revision, event_ts, {", ".join(WORK_ORDER_FIELDS)}
                    FROM work_order WHERE work_order = %s""",
                (wo.work_order,),
            ).fetchone()
            new = {f: getattr(wo, f) for f in WORK_ORDER_FIELDS}
            if old is not None and event.ts < old[1]:
                result = IntakeResult(
                    status="ignored", reason="stale_timestamp", work_order=wo.work_order,
                    order_no=wo.order_no, stored_version=int(old[0]),
                )  # fmt: skip
                _finish_delivery(conn, who, result)
                return _result(200, result)
            change = _diff(dict(zip(WORK_ORDER_FIELDS, old[2:], strict=True)) if old else None, new)
            if old is not None and not change:
                result = IntakeResult(
                    status="unchanged", work_order=wo.work_order, order_no=wo.order_no,
                    version=int(old[0]),
                )  # fmt: skip
                _finish_delivery(conn, who, result)
                return _result(200, result)
            revision = 1 if old is None else int(old[0]) + 1
            conn.execute(
                """INSERT INTO work_order (work_order, order_no, product, qty, machine, revision,
                                           event_ts, changed_by)
                   VALUES (%(work_order)s, %(order_no)s, %(product)s, %(qty)s, %(machine)s,
                           %(revision)s, %(ts)s, %(client)s)
                   ON CONFLICT (work_order) DO UPDATE
                   SET order_no = EXCLUDED.order_no, product = EXCLUDED.product,
                       qty = EXCLUDED.qty, machine = EXCLUDED.machine,
                       revision = EXCLUDED.revision, event_ts = EXCLUDED.event_ts,
                       changed_by = EXCLUDED.changed_by, updated_at = now()""",
                {**new, "work_order": wo.work_order, "revision": revision, "ts": event.ts,
                 "client": who.client},
            )  # fmt: skip
            _history(conn, wo.order_no, wo.work_order, revision, who, event.ts, change)
            append(
                conn,
                [
                    LogRecord(
                        f"crm:{who.client}",
                        event.model_dump_json(exclude_none=True).encode(),
                        dedupe_key(f"work_order:{wo.work_order}:{revision}"),
                    )
                ],
            )
            result = IntakeResult(
                status="accepted", work_order=wo.work_order, order_no=wo.order_no,
                version=revision, changed=sorted(change),
            )  # fmt: skip
            _finish_delivery(conn, who, result)
        log.info("work order %s r%d from %s accepted", wo.work_order, revision, who.client)
        return _result(201 if old is None else 200, result)

    @app.get(f"{API_PREFIX}/orders/{{order_no}}", summary="An order, its work orders and history")
    def get_order(order_no: str, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        with connect(database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
            order = cur.execute(
                """SELECT order_no, version, customer, priority, product, qty, due, status,
                          event_ts, changed_by, created_at, updated_at
                   FROM crm_order WHERE order_no = %s""",
                (order_no,),
            ).fetchone()
            if order is None:
                raise HTTPException(404, f"unknown order {order_no!r}")
            work_orders = cur.execute(
                """SELECT work_order, product, qty, machine, revision, event_ts, changed_by
                   FROM work_order WHERE order_no = %s ORDER BY work_order""",
                (order_no,),
            ).fetchall()
            history = cur.execute(
                """SELECT work_order, version, changed_by, accepted_at, event_ts, delivery_id,
                          change
                   FROM order_history WHERE order_no = %s ORDER BY id""",
                (order_no,),
            ).fetchall()
        return json.loads(
            json.dumps(
                {"order": order, "work_orders": work_orders, "history": history},
                default=_json_default,
            )
        )

    return app


_ERROR_NAMES = {401: "unauthorized", 404: "not_found", 409: "conflict", 422: "invalid_request"}


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _result(status_code: int, result: IntakeResult) -> JSONResponse:
    return JSONResponse(status_code=status_code, content=result.model_dump(exclude_none=True))


def _claim_delivery(
    conn: psycopg.Connection[Any], who: Caller, kind: str, key: str
) -> IntakeResult | None:
    """Record the delivery id; if it was seen before, the answer for a duplicate."""
    if who.delivery_id is None:
        return None
    # A concurrent request with the same id waits on the primary key here until the first
    # commits, then sees the conflict: exactly one of them is processed.
    row = conn.execute(
        """INSERT INTO intake_delivery (client, delivery_id, kind, key) VALUES (%s, %s, %s, %s)
           ON CONFLICT (client, delivery_id) DO NOTHING RETURNING 1""",
        (who.client, who.delivery_id, kind, key),
    ).fetchone()
    if row is not None:
        return None
    first = conn.execute(
        "SELECT outcome FROM intake_delivery WHERE client = %s AND delivery_id = %s",
        (who.client, who.delivery_id),
    ).fetchone()
    return IntakeResult(
        status="duplicate",
        reason=f"delivery {who.delivery_id} was already processed"
        + (f" ({first[0]})" if first and first[0] else ""),
        order_no=key if kind == "order" else None,
        work_order=key if kind == "work_order" else None,
    )


def _finish_delivery(conn: psycopg.Connection[Any], who: Caller, result: IntakeResult) -> None:
    if who.delivery_id is not None:
        conn.execute(
            "UPDATE intake_delivery SET outcome = %s WHERE client = %s AND delivery_id = %s",
            (result.status, who.client, who.delivery_id),
        )


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def _diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{"field": {"old": x, "new": y}} for each field that differs (all fields when new)."""
    change: dict[str, dict[str, Any]] = {}
    for name, value in new.items():
        before = None if old is None else old[name]
        if old is None or before != value:
            change[name] = {"old": _jsonable(before), "new": _jsonable(value)}
    return change


def _history(
    conn: psycopg.Connection[Any],
    order_no: str,
    work_order: str | None,
    version: int,
    who: Caller,
    event_ts: datetime,
    change: dict[str, dict[str, Any]],
) -> None:
    conn.execute(
        """INSERT INTO order_history (order_no, work_order, version, changed_by, event_ts,
                                      delivery_id, change)
           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        (order_no, work_order, version, who.client, event_ts, who.delivery_id, Jsonb(change)),
    )


def serve(plant: PlantConfig, database_url: str, settings: Settings) -> None:
    """The `mesflow run api` component: uvicorn on MESFLOW_API_HOST:MESFLOW_API_PORT."""
    import uvicorn

    app = create_app(plant, database_url, settings)
    print(
        f"api: CRM intake on http://{settings.api_host}:{settings.api_port} (OpenAPI at /docs)",
        flush=True,
    )
    # uvicorn handles SIGINT/SIGTERM itself: in-flight requests finish, then it exits.
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")
