"""How mesflow's MQTT clients reach a broker: URL, credentials, TLS, and a URL safe to log.

    mqtt://user:password@host:1883     plain TCP (the password is percent-encoded in the URL)
    mqtts://user:password@host:8883    TLS; the broker's certificate is checked against the
                                       CA file (MESFLOW_MQTT_CA_FILE) or the system's CAs

A client certificate (MESFLOW_MQTT_CERT_FILE and MESFLOW_MQTT_KEY_FILE) is sent when set.

`LeanClient` is paho's client with a cheaper receive path for the collector (buffered
reads, no MQTTMessage per message, one write per batch of acknowledgements).
"""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK

try:
    from paho.mqtt import _packet as _paho_packet
except ImportError:  # another paho 2.x: LeanClient then receives as paho's Client does
    _paho_packet = None  # type: ignore[assignment]

SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for TLS: the CA that signed the broker's certificate, and optionally the
    client's own certificate and key (for brokers that require client certificates)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = None

    def __repr__(self) -> str:  # never show the password, even in a traceback's locals
        return (
            f"MqttEndpoint(host={self.host!r}, port={self.port}, tls={self.tls}, "
            f"username={self.username!r}, password={'***' if self.password else None})"
        )


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """mqtt[s]://[user[:password]@]host[:port] -> endpoint; ValueError names what is wrong
    (without the password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported MQTT URL {redact_url(url)!r}: use mqtt://host:port or mqtts://host:port"
        )
    tls = SCHEMES[scheme]
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"MQTT URL {redact_url(url)!r}: the port is not a number") from None
    return MqttEndpoint(
        host=parts.hostname or "127.0.0.1",
        port=port,
        tls=tls,
        # Percent-encoded in the URL, so a password may hold '@', ':' or '/'.
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable MQTT URL>"
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{parts.username or ''}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def configure_client(client: mqtt.Client, endpoint: MqttEndpoint, tls: TlsFiles) -> None:
    """Credentials and TLS for a paho client, before it connects."""
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if not endpoint.tls:
        return
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ValueError("MESFLOW_MQTT_CERT_FILE and MESFLOW_MQTT_KEY_FILE go together")
    for what, path in (("CA", tls.ca_file), ("cert", tls.cert_file), ("key", tls.key_file)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"MQTT TLS {what} file {str(path)!r} does not exist")
    # Certificate and host name are always verified: TLS without verification would give a
    # false sense of safety.
    client.tls_set(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


class BufferedSocket:
    """A paho socket that reads 64 KiB at a time and hands paho its small reads from memory.

    paho reads each packet with two or three `recv` calls (one byte, the remaining length,
    the rest) and one `select` per packet; at thousands of messages a second those system
    calls cost more than the messages. `pending()` (which paho asks, as of an SSL socket)
    says that bytes are waiting here, so paho does not wait in `select` for them.
    """

    def __init__(self, sock: Any) -> None:
        self.raw = sock
        self._buf = b""
        self._pos = 0
        self._ssl_pending = getattr(sock, "pending", None)

    def recv(self, size: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            chunk = buf[pos : pos + size]
            self._pos = pos + len(chunk)
            return chunk
        # Raises what the socket raises (BlockingIOError, SSLWantReadError): paho handles it.
        data: bytes = self.raw.recv(max(size, _READ_SIZE))
        if len(data) <= size:
            return data
        self._buf, self._pos = data, size
        return data[:size]

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed to paho."""
        return len(self._buf) - self._pos

    def pending(self) -> int:
        return self.buffered() + (self._ssl_pending() if self._ssl_pending else 0)

    def send(self, data: bytes | bytearray) -> int:
        return int(self.raw.send(data))

    def close(self) -> None:
        self.raw.close()

    def fileno(self) -> int:
        return int(self.raw.fileno())

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    def __getattr__(self, name: str) -> Any:  # setsockopt, getpeername, ...
        return getattr(self.raw, name)


