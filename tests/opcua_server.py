"""A real asyncua Server playing injection-molding machines, for the OPC UA collector tests.

Per machine, under Objects/2:<machine> (node ids `ns=2;s=<machine>.<name>`):
- `MachineMode` Int32, EUROMAP 77 MachineModeEnumeration (1 AUTOMATIC, 4 SETUP, ...);
- `TotalParts`, `ScrapParts` UInt64 cumulative counters;
- `CycleTime`, `Cushion`, `InjectionPressure`, `MeltTemp`, `MoldTemp` Double;
- `Operator` String (a node of the wrong type for a process value).

The server runs in its own thread and event loop; `set()` writes a value (optionally with
its source timestamp) from the test's thread. `stop()` / `start()` again on the same port
keeps the values, like a machine restart. Optional user/password and Basic256Sha256
certificates (`make_certificate` writes a self-signed one with `cryptography`).

Machine ids starting "CNC" are machine tools instead (OPC 40001 / umati-like):
`MachineryItemState/CurrentState` LocalizedText (Executing, NotExecuting, ...),
`Production/PartsProduced` UInt32, `Monitoring/SpindleLoad` and `Monitoring/FeedOverride`
Double.

Also a script for the benchmark: `python -m tests.opcua_server --port 48400 --machines 20
--hz 10` changes every process value of every machine HZ times a second.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

NS_URI = "urn:mesflow:test:imm"
# A machine tool (machine ids starting "CNC"), OPC 40001 / umati-like: name -> (folder,
# type, first value). CurrentState is MachineryItemState's LocalizedText state name.
TOOL_NODES: dict[str, tuple[str, ua.VariantType, Any]] = {
    "CurrentState": ("MachineryItemState", ua.VariantType.LocalizedText, "Executing"),
    "PartsProduced": ("Production", ua.VariantType.UInt32, 0),
    "SpindleLoad": ("Monitoring", ua.VariantType.Double, 35.0),
    "FeedOverride": ("Monitoring", ua.VariantType.Double, 100.0),
}
PROCESS_VALUES = {
    "CycleTime": 31.2,
    "Cushion": 4.1,
    "InjectionPressure": 1180.0,
    "MeltTemp": 235.0,
    "MoldTemp": 48.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificate(cert: Path, key: Path, uri: str, *, host: str = "127.0.0.1") -> None:
    """A self-signed application instance certificate (DER) and its key (PEM), as OPC UA
    Part 6 wants them: the application URI in subjectAltName, signing and encryption uses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri.rsplit(":", 1)[-1])])
    now = dt.datetime.now(dt.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName(socket.gethostname()),
                    x509.IPAddress(ipaddress.ip_address(host)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.DER))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


class _Users:
    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username == self.user and password == self.password:
            return User(role=UserRole.User, name=username)
        return None


