"""Local HTTP servers that speak the WeCom, DingTalk and Feishu robot APIs, with their
limits and error codes (research/protocols.md §3), for the alert delivery tests.

One server answers all three, as the platforms do, HTTP 200 with an error code in the body:
- WeCom  `POST /cgi-bin/webhook/send?key=K`: 93000 unknown key, 40058 markdown over 4,096
  bytes (text over 2,048), 45009 over `limit` messages in `window_s`.
- DingTalk `POST /robot/send?access_token=T&timestamp=ms&sign=S`: 310000 bad signature or
  timestamp over an hour off, 130101 over the limit.
- Feishu `POST /open-apis/bot/v2/hook/T` (timestamp and sign in the body): 19021 bad
  signature, 11232 over the limit or over 5 in a second, 9499 body over 20 KB.
`script` queues forced answers (e.g. two 45009s), as a platform throttling for its own
reasons would. Every accepted message is kept in `received`, with the time it arrived.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    platform: str
    robot: str
    body: dict[str, Any]
    at: float  # time.monotonic()


@dataclass
class RobotServer:
    wecom_keys: set[str] = field(default_factory=set)
    ding_secrets: dict[str, str] = field(default_factory=dict)  # access_token -> secret
    feishu_secrets: dict[str, str] = field(default_factory=dict)  # hook token -> secret
    limit: int = 20
    window_s: float = 60.0
    received: list[Received] = field(default_factory=list)
    answers: list[tuple[str, str, int]] = field(default_factory=list)  # platform, robot, code
    script: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    _sends: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hook_status: deque[int] = field(default_factory=deque)
    _per_second: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def wecom_url(self, key: str) -> str:
        return f"{self.base}/cgi-bin/webhook/send?key={key}"

    def ding_url(self, token: str) -> str:
        return f"{self.base}/robot/send?access_token={token}"

    def feishu_url(self, token: str) -> str:
        return f"{self.base}/open-apis/bot/v2/hook/{token}"

    def of(self, robot: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.robot == robot]

    def start(self) -> RobotServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n)
                if self.path == "/hook":  # a generic webhook receiver
                    with server._lock:
                        server.hooks.append((dict(self.headers.items()), raw))
                        status = server.hook_status.popleft() if server.hook_status else 204
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                status, answer = server.handle(self.path, raw)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the platforms -----------------------------------------------------------------

    def _over_limit(self, robot: str, now: float) -> bool:
        sends = self._sends[robot]
        while sends and sends[0] <= now - self.window_s:
            sends.popleft()
        if len(sends) >= self.limit:
            return True
        sends.append(now)
        return False

    def _over_per_second(self, robot: str, now: float) -> bool:
        # Feishu's second limit: 5 requests in any second.
        sends = self._per_second[robot]
        while sends and sends[0] <= now - 1.0:
            sends.popleft()
        if len(sends) >= 5:
            return True
        sends.append(now)
        return False

    def handle(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, {"error": "not JSON"}
        with self._lock:
            if parts.path == "/cgi-bin/webhook/send":
                return 200, self._wecom(query.get("key", ""), body, raw)
            if parts.path == "/robot/send":
                return 200, self._ding(query, body)
            if parts.path.startswith("/open-apis/bot/v2/hook/"):
                return 200, self._feishu(parts.path.rsplit("/", 1)[1], body, raw)
        return 404, {"error": "no such API"}

    def _answer(self, platform: str, robot: str, code: int, msg: str) -> dict[str, Any]:
        self.answers.append((platform, robot, code))
        if platform == "feishu":
            return {"code": code, "msg": msg, "data": {}}
        return {"errcode": code, "errmsg": msg}

    def _scripted(self, platform: str, robot: str) -> dict[str, Any] | None:
        if self.script[robot]:
            code = self.script[robot].popleft()
            return self._answer(platform, robot, code, "scripted")
        return None

    def _wecom(self, key: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        robot = f"wecom:{key}"
        if key not in self.wecom_keys:
            return self._answer("wecom", robot, 93000, "invalid webhook url")
        forced = self._scripted("wecom", robot)
        if forced:
            return forced
        kind = body.get("msgtype")
        if kind not in ("markdown", "text") or not isinstance(body.get(kind), dict):
            return self._answer("wecom", robot, 40008, "invalid message type")
        content = body[kind].get("content", "")
        limit = 4096 if kind == "markdown" else 2048
        if len(content.encode("utf-8")) > limit:
            return self._answer("wecom", robot, 40058, f"{kind}.content exceed max length {limit}")
        if self._over_limit(robot, time.monotonic()):
            return self._answer("wecom", robot, 45009, "api freq out of limit")
        self.received.append(Received("wecom", robot, body, time.monotonic()))
        return self._answer("wecom", robot, 0, "ok")

    def _ding(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        token = query.get("access_token", "")
        robot = f"ding:{token}"
        secret = self.ding_secrets.get(token)
        if secret is None:
            return self._answer("dingtalk", robot, 300001, "token is not exist")
        ts = query.get("timestamp", "")
        mac = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
        expected = base64.b64encode(mac).decode()
        given = query.get("sign", "")  # parse_qs undid the URL-encoding, as DingTalk does
        fresh = ts.isdigit() and abs(int(ts) - time.time() * 1000) < 3600 * 1000
        if not fresh or not hmac.compare_digest(given, expected):
            return self._answer("dingtalk", robot, 310000, "sign not match")
        forced = self._scripted("dingtalk", robot)
        if forced:
            return forced
        if body.get("msgtype") != "markdown" or not body.get("markdown", {}).get("text"):
            return self._answer("dingtalk", robot, 40035, "缺少参数 markdown")
        if self._over_limit(robot, time.monotonic()):
            return self._answer(
                "dingtalk", robot, 130101, "send too fast, exceed 20 times per minute"
            )
        self.received.append(Received("dingtalk", robot, body, time.monotonic()))
        return self._answer("dingtalk", robot, 0, "ok")

    def _feishu(self, token: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        robot = f"feishu:{token}"
        secret = self.feishu_secrets.get(token)
        if secret is None:
            return self._answer(
                "feishu", robot, 19001, "param invalid: incoming webhook access token invalid"
            )
        if len(raw) > 20 * 1024:
            return self._answer("feishu", robot, 9499, "request body too large")
        ts = str(body.get("timestamp", ""))
        mac = hmac.new(f"{ts}\n{secret}".encode(), b"", hashlib.sha256).digest()
        fresh = ts.isdigit() and abs(int(ts) - time.time()) < 3600
        if not fresh or not hmac.compare_digest(
            str(body.get("sign", "")), base64.b64encode(mac).decode()
        ):
            return self._answer(
                "feishu", robot, 19021, "sign match fail or timestamp is not within one hour"
            )
        forced = self._scripted("feishu", robot)
        if forced:
            return forced
        if body.get("msg_type") != "interactive" or not isinstance(body.get("card"), dict):
            return self._answer("feishu", robot, 9499, "Bad Request")
        now = time.monotonic()
        if self._over_limit(robot, now) or self._over_per_second(robot, now):
            return self._answer("feishu", robot, 11232, "frequency limited psm")
        self.received.append(Received("feishu", robot, body, time.monotonic()))
        return self._answer("feishu", robot, 0, "success")
