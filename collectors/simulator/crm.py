"""`mesflow simulate-crm`: a CRM stand-in for the demo.

It plays both sides of the integration in docs/crm.md: it creates orders and work orders
through the intake API, then changes them on a schedule (quantity, due date, priority,
hold and release, a cancellation), now and then re-sends a delivery or an old version to
show they are ignored; and it runs a small HTTP receiver for the progress callbacks that
verifies each signature with the shared secret, drops repeats by webhook-id, and prints
them. Everything is deterministic for a seed, except the clock.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from collectors.crm_api import API_PREFIX, parse_pairs
from mesflow.plant import PlantConfig
from mesflow.settings import Settings
from notify import webhooks

_PRINT = threading.Lock()
# Printed once the orders and work orders are in the intake API: `mesflow demo` starts the
# simulator after it, so the machines take the CRM's work orders over from their first jobs.
READY = "orders posted"


def _say(msg: str) -> None:
    with _PRINT:
        print(f"crm: {msg}", flush=True)


@dataclass
class Order:
    order_no: str
    version: int
    customer: str
    priority: int
    product: str
    qty: int
    due: datetime
    status: str = "open"
    work_orders: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "order_no": self.order_no,
            "version": self.version,
            "customer": self.customer,
            "priority": self.priority,
            "product": self.product,
            "qty": self.qty,
            "due": self.due.isoformat(),
            "status": self.status,
            "ts": datetime.now(UTC).isoformat(),
        }


# --- the callback receiver -------------------------------------------------------------


@dataclass
class Received:
    """What the receiver saw: each callback once per webhook-id, in arrival order."""

    callbacks: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    repeats: int = 0
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_receiver(
    host: str, port: int, secret: str, received: Received, show: Callable[[str], None] = _say
) -> ThreadingHTTPServer:
    """An HTTP server that accepts signed callbacks on any path (in a daemon thread)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k: v for k, v in self.headers.items()}
            try:
                msg_id = webhooks.verify(secret, headers, body)
            except webhooks.SignatureError as err:
                with received.lock:
                    received.bad_signatures += 1
                show(f"<- REJECTED callback: {err}")
                self._answer(401)
                return
            msg = json.loads(body)
            with received.lock:
                repeat = msg_id in received.seen
                if repeat:
                    received.repeats += 1
                else:
                    received.seen.add(msg_id)
                    received.callbacks.append(msg)
            if repeat:
                show(f"<- {msg_id} again (already processed: acknowledged, ignored)")
            else:
                show(f"<- {describe_callback(msg)}  [signature ok]")
            self._answer(204)

        def _answer(self, code: int) -> None:
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per callback is printed above

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="crm-receiver", daemon=True).start()
    return server


def describe_callback(msg: dict[str, Any]) -> str:
    data = msg.get("data", {})
    kind = str(msg.get("type", "?")).removeprefix("order.")
    order = data.get("order_no", "?")
    detail = {
        "work_started": lambda: f"work order {data.get('work_order')} started",
        "milestone": lambda: (
            f"{data.get('percent')} % done (good {data.get('good')}), ETA {data.get('eta')}"
        ),
        "at_risk": lambda: f"AT RISK: ETA {data.get('eta')} after due {data.get('due')}",
        "back_on_track": lambda: f"back on track: ETA {data.get('eta')}",
        "completed": lambda: f"completed: good {data.get('good')}, scrap {data.get('scrap')}",
        "cancellation_acknowledged": lambda: (
            "cancellation acknowledged" + (f" (good {data['good']})" if "good" in data else "")
        ),
    }.get(kind, lambda: json.dumps(data, ensure_ascii=False))()
    return f"{order}: {detail}"


# --- the order side --------------------------------------------------------------------