class MachineServer:
    """An OPC UA server with `machines` injection-molding machines (see module doc)."""

    def __init__(
        self,
        port: int,
        machines: list[str],
        *,
        user: tuple[str, str] | None = None,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/mesflow/"
        self.machines = machines
        self.user = user
        self.certificate = certificate
        self.values: dict[str, dict[str, Any]] = {
            m: {k: v[2] for k, v in TOOL_NODES.items()}
            if m.startswith("CNC")
            else {
                "MachineMode": 1,
                "TotalParts": 0,
                "ScrapParts": 0,
                "Operator": "op7",
                **PROCESS_VALUES,
            }
            for m in machines
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], Any] = {}

    # -- thread plumbing -----------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        assert self._loop is not None
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name=f"opcua-server-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        self._run(self._start())

    def stop(self) -> None:
        if self._loop is None:
            return
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    def set(
        self, machine: str, name: str, value: Any, source_ts: dt.datetime | None = None
    ) -> None:
        """Write a value on the server, as the machine's PLC would."""
        self.values[machine][name] = value
        self._run(self._write(machine, name, value, source_ts))

    # -- on the server's loop ------------------------------------------------------------

    async def _start(self) -> None:
        server = Server(user_manager=_Users(*self.user) if self.user else None)  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("mesflow test IMM")
        if self.certificate is not None:
            await server.load_certificate(str(self.certificate[0]))
            await server.load_private_key(str(self.certificate[1]))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ]
            )
        if self.user is not None:
            server.set_security_IDs(["Username"])
        idx = await server.register_namespace(NS_URI)
        objects = server.nodes.objects
        types = {
            "MachineMode": ua.VariantType.Int32,
            "TotalParts": ua.VariantType.UInt64,
            "ScrapParts": ua.VariantType.UInt64,
            "Operator": ua.VariantType.String,
            **{k: ua.VariantType.Double for k in PROCESS_VALUES},
        }
        for m in self.machines:
            obj = await objects.add_object(f"ns={idx};s={m}", ua.QualifiedName(m, idx))
            if m.startswith("CNC"):
                await self._add_tool(obj, m, idx)
                continue
            for name, vtype in types.items():
                node = await obj.add_variable(
                    f"ns={idx};s={m}.{name}",
                    ua.QualifiedName(name, idx),
                    ua.Variant(self.values[m][name], vtype),
                )
                self._nodes[(m, name)] = (node, vtype)
        await server.start()
        self._server = server

    async def _add_tool(self, obj: Any, m: str, idx: int) -> None:
        folders: dict[str, Any] = {}
        for name, (folder, vtype, _) in TOOL_NODES.items():
            if folder not in folders:
                folders[folder] = await obj.add_object(
                    f"ns={idx};s={m}.{folder}", ua.QualifiedName(folder, idx)
                )
            value = self.values[m][name]
            if vtype == ua.VariantType.LocalizedText:
                value = ua.LocalizedText(value)
            node = await folders[folder].add_variable(
                f"ns={idx};s={m}.{name}", ua.QualifiedName(name, idx), ua.Variant(value, vtype)
            )
            self._nodes[(m, name)] = (node, vtype)

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def _write(
        self, machine: str, name: str, value: Any, source_ts: dt.datetime | None
    ) -> None:
        node, vtype = self._nodes[(machine, name)]
        now = dt.datetime.now(dt.UTC)
        if vtype == ua.VariantType.LocalizedText:
            value = ua.LocalizedText(value)
        await node.write_value(
            ua.DataValue(
                ua.Variant(value, vtype),
                # asyncua's stubs want its DateTime subclass; a datetime is what it sends.
                SourceTimestamp=source_ts or now,  # type: ignore[arg-type]
                ServerTimestamp=now,  # type: ignore[arg-type]
            )
        )

    async def churn(self, hz: float, seconds: float) -> int:
        """Change every process value of every machine `hz` times a second; return writes."""
        writes = 0
        end = time.monotonic() + seconds
        step = 1.0 / hz
        tick = 0
        while time.monotonic() < end:
            tick += 1
            t0 = time.monotonic()
            for m in self.machines:
                # One PLC cycle: a machine's values carry one source time.
                now = dt.datetime.now(dt.UTC)
                for i, (name, base) in enumerate(PROCESS_VALUES.items()):
                    await self._write(m, name, base + ((tick + i) % 10) * 0.1, now)
                    writes += 1
                await self._write(m, "TotalParts", tick, now)
                writes += 1
            await asyncio.sleep(max(0.0, step - (time.monotonic() - t0)))
        return writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=48400)
    ap.add_argument("--machines", type=int, default=20)
    ap.add_argument("--first", type=int, default=1, help="number of the first machine")
    ap.add_argument("--hz", type=float, default=10)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--delay", type=float, default=2, help="seconds before the values change")
    args = ap.parse_args()
    server = MachineServer(
        args.port, [f"IM-{i:02d}" for i in range(args.first, args.first + args.machines)]
    )
    server.start()
    print(f"serving {args.machines} machines on {server.url}", flush=True)
    time.sleep(args.delay)
    print("churn", flush=True)
    t0 = time.monotonic()
    writes = server._run(server.churn(args.hz, args.seconds), timeout=args.seconds + 60)
    took = time.monotonic() - t0
    print(f"{writes} writes in {took:.1f} s = {writes / took:.0f}/s", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
