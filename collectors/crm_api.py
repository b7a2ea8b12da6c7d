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
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collectors import crm_change, crm_dispatch, crm_trace
from mesflow.db import connect
from mesflow.events import EventTime, Id, OrderEvent, Routing, WorkOrderEvent
from mesflow.ingest_log import append, record_for
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from notify import webhooks

log = logging.getLogger("crm_api")
E = TypeVar("E", OrderEvent, WorkOrderEvent)

API_PREFIX = "/api/v1"
ORDER_FIELDS = ("customer", "priority", "product", "qty", "due", "status")
WORK_ORDER_FIELDS = ("order_no", "product", "qty", "machine", "routing")
# Where the guard puts the authenticated caller for the route (ASGI scope key).
CALLER_KEY = "mesflow.caller"

# --- what the tables can hold: a value outside is a 422 naming the field, never a 500 or
# a row that cannot be read back (issue 8, item 1) ---------------------------------------

# The event contract's bounds (mesflow/events.py), all within the columns (integer, bigint):
# what the API accepts, the dataflow accepts.
MAX_PRIORITY = 2**31 - 1
MAX_QTY = 1_000_000_000
MAX_VERSION = 2**53 - 1  # the largest integer every JSON reader holds exactly
# Times a CRM can mean: far from year 1 and 9999, where an offset or an ETA computed from
# them would overflow Python's datetime (a stored `0001-01-01T00:00:00+05:00` could not be
# read back at all).
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


def _clean_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded to UTF-8.
    bad = _BAD_CHARS.search(value)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate"
        raise ValueError(f"may not contain {what} (\\u{ord(bad.group()):04x})")
    return value


def _bounded_time(value: datetime) -> datetime:
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError(
            f"must be between {MIN_TIME:%Y-%m-%d} and {MAX_TIME:%Y-%m-%d} (UTC), with an offset"
        )
    return value


ApiId = Annotated[Id, AfterValidator(_clean_text)]
ApiText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_clean_text)]
ApiTime = Annotated[EventTime, AfterValidator(_bounded_time)]
# Strict: the string "5" or 5.5 is not a quantity; the bound is the column's.
Version = Annotated[int, Field(strict=True, ge=0, le=MAX_VERSION)]
Priority = Annotated[int, Field(strict=True, gt=0, le=MAX_PRIORITY)]
Quantity = Annotated[int, Field(strict=True, gt=0, le=MAX_QTY)]
DeliveryId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


# --- request and response models (the OpenAPI schema is generated from these) ---------


class OrderIn(BaseModel):
    """A full snapshot of one CRM order. Send every field on every change."""

    model_config = ConfigDict(extra="ignore")

    order_no: ApiId = Field(description="The CRM's order number, unique per CRM.")
    version: Version = Field(
        description="Rises with every change of the order; a version not above the stored one "
        "is ignored."
    )
    customer: ApiText
    priority: Priority = Field(description="1 is the most urgent.")
    product: ApiId = Field(description="A product id of the plant configuration.")
    qty: Quantity = Field(description="Ordered quantity (parts).")
    due: ApiTime = Field(description="Due time, RFC 3339 with offset (years 1970 to 2199).")
    status: Literal["open", "on_hold", "cancelled", "closed"] = Field(
        description="A hold or a cancellation is a status, never a delete."
    )
    ts: ApiTime | None = Field(
        default=None, description="When the CRM made this change (RFC 3339); default: receipt."
    )
    id: ApiId | None = Field(default=None, description="The CRM's event id, if it has one.")

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

    work_order: ApiId
    order_no: ApiId = Field(description="The order it feeds; post the order first.")
    product: ApiId = Field(description="Must be the order's product.")
    qty: Quantity
    machine: ApiId | None = Field(
        default=None, description="A machine id of the plant, if planned."
    )
    routing: Routing | None = Field(
        default=None,
        description="Its operations in order (op, name, machines, ideal_cycle_seconds); "
        "without it, the plant file's routing of its product (docs/routings.md).",
    )
    ts: ApiTime | None = Field(
        default=None,
        description="When the CRM made this change; an older one than the stored is ignored.",
    )
    id: ApiId | None = None

    def routing_json(self) -> list[dict[str, Any]] | None:
        """The routing as stored (work_order.routing) and compared for changes."""
        if self.routing is None:
            return None
        return [s.model_dump(exclude_none=True) for s in self.routing]

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
            routing=self.routing,
        )