class CrmClient:
    """Posts to the intake API, signed (if a signing secret is configured) or with a token."""

    def __init__(
        self, api_url: str, *, token: str | None, secret: str | None, timeout_s: float = 10.0
    ) -> None:
        if not token and not secret:
            raise ValueError(
                "the CRM stand-in needs MESFLOW_CRM_TOKENS or MESFLOW_CRM_SIGNING_SECRETS"
            )
        self.token = token
        self.secret = secret
        self.http = httpx.Client(base_url=api_url.rstrip("/"), timeout=timeout_s, trust_env=False)
        self.last: tuple[str, bytes, str] | None = None  # path, body, delivery id

    def post(
        self, path: str, payload: dict[str, Any], delivery_id: str | None = None
    ) -> httpx.Response:
        body = json.dumps(payload).encode()
        msg_id = delivery_id or webhooks.new_message_id()
        self.last = (path, body, msg_id)
        return self._send(path, body, msg_id)

    def resend_last(self) -> httpx.Response | None:
        """The same delivery again, as a CRM does when it missed the answer."""
        if self.last is None:
            return None
        return self._send(*self.last)

    def _send(self, path: str, body: bytes, msg_id: str) -> httpx.Response:
        headers = {"content-type": "application/json"}
        target = API_PREFIX + path
        if self.secret:
            # Signed over method, path and body (docs/crm.md): not replayable elsewhere.
            headers.update(
                webhooks.signed_request_headers(self.secret, "POST", target, body, msg_id=msg_id)
            )
        else:
            headers["authorization"] = f"Bearer {self.token}"
            headers["idempotency-key"] = msg_id
        return self.http.post(target, content=body, headers=headers)

    def get_order(self, order_no: str) -> dict[str, Any] | None:
        target = f"{API_PREFIX}/orders/{quote(order_no, safe='')}"
        headers = (
            {"authorization": f"Bearer {self.token}"}
            if self.token
            else webhooks.signed_request_headers(self.secret or "", "GET", target, b"")
        )
        resp = self.http.get(target, headers=headers)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def close(self) -> None:
        self.http.close()


