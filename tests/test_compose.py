"""docker-compose.yml, Dockerfile and mosquitto.conf: structure checks without a Docker engine.

`docker compose config -q` also runs when the compose plugin is installed (it needs no engine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesflow.settings import REPO_ROOT, Settings
from tests.conftest import require

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
MESFLOW_SERVICES = {
    "migrate", "collector-mqtt", "dataflow", "dashboard", "api", "notify", "simulator",
    "dataflow-1",
}  # fmt: skip
LONG_RUNNING = {"collector-mqtt", "dataflow", "dashboard", "api", "notify", "simulator",
                "dataflow-1"}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves the `<<: *anchor` merge keys the way compose does.
    data = yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _compose_command() -> list[str] | None:
    """`docker compose` (plugin) or `docker-compose` (Debian's package): both validate a
    file without a Docker engine."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_command()
    require(command is not None, "docker compose (apt-get install docker-compose)")
    assert command is not None
    for args in ([], ["--profile", "demo"]):
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), *args, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"timescaledb", "mosquitto"} | MESFLOW_SERVICES


def test_every_service_has_image_or_build(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name


def test_mesflow_services_share_one_build(services: dict[str, dict[str, Any]]) -> None:
    for name in MESFLOW_SERVICES:
        assert services[name]["build"] == ".", name
        assert services[name]["command"][0] == "mesflow", name
    assert (REPO_ROOT / "Dockerfile").is_file()


def test_depends_on_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for target, spec in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in conditions, (name, target)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], (name, target)


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["mesflow", "db", "migrate"]
    assert migrate["restart"] == "no"  # one-shot
    assert migrate["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    for name in ("collector-mqtt", "dataflow", "dashboard"):
        cond = services[name]["depends_on"]["migrate"]["condition"]
        assert cond == "service_completed_successfully", name
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name


def test_commands_name_real_components(services: dict[str, dict[str, Any]]) -> None:
    from mesflow.cli import COMPONENTS

    for name in ("collector-mqtt", "dataflow", "dashboard"):
        assert services[name]["command"] == ["mesflow", "run", name]
        assert name in COMPONENTS


def test_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_dataflow_recovery_snapshots_persist(services: dict[str, dict[str, Any]]) -> None:
    recovery = str(Settings(data_dir=Path("/app/var")).recovery_dir)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["dataflow"]["volumes"]}
    assert recovery in mounts
    assert not mounts[recovery].startswith((".", "/")), "a named volume, not a bind mount"


def test_database_is_timescaledb_with_a_volume(services: dict[str, dict[str, Any]]) -> None:
    db = services["timescaledb"]
    tag = re.fullmatch(r"timescale/timescaledb:(\d+)\.(\d+)\.(\d+)-pg(\d+)", db["image"])
    assert tag, "a pinned TimescaleDB release, not latest"
    # 2.17 was a late-2024 build; PostgreSQL 17 or newer.
    assert (int(tag[1]), int(tag[2])) >= (2, 27) and int(tag[4]) >= 17
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])


LOCAL_BY_DEFAULT = "${MESFLOW_PUBLISH_ADDRESS:-127.0.0.1}:"


def test_ports_are_published_on_this_host_only_by_default(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert published["dashboard"] == [f"{LOCAL_BY_DEFAULT}${{MESFLOW_HTTP_PORT:-8050}}:8050"]
    assert published["api"] == [f"{LOCAL_BY_DEFAULT}${{MESFLOW_API_PORT:-8060}}:8060"]
    assert published["mosquitto"] == [f"{LOCAL_BY_DEFAULT}${{MESFLOW_MQTT_PORT:-1883}}:1883"]
    assert published["timescaledb"] == ["127.0.0.1:${MESFLOW_PG_PORT:-5432}:5432"]
    for name, ports in published.items():
        for port in ports:
            assert port.startswith((LOCAL_BY_DEFAULT, "127.0.0.1:")), (name, port)
    assert "MESFLOW_PUBLISH_ADDRESS" in COMPOSE_FILE.read_text("utf-8").split("services:")[0]


def test_published_addresses_as_compose_resolves_them() -> None:
    command = _compose_command()
    require(command is not None, "docker compose (apt-get install docker-compose)")
    assert command is not None

    def host_ip(port: str | dict[str, Any]) -> str:
        # Compose v2 prints the long form, Debian's docker-compose 1.x "ip:host:container".
        return port["host_ip"] if isinstance(port, dict) else port.split(":")[0]

    for env, expected in (({}, "127.0.0.1"), ({"MESFLOW_PUBLISH_ADDRESS": "0.0.0.0"}, "0.0.0.0")):
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "config"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MESFLOW_")}, **env},
        )
        assert result.returncode == 0, result.stderr
        resolved = yaml.safe_load(result.stdout)["services"]
        for name in ("dashboard", "api", "mosquitto"):
            (port,) = resolved[name]["ports"]
            assert host_ip(port) == expected, (name, port)
        assert host_ip(resolved["timescaledb"]["ports"][0]) == "127.0.0.1"