class IntakeResult(BaseModel):
    status: Literal["accepted", "duplicate", "ignored", "unchanged", "held"]
    reason: str | None = None
    order_no: str | None = None
    work_order: str | None = None
    version: int | None = None
    stored_version: int | None = None
    changed: list[str] = Field(default_factory=list, description="Fields this change altered.")
    change_request: int | None = Field(
        default=None, description="held: the change request waiting for a planner."
    )
    superseded: int | None = Field(
        default=None, description="A pending change request this version replaced."
    )


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


def _problem_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=Problem(error=error, message=message).model_dump(),
        headers=dict(headers or {}),
    )


class IntakeGuard:
    """ASGI middleware in front of the API routes: who is asking, and how much, first.

    Order of checks, so that an anonymous or oversized request costs nothing:
    1. credentials from the headers alone (a bearer token, or the shape and freshness of
       the Standard Webhooks headers): 401 before a byte of the body is read;
    2. the declared Content-Length against the limit: 413 without reading the body;
    3. the body, read up to the limit (a chunked body that grows past it: 413 at once);
    4. for a signed request, the HMAC over method, request-target and body (401).
    The route then gets the caller from the scope and the body as read here.
    """

    def __init__(self, app: ASGIApp, clients: Clients, max_body_bytes: int) -> None:
        self.app = app
        self.clients = clients
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        # Refused before the body is read: tell the client not to keep sending on this
        # connection (uvicorn closes it after the answer).
        early = {"connection": "close"} if has_body else {}

        async def refuse(status: int, error: str, message: str, **extra: str) -> None:
            await _problem_response(status, error, message, {**early, **extra})(
                scope, receive, send
            )

        client: str | None = None
        signed_id: str | None = None
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            client = self.clients.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
            if client is None:
                await refuse(
                    401, "unauthorized", "unknown bearer token", **{"www-authenticate": "Bearer"}
                )
                return
        elif any(h in headers for h in ("webhook-signature", "webhook-id", "webhook-timestamp")):
            try:
                signed_id, _ = webhooks.check_headers(headers)
            except webhooks.SignatureError as err:
                await refuse(401, "unauthorized", f"bad signature: {err}")
                return
            if not self.clients.secrets:
                await refuse(401, "unauthorized", "bad signature: no signing client configured")
                return
        else:
            await refuse(
                401,
                "unauthorized",
                "authentication required: Authorization: Bearer <token>, or a signed request "
                "(webhook-id, webhook-timestamp, webhook-signature; docs/crm.md)",
                **{"www-authenticate": "Bearer"},
            )
            return

        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            if not declared.isdigit():
                await refuse(400, "bad_request", "Content-Length is not a number")
            else:
                await refuse(413, "too_large", f"the body may have at most {self.max_body} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nothing to answer, nothing stored
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                early = {"connection": "close"}
                await refuse(413, "too_large", f"the body may have at most {self.max_body} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body.decode()
        except UnicodeDecodeError as err:
            await _problem_response(
                422,
                "invalid_request",
                f"nothing stored: body: not valid UTF-8 (byte {err.start})",
            )(scope, receive, send)
            return

        if client is None:
            assert signed_id is not None
            raw_path = scope.get("raw_path") or path.encode()
            target = webhooks.request_target(
                raw_path.decode("latin-1"), scope.get("query_string", b"").decode("latin-1")
            )
            payload = webhooks.request_payload(scope["method"], target, body)
            # A handful of CRMs at most: trying each one's secret identifies the sender.
            for name, secret in self.clients.secrets.items():
                try:
                    webhooks.verify(secret, headers, payload)
                except webhooks.SignatureError:
                    continue
                client = name
                break
            else:
                await refuse(
                    401,
                    "unauthorized",
                    "bad signature: no webhook-signature matches the method, path and body "
                    "(signed content: docs/crm.md)",
                )
                return
        scope[CALLER_KEY] = Caller(client, signed_id)

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
    # The dataflow dead-letters an order event dated further ahead of its receipt than
    # this (streams/validate.py, ClockPolicy): refuse it here, where the CRM hears why.
    max_skew = timedelta(seconds=plant.plant.max_clock_skew_seconds)

    def check_clock(ts: datetime | None, received: datetime) -> None:
        if ts is not None and ts > received + max_skew:
            raise _invalid(
                "ts",
                f"{ts.isoformat()} is more than {max_skew.total_seconds():g} s ahead of the "
                f"server's clock ({received.isoformat(timespec='seconds')}); check the CRM's clock",
            )

    # Swagger UI and ReDoc from the assets fastapi-offline ships, not from a CDN: the docs
    # page works on a plant network without internet. No validator badge (an outside call).
    app = FastAPIOffline(
        title="mesflow CRM order intake",
        version="1",
        description="The CRM posts order snapshots and work orders; see docs/crm.md.",
        swagger_ui_parameters={"validatorUrl": None},
        responses={
            401: {"model": Problem, "description": "No valid bearer token or signature."},
            413: {"model": Problem, "description": "The body is over the size limit."},
            422: {"model": Problem, "description": "A field is invalid; nothing is stored."},
            503: {"model": Problem, "description": "The database is unavailable; retry."},
        },
    )
    app.add_middleware(IntakeGuard, clients=clients, max_body_bytes=settings.api_max_body_bytes)
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

    async def database_refused(request: Request, exc: Exception) -> JSONResponse:
        # Defence in depth: the models bound every value by its column, so this should not
        # happen; if it does, the transaction was rolled back and the caller hears why.
        log.warning("the database refused a value on %s: %s", request.url.path, exc)
        return _problem_response(
            422, "invalid_request", f"nothing stored: the database refused a value: {exc}"
        )

    async def database_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s: %s", request.url.path, exc)
        return _problem_response(
            503, "unavailable", "nothing stored: the database is unavailable; retry later",
            {"retry-after": "5"},
        )  # fmt: skip

    app.add_exception_handler(psycopg.DataError, database_refused)
    app.add_exception_handler(psycopg.OperationalError, database_away)

    bearer = HTTPBearer(auto_error=False, description="A token from MESFLOW_CRM_TOKENS.")

    def caller(
        request: Request,
        # Checked by IntakeGuard already; declared here so the OpenAPI shows the scheme.
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        idempotency_key: Annotated[
            DeliveryId | None,
            Header(
                description="Delivery id of a bearer request: a repeat with the same body "
                "is answered with the first answer again; with another body, 409."
            ),
        ] = None,
    ) -> Caller:
        """Bearer token or Standard Webhooks signature; the delivery id for the inbox."""
        who = request.scope.get(CALLER_KEY)
        if not isinstance(who, Caller):  # only if a route escaped the guard's prefix
            raise HTTPException(401, "authentication required", {"WWW-Authenticate": "Bearer"})
        if who.delivery_id is None and idempotency_key is not None:
            return Caller(who.client, idempotency_key)
        return who

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
        responses={
            201: {"model": IntakeResult, "description": "A new order was stored."},
            202: {"model": IntakeResult, "description": "Held: the order is locked."},
            409: {"model": Problem, "description": "The delivery id was used for another body."},
        },
        summary="Create or change an order (full snapshot)",
    )
    def post_order(order: OrderIn, who: Annotated[Caller, Depends(caller)]) -> JSONResponse:
        if products and order.product not in products:
            raise _invalid(
                "product", f"unknown product {order.product!r}; known: {sorted(products)}"
            )
        received = datetime.now(UTC)
        check_clock(order.ts, received)
        event = _contract_event(lambda: order.event(received))
        with transaction() as conn:
            dup = _claim_delivery(conn, who, "order", order.order_no, _request_hash(order))
            if dup is not None:
                return dup
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
                return _finish_delivery(conn, who, result, 200)
            new = {f: getattr(order, f) for f in ORDER_FIELDS}
            change = _diff(dict(zip(ORDER_FIELDS, old[1:], strict=True)) if old else None, new)
            # Change control (collectors/crm_change.py): a locked order's change is held.
            screened = None
            if old is not None:
                screened = crm_change.screen(
                    conn, order_no=order.order_no, stored_version=int(old[0]),
                    version=order.version, change=change, snapshot=new, client=who.client,
                )  # fmt: skip
                if isinstance(screened, IntakeResult):
                    code = 202 if screened.status == "held" else 200
                    return _finish_delivery(conn, who, screened, code)
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
            _append_event(conn, who, event, f"order:{order.order_no}:{order.version}")
            if old is not None:
                crm_change.applied(
                    conn, plant, settings, screened, order_no=order.order_no,
                    stored_version=int(old[0]), version=order.version, change=change,
                    snapshot=new, client=who.client,
                )  # fmt: skip
            result = IntakeResult(
                status="accepted",
                order_no=order.order_no,
                version=order.version,
                changed=sorted(change),
                superseded=getattr(screened, "superseded", None),
            )
            response = _finish_delivery(conn, who, result, 201 if old is None else 200)
        log.info(
            "order %s v%d from %s accepted: %s",
            order.order_no,
            order.version,
            who.client,
            ", ".join(sorted(change)) or "no field changed",
        )
        return response

    @app.post(
        f"{API_PREFIX}/work-orders",
        response_model=IntakeResult,
        response_model_exclude_none=True,
        status_code=200,
        responses={
            201: {"model": IntakeResult, "description": "A new work order was stored."},
            409: {"model": Problem, "description": "The delivery id was used for another body."},
        },
        summary="Create or change a work order",
    )
    def post_work_order(wo: WorkOrderIn, who: Annotated[Caller, Depends(caller)]) -> JSONResponse:
        if wo.machine is not None and wo.machine not in machines:
            raise _invalid("machine", f"unknown machine {wo.machine!r}")
        for i, step in enumerate(wo.routing or ()):
            unknown = next((m for m in step.machines if m not in machines), None)
            if unknown is not None:
                raise _invalid(f"routing.{i}.machines", f"unknown machine {unknown!r}")
        received = datetime.now(UTC)
        check_clock(wo.ts, received)
        event = _contract_event(lambda: wo.event(received))
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
            dup = _claim_delivery(conn, who, "work_order", wo.work_order, _request_hash(wo))
            if dup is not None:
                return dup
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
            new["routing"] = wo.routing_json()  # as the jsonb column reads back
            if old is not None and event.ts < old[1]:
                result = IntakeResult(
                    status="ignored", reason="stale_timestamp", work_order=wo.work_order,
                    order_no=wo.order_no, stored_version=int(old[0]),
                )  # fmt: skip
                return _finish_delivery(conn, who, result, 200)
            change = _diff(dict(zip(WORK_ORDER_FIELDS, old[2:], strict=True)) if old else None, new)
            if old is not None and not change:
                result = IntakeResult(
                    status="unchanged", work_order=wo.work_order, order_no=wo.order_no,
                    version=int(old[0]),
                )  # fmt: skip
                return _finish_delivery(conn, who, result, 200)
            revision = 1 if old is None else int(old[0]) + 1
            conn.execute(
                """INSERT INTO work_order (work_order, order_no, product, qty, machine, routing,
                                           revision, event_ts, changed_by)
                   VALUES (%(work_order)s, %(order_no)s, %(product)s, %(qty)s, %(machine)s,
                           %(routing)s, %(revision)s, %(ts)s, %(client)s)
                   ON CONFLICT (work_order) DO UPDATE
                   SET order_no = EXCLUDED.order_no, product = EXCLUDED.product,
                       qty = EXCLUDED.qty, machine = EXCLUDED.machine,
                       routing = EXCLUDED.routing,
                       revision = EXCLUDED.revision, event_ts = EXCLUDED.event_ts,
                       changed_by = EXCLUDED.changed_by, updated_at = now()""",
                {**new, "routing": None if new["routing"] is None else Jsonb(new["routing"]),
                 "work_order": wo.work_order, "revision": revision, "ts": event.ts,
                 "client": who.client},
            )  # fmt: skip
            _history(conn, wo.order_no, wo.work_order, revision, who, event.ts, change)
            _append_event(conn, who, event, f"work_order:{wo.work_order}:{revision}")
            result = IntakeResult(
                status="accepted", work_order=wo.work_order, order_no=wo.order_no,
                version=revision, changed=sorted(change),
            )  # fmt: skip
            response = _finish_delivery(conn, who, result, 201 if old is None else 200)
        log.info("work order %s r%d from %s accepted", wo.work_order, revision, who.client)
        return response

    @app.get(
        f"{API_PREFIX}/orders/{{order_no}}",
        summary="An order, its work orders and history",
        responses={404: {"model": Problem, "description": "No such order."}},
    )
    def get_order(
        order_no: Annotated[ApiId, Path()], who: Annotated[Caller, Depends(caller)]
    ) -> dict[str, Any]:
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
                """SELECT work_order, product, qty, machine, routing, revision, event_ts,
                          changed_by
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

    # Traceability (collectors/crm_trace.py): behind the same guard, same error shapes.
    app.include_router(crm_trace.router(plant, database_url, caller))
    app.include_router(crm_change.router(database_url, caller))  # change control
    app.include_router(crm_dispatch.router(plant, database_url, caller))  # promise dates
    return app


_ERROR_NAMES = {401: "unauthorized", 404: "not_found", 409: "conflict", 422: "invalid_request"}


def _contract_event(build: Callable[[], E]) -> E:
    """The canonical event of a request, or a 422 naming the field the contract refuses.

    The request models bound every field as the contract does; this keeps the API from
    ever logging an event the dataflow would dead-letter, should the two drift apart.
    """
    try:
        return build()
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise _invalid(_field_name(tuple(first["loc"])), str(first["msg"])) from None


def _append_event(
    conn: psycopg.Connection[Any], who: Caller, event: OrderEvent | WorkOrderEvent, key: str
) -> None:
    # One dedupe key per accepted change (order version, work order revision), so a
    # retried transaction cannot log a change twice.
    record = record_for(
        f"crm:{who.client}", event.model_dump(mode="json", exclude_none=True), key=key
    )
    if record.error is not None:  # only a body past the log's size limit gets here
        raise _invalid("body", f"cannot be logged: {record.error}")
    append(conn, [record])


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _result(status_code: int, result: IntakeResult) -> JSONResponse:
    return JSONResponse(status_code=status_code, content=result.model_dump(exclude_none=True))


def _request_hash(model: BaseModel) -> bytes:
    """What makes two deliveries 'the same request': the kind and the validated content
    (key order, whitespace and ignored extra fields do not count; any value does)."""
    return hashlib.sha256(
        f"{type(model).__name__}\n".encode() + model.model_dump_json().encode()
    ).digest()


def _claim_delivery(
    conn: psycopg.Connection[Any], who: Caller, kind: str, key: str, request_hash: bytes
) -> JSONResponse | None:
    """Record the delivery id; if it was seen before, the answer to give instead.

    Same id and same request: the first answer again (with `Idempotent-Replayed: true`).
    Same id and another request: 409, nothing changes; the CRM reused an id by mistake
    and must hear so rather than have a change silently dropped.
    """
    if who.delivery_id is None:
        return None
    # A concurrent request with the same id waits on the primary key here until the first
    # commits, then sees the conflict: exactly one of them is processed.
    row = conn.execute(
        """INSERT INTO intake_delivery (client, delivery_id, kind, key, request_hash)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (client, delivery_id) DO NOTHING RETURNING 1""",
        (who.client, who.delivery_id, kind, key, request_hash),
    ).fetchone()
    if row is not None:
        return None
    first = conn.execute(
        """SELECT kind, key, request_hash, status_code, response, outcome FROM intake_delivery
           WHERE client = %s AND delivery_id = %s""",
        (who.client, who.delivery_id),
    ).fetchone()
    assert first is not None
    first_kind, first_key, first_hash, status_code, response, outcome = first
    if first_hash is not None and bytes(first_hash) != request_hash:
        return _problem_response(
            409,
            "conflict",
            f"delivery id {who.delivery_id!r} was already used for another request "
            f"({first_kind} {first_key}); nothing stored: use a new id for a new request",
        )
    if response is not None:
        return JSONResponse(
            status_code=int(status_code), content=response, headers={"idempotent-replayed": "true"}
        )
    # Deliveries stored before migration 013 kept only their outcome.
    result = IntakeResult(
        status="duplicate",
        reason=f"delivery {who.delivery_id} was already processed"
        + (f" ({outcome})" if outcome else ""),
        order_no=key if kind == "order" else None,
        work_order=key if kind == "work_order" else None,
    )
    return _result(200, result)


def _finish_delivery(
    conn: psycopg.Connection[Any], who: Caller, result: IntakeResult, status_code: int
) -> JSONResponse:
    """Store the answer with the delivery id (a repeat gets it again) and return it."""
    content = result.model_dump(exclude_none=True)
    if who.delivery_id is not None:
        conn.execute(
            """UPDATE intake_delivery SET outcome = %s, status_code = %s, response = %s
               WHERE client = %s AND delivery_id = %s""",
            (result.status, status_code, Jsonb(content), who.client, who.delivery_id),
        )
    return JSONResponse(status_code=status_code, content=content)


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


class RedactQuery(logging.Filter):
    """Replaces query values in uvicorn's access lines (args: client, method, path, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], _QUERY_VALUE.sub(r"\1***", args[2]), *args[3:])
        return True


_QUERY_VALUE = re.compile(r"([?&][^=&#]*=)[^&#]*")


def serve(plant: PlantConfig, database_url: str, settings: Settings) -> None:
    """The `mesflow run api` component: uvicorn on MESFLOW_API_HOST:MESFLOW_API_PORT."""
    import uvicorn

    app = create_app(plant, database_url, settings)
    # uvicorn's access log prints the path with its query string: no query value (a token
    # a client put in the URL by mistake) may reach the log.
    logging.getLogger("uvicorn.access").addFilter(RedactQuery())
    print(
        f"api: CRM intake on http://{settings.api_host}:{settings.api_port} (OpenAPI at /docs)",
        flush=True,
    )
    # uvicorn handles SIGINT/SIGTERM itself: in-flight requests finish, then it exits.
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")