CUSTOMERS = ("ACME", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries")


def crm_machines(plant: PlantConfig, product: str) -> list[str]:
    """Where the CRM stand-in plans a product's work orders: the machines of its routing's
    first step (later steps take the work order over from there), else those its ideal
    cycle times name."""
    routing = plant.routings_by_product.get(product)
    if routing is not None and routing.operations[0].machines:
        return sorted(routing.operations[0].machines)
    return sorted(next(p for p in plant.products if p.id == product).ideal_cycle_seconds)


def _answer(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    if resp.status_code >= 400:
        return f"HTTP {resp.status_code} {data.get('message', data)}"
    extra = data.get("reason") or ", ".join(data.get("changed", [])) or ""
    return f"HTTP {resp.status_code} {data.get('status')}" + (f" ({extra})" if extra else "")


class CrmStandIn:
    def __init__(self, plant: PlantConfig, client: CrmClient, *, seed: int) -> None:
        self.plant = plant
        self.client = client
        self.rng = random.Random(seed)
        self.orders: list[Order] = []
        self.cancelled_one = False

    def create_orders(self, n: int) -> None:
        products = [p for p in self.plant.products if p.ideal_cycle_seconds]
        if not products:
            raise ValueError("the plant configuration has no products with machines")
        now = datetime.now(self.plant.tz).replace(minute=0, second=0, microsecond=0)
        used: dict[str, int] = {}
        for i in range(n):
            product = products[i % len(products)]
            order = Order(
                order_no=f"SO-{i + 1:04d}",
                version=1,
                customer=self.rng.choice(CUSTOMERS),
                priority=self.rng.randint(1, 3),
                product=product.id,
                qty=100 * self.rng.randint(5, 40),
                due=now + timedelta(hours=self.rng.randint(8, 96)),
            )
            stored = self.client.get_order(order.order_no)
            if stored is not None:
                # A restarted demo: continue the stored order instead of a stale version 1.
                s = stored["order"]
                order.version = int(s["version"]) + 1
                order.status = s["status"]
            self.post_order(order, "create" if stored is None else "resume")
            self.orders.append(order)
            # Work orders WO-<machine>-<n> on machines of the product's first routing step:
            # the live simulator takes them over there (publisher.WorkOrderSink), so the
            # demo's machines produce for these orders.
            machines = crm_machines(self.plant, product.id)
            k = min(2, len(machines))
            for m in self.rng.sample(machines, k):
                used[m] = used.get(m, 0) + 1
                wo = f"WO-{m}-{used[m]:04d}"
                order.work_orders.append(wo)
                resp = self.client.post(
                    "/work-orders",
                    {
                        "work_order": wo,
                        "order_no": order.order_no,
                        "product": order.product,
                        "qty": math.ceil(order.qty / k),
                        "machine": m,
                    },
                )
                _say(f"-> work order {wo} for {order.order_no} on {m}: {_answer(resp)}")

    def post_order(self, order: Order, what: str) -> httpx.Response:
        resp = self.client.post("/orders", order.body())
        _say(
            f"-> {order.order_no} v{order.version} {what} "
            f"(qty {order.qty}, due {order.due:%m-%d %H:%M}, priority {order.priority}, "
            f"{order.status}): {_answer(resp)}"
        )
        return resp

    def change_one(self) -> None:
        live = [o for o in self.orders if o.status in ("open", "on_hold")]
        if not live:
            return
        order = self.rng.choice(live)
        roll = self.rng.random()
        if roll < 0.07:
            resp = self.client.resend_last()
            if resp is not None:
                _say(f"-> the last delivery again (same id): {_answer(resp)}")
            return
        if roll < 0.12:
            stale = Order(**{**order.__dict__, "version": max(order.version - 1, 0)})
            self.post_order(stale, "an old version")
            return
        order.version += 1
        if order.status == "on_hold":
            order.status = "open"
            what = "released from hold"
        elif roll < 0.45:
            order.qty = max(100, order.qty + 100 * self.rng.randint(-5, 10))
            what = "quantity changed"
        elif roll < 0.75:
            order.due += timedelta(hours=self.rng.choice((-12, -6, 6, 12, 24)))
            what = "due date moved"
        elif roll < 0.85:
            order.priority = self.rng.randint(1, 3)
            what = "priority changed"
        elif roll < 0.95 or self.cancelled_one:
            order.status = "on_hold"
            what = "put on hold"
        else:
            order.status = "cancelled"
            self.cancelled_one = True
            what = "cancelled"
        self.post_order(order, what)


def _listen_address(listen: str | None, callback_url: str | None) -> tuple[str, int] | None:
    if listen:
        host, _, port = listen.rpartition(":")
        return host or "127.0.0.1", int(port)
    if callback_url:
        url = urlparse(callback_url)
        return url.hostname or "127.0.0.1", url.port or 80
    return None


def run_crm(
    plant: PlantConfig,
    settings: Settings,
    *,
    api_url: str | None = None,
    listen: str | None = None,
    interval_s: float = 10.0,
    orders: int = 6,
    seed: int = 42,
    duration_s: float | None = None,
) -> int:
    stop = threading.Event()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the stand-in prints its own lines

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    received = Received()
    server: ThreadingHTTPServer | None = None
    where = _listen_address(listen, settings.crm_callback_url)
    if where is not None:
        if not settings.crm_webhook_secret:
            _say("MESFLOW_CRM_WEBHOOK_SECRET is not set: cannot verify callbacks")
            return 2
        server = start_receiver(where[0], where[1], settings.crm_webhook_secret, received)
        _say(f"receiving callbacks on http://{where[0]}:{where[1]}/")
    else:
        _say("no MESFLOW_CRM_CALLBACK_URL: not receiving callbacks")

    tokens = parse_pairs(settings.crm_tokens, "MESFLOW_CRM_TOKENS")
    secrets = parse_pairs(settings.crm_signing_secrets, "MESFLOW_CRM_SIGNING_SECRETS")
    client = CrmClient(
        api_url or f"http://{settings.api_host}:{settings.api_port}",
        token=next(iter(tokens.values()), None),
        secret=next(iter(secrets.values()), None),
    )
    _say(f"posting to {client.http.base_url} ({'signed' if client.secret else 'bearer token'})")
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        sim = CrmStandIn(plant, client, seed=seed)
        while not stop.is_set():
            try:
                sim.create_orders(orders)
                _say(f"{len(sim.orders)} {READY}; changing one every {interval_s:g} s")
                break
            except httpx.TransportError as err:
                _say(f"intake API not reachable yet ({err}); retrying")
                stop.wait(2.0)
        while not stop.wait(interval_s):
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                sim.change_one()
            except httpx.TransportError as err:
                _say(f"intake API not reachable ({err}); the change is retried later")
    finally:
        client.close()
        if server is not None:
            server.shutdown()
        _say(
            f"stopped: {len(received.callbacks)} callback(s) received, "
            f"{received.repeats} repeat(s) ignored, {received.bad_signatures} bad signature(s)"
        )
    return 0


def demo_env(api_port: int, callback_port: int, store: Path | None = None) -> dict[str, str]:
    """Credentials that wire the intake, the dispatcher and this stand-in together (for
    `mesflow demo`): one CRM client with a bearer token and a callback secret.

    With `store` (e.g. var/demo-crm.json) the token and secret are kept across restarts,
    so an integrator's script keeps working; without it they are fresh each time.
    """
    import secrets as _secrets

    kept: dict[str, str] = {}
    if store is not None and store.exists():
        try:
            kept = {k: str(v) for k, v in json.loads(store.read_text()).items()}
        except (ValueError, AttributeError):
            kept = {}
    token = kept.get("token") or _secrets.token_urlsafe(24)
    secret = kept.get("webhook_secret") or webhooks.new_secret()
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({"token": token, "webhook_secret": secret}))
        store.chmod(0o600)
    return {
        "MESFLOW_API_PORT": str(api_port),
        "MESFLOW_CRM_TOKENS": f"demo-crm:{token}",
        "MESFLOW_CRM_CALLBACK_URL": f"http://127.0.0.1:{callback_port}/mesflow/callbacks",
        "MESFLOW_CRM_WEBHOOK_SECRET": secret,
    }


def credential_lines(env: Mapping[str, str]) -> list[str]:
    """What an integrator needs to talk to this intake, from the variables in `env`: one
    line each, naming the variable it comes from (the demo prints these; docs/crm.md)."""
    port = env.get("MESFLOW_API_PORT", "8060")
    lines = [f"CRM intake: http://127.0.0.1:{port}{API_PREFIX}/orders (OpenAPI at /docs)"]
    for client, token in parse_pairs(env.get("MESFLOW_CRM_TOKENS", ""), "tokens").items():
        lines.append(f"CRM client {client}: Authorization: Bearer {token}   (MESFLOW_CRM_TOKENS)")
    for client, secret in parse_pairs(
        env.get("MESFLOW_CRM_SIGNING_SECRETS", ""), "secrets"
    ).items():
        lines.append(
            f"CRM client {client}: signs requests with {secret}   (MESFLOW_CRM_SIGNING_SECRETS)"
        )
    if env.get("MESFLOW_CRM_CALLBACK_URL"):
        lines.append(
            "callbacks to: "
            f"{webhooks.redact_url(env['MESFLOW_CRM_CALLBACK_URL'])}   (MESFLOW_CRM_CALLBACK_URL)"
        )
    if env.get("MESFLOW_CRM_WEBHOOK_SECRET"):
        lines.append(
            f"callbacks signed with: {env['MESFLOW_CRM_WEBHOOK_SECRET']}   "
            "(MESFLOW_CRM_WEBHOOK_SECRET)"
        )
    return lines