_READ_SIZE = 1 << 16
_PUBACK = struct.Struct("!BBH")
# paho's PUBLISH decoder (paho-mqtt 2.2): without it, LeanClient behaves as paho's Client.
_decode_publish = getattr(_paho_packet, "decode_publish", None)


class Received:
    """What the collector needs of a PUBLISH (paho's MQTTMessage builds a threading.Condition
    and more for every message: a third of its receive cost)."""

    __slots__ = ("_topic", "mid", "payload", "qos")

    def __init__(self, mid: int, qos: int, topic: bytes, payload: bytes) -> None:
        self.mid = mid
        self.qos = qos
        self._topic = topic
        self.payload = payload

    @property
    def topic(self) -> str:
        """As MQTTMessage.topic: raises UnicodeDecodeError for a topic that is not UTF-8."""
        return self._topic.decode("utf-8")


class LeanClient(mqtt.Client):
    """paho's client with a cheaper receive path for a QoS 0/1 subscriber with manual acks.

    Measured against one mosquitto on the loaded 2-core machine (100k QoS 1 messages, acks
    after each batch): 31-36 µs of CPU per message for paho's Client, 9 µs for this one.
    - reads through a `BufferedSocket`, and handles every whole packet it holds per wakeup;
    - a QoS 0/1 PUBLISH reaches `on_message` as a `Received` (mid, qos, topic, payload)
      instead of an MQTTMessage (QoS 2, and `message_callback_add` filters, which the
      collector does not use, take paho's own path);
    - `ack_many` acknowledges a batch in one write instead of one packet and one wakeup each.
    The rest (connect, TLS, sessions, keep-alive, reconnects) is paho's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Packets queued by another thread (our acks) are written by the network thread,
        # woken by paho's socket pair: paho would otherwise write them from the caller's
        # thread when no loop_start() thread exists, racing the network thread's writes.
        self.on_socket_register_write = _no_write_callback

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_forever(self, *args: Any, **kwargs: Any) -> mqtt.MQTTErrorCode:
        # paho's wake-up pipe, as loop() and loop_start() make it (loop_forever does not):
        # without it, acknowledgements queued by the writer thread would wait in the queue
        # until the next packet arrives or select times out (measured: 100 ms commits and
        # 0.6 s latency at 5,000 messages/s, while the broker's window was full).
        if self._sockpairR is None or self._sockpairW is None:
            self._reset_sockets(sockpair_only=True)
            self._sockpairR, self._sockpairW = mqtt._socketpair_compat()
        try:
            return super().loop_forever(*args, **kwargs)
        finally:
            self._reset_sockets(sockpair_only=True)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # paho reads one packet per wakeup; read the others already here (bounded, so
        # that acknowledgements and pings still go out in between).
        for _ in range(1000):
            sock = self._sock
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, BufferedSocket):
                break
            if not sock.buffered():
                break
            rc = super().loop_read(max_packets)
        return rc

    _filtered = False

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered = True  # paho's matcher then dispatches every message
        super().message_callback_add(sub, callback)

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        command = self._in_packet["command"]
        qos = (command >> 1) & 3
        on_message = self.on_message
        if (
            _decode_publish is None
            or qos == 2  # paho's own PUBREC/PUBREL handshake
            or (qos == 1 and not self._manual_ack)  # paho then acknowledges at once
            or on_message is None
            or self._filtered
        ):
            return super()._handle_publish()
        packet = _decode_publish(command, self._in_packet["packet"], self._protocol)
        # An exception here ends the network loop, as in paho's own dispatch.
        on_message(self, self._userdata, Received(packet.mid, qos, packet.topic, packet.payload))  # type: ignore[arg-type]
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK every QoS 1 message id of `mids`, in one packet write (thread-safe, as
        `ack`: paho's outgoing queue is a deque and the write is its own)."""
        if mids:
            self._packet_queue(PUBACK, b"".join(_PUBACK.pack(PUBACK, 2, m) for m in mids), 0, 0)


def _no_write_callback(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    pass