def test_mesflow_environment(services: dict[str, dict[str, Any]]) -> None:
    known = {f"MESFLOW_{name.upper()}" for name in Settings.model_fields}
    for name in MESFLOW_SERVICES:
        env = services[name]["environment"]
        assert all(key.startswith("MESFLOW_") for key in env), name
        assert set(env) <= known, f"{name}: unknown settings {set(env) - known}"
        assert "@timescaledb:5432/mesflow" in env["MESFLOW_DATABASE_URL"]
        assert env["MESFLOW_DATABASE_URL"].startswith("postgresql://mesflow:")
        assert "mqtt://mosquitto:1883" in env["MESFLOW_MQTT_URL"]
        assert env["MESFLOW_HTTP_HOST"] == "0.0.0.0"


def test_simulator_only_in_demo_profile(services: dict[str, dict[str, Any]]) -> None:
    assert services["simulator"]["profiles"] == ["demo"]
    # It publishes as a gateway, with broker credentials of its own (docs/broker.md).
    sim_url = services["simulator"]["environment"]["MESFLOW_MQTT_URL"]
    assert sim_url == "${MESFLOW_SIMULATOR_MQTT_URL:-mqtt://mosquitto:1883}"
    assert services["dataflow-1"]["profiles"] == ["scale-out"]  # docs/scale-out.md
    others = {"simulator", "dataflow-1"}
    assert all("profiles" not in svc for n, svc in services.items() if n not in others)


def test_a_two_process_dataflow(services: dict[str, dict[str, Any]]) -> None:
    """`dataflow` is process 0 (alone by default), `dataflow-1` process 1 of two; both list
    both addresses in id order and share the recovery volume (docs/scale-out.md)."""
    from mesflow.settings import Settings
    from streams.runner import Cluster

    zero, one = services["dataflow"], services["dataflow-1"]
    assert one["command"] == zero["command"] == ["mesflow", "run", "dataflow"]
    env0, env1 = zero["environment"], one["environment"]
    assert env0["MESFLOW_DATAFLOW_PROCESSES"] == "${MESFLOW_DATAFLOW_PROCESSES:-1}"
    assert env1["MESFLOW_DATAFLOW_PROCESSES"] == "${MESFLOW_DATAFLOW_PROCESSES:-2}"
    assert (env0["MESFLOW_DATAFLOW_PROCESS_ID"], env1["MESFLOW_DATAFLOW_PROCESS_ID"]) == ("0", "1")
    assert env0["MESFLOW_DATAFLOW_ADDRESSES"] == env1["MESFLOW_DATAFLOW_ADDRESSES"]
    # The same settings and environment as the other services (database, plant, alerts).
    assert {k: v for k, v in env1.items() if not k.startswith("MESFLOW_DATAFLOW_")} == {
        k: v for k, v in env0.items() if not k.startswith("MESFLOW_DATAFLOW_")
    }
    for pid, env in enumerate((env0, env1)):
        cluster = Cluster.parse(2, pid, env["MESFLOW_DATAFLOW_ADDRESSES"])
        assert cluster is not None
        names = [a.split(":")[0] for a in cluster.addresses]
        assert names == ["dataflow", "dataflow-1"]  # the services' names, in id order
    recovery = str(Settings(data_dir=Path("/app/var")).recovery_dir)
    for svc in (zero, one):
        assert f"recovery:{recovery}" in svc["volumes"]


