"""How mesflow's MQTT clients reach a broker: URL, credentials, TLS, and a URL safe to log.

    mqtt://user:password@host:1883     plain TCP (the password is percent-encoded in the URL)
    mqtts://user:password@host:8883    TLS; the broker's certificate is checked against the
                                       CA file (MESFLOW_MQTT_CA_FILE) or the system's CAs

A client certificate (MESFLOW_MQTT_CERT_FILE and MESFLOW_MQTT_KEY_FILE) is sent when set.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt

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