def test_every_variable_is_documented_in_the_header() -> None:
    text = COMPOSE_FILE.read_text("utf-8")
    header = text.split("\nx-mesflow:")[0]
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used, "the file reads no variables?"
    assert {v for v in used if v not in header} == set()


def test_broker_logins_and_session_key_as_compose_resolves_them() -> None:
    """The collector reads with its own login, the demo simulator publishes with the
    gateway's; the dashboard's session key survives a recreated container."""
    command = _compose_command()
    require(command is not None, "docker compose (apt-get install docker-compose)")
    assert command is not None
    collector = "mqtt://mesflow-collector:c%40pw@mosquitto:1883"
    gateway = "mqtt://mesflow-gateway:gw-pw@mosquitto:1883"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESFLOW_")}
    env = {"MESFLOW_MQTT_URL": collector, "MESFLOW_SIMULATOR_MQTT_URL": gateway}
    resolved: list[dict[str, Any]] = []
    for extra in ({}, {"MESFLOW_AUTH_SESSION_SECRET": "s" * 40}):
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "--profile", "demo", "config"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**base, **env, **extra},
        )
        assert result.returncode == 0, result.stderr
        resolved.append(yaml.safe_load(result.stdout)["services"])
    unset, given = resolved
    assert unset["collector-mqtt"]["environment"]["MESFLOW_MQTT_URL"] == collector
    assert unset["simulator"]["environment"]["MESFLOW_MQTT_URL"] == gateway
    # Unset: empty, so the dashboard keeps its generated key in its data directory, which
    # is a named volume (not the container's own layer).
    assert unset["dashboard"]["environment"]["MESFLOW_AUTH_SESSION_SECRET"] in ("", None)
    assert given["dashboard"]["environment"]["MESFLOW_AUTH_SESSION_SECRET"] == "s" * 40
    data_dir = str(Settings(data_dir=Path("/app/var")).data_dir)
    mounts = {}
    for v in unset["dashboard"]["volumes"]:
        # Compose v2 prints the long form, Debian's docker-compose 1.x "source:target:mode".
        source, target = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
        mounts[target] = source
    assert data_dir in mounts and not mounts[data_dir].startswith("/"), mounts


def test_mosquitto_config() -> None:
    conf = REPO_ROOT / "config" / "mosquitto" / "mosquitto.conf"
    settings = {}
    for line in conf.read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings[key] = value
    assert settings["persistence"] == "true"
    assert settings["max_queued_messages"] == "0"
    assert settings["set_tcp_nodelay"] == "true"
    assert settings["listener"] == "1883"
    # Closed by default: passwords and an ACL, both in the mounted folder.
    assert settings["allow_anonymous"] == "false"
    assert settings["password_file"] == "/mosquitto/config/passwd"
    assert settings["acl_file"] == "/mosquitto/config/acl"
    assert (REPO_ROOT / "config" / "mosquitto" / "acl").is_file()


def test_mosquitto_mounts_config_and_data(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["mosquitto"]["volumes"]
    assert "./config/mosquitto:/mosquitto/config:ro" in volumes
    assert any(v.endswith(":/mosquitto/data") for v in volumes)


def test_dockerfile_installs_the_lock_then_the_package() -> None:
    # Locked, hashed dependencies; then mesflow as a regular install, whose wheel carries
    # the migrations and the example plant (tests/test_packaging.py).
    text = (REPO_ROOT / "Dockerfile").read_text("utf-8")
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    assert "pip install --require-hashes -r /tmp/runtime.txt" in text
    assert "COPY requirements/runtime.txt" in text
    assert "pip install --no-deps /src" in text
    assert " -e " not in text
    assert re.search(r"^USER (?!root)\S+$", text, re.M), "runs as a non-root user"
    ignored = (REPO_ROOT / ".dockerignore").read_text("utf-8").split()
    assert "sql" not in ignored and "config" not in ignored
    assert {".venv", ".git", "var", "build"} <= set(ignored)
    # No secret in the image (the Dockerfile copies config/ into it).
    assert {"config/mosquitto/passwd", "config/mosquitto/certs", ".env"} <= set(ignored)
