"""A bad MESFLOW_* value stops a command with one line naming the variable, the value and
what is wrong (no traceback), before anything starts; good values reach the components."""

from __future__ import annotations

import os
import subprocess
import sys

import pydantic
import pytest

from mesflow.settings import Settings


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesflow.cli", "run", "dataflow"],
        env={**os.environ, "MESFLOW_DATABASE_URL": "postgresql://x@127.0.0.1:1/x", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("MESFLOW_LOG_POLL_MS", "0", "greater than 0"),
        ("MESFLOW_LOG_POLL_MS", "-5", "greater than 0"),
        ("MESFLOW_LOG_POLL_MS", "1e9", "less than or equal to 10000"),
        ("MESFLOW_LOG_POLL_MS", "fast", "valid number"),
        ("MESFLOW_SNAPSHOT_SECONDS", "ten", "valid number"),
        ("MESFLOW_LOG_POLL_MS", "2\x01", "valid number"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_1(name: str, value: str, says: str) -> None:
    out = _run(**{name: value})
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr
    assert f"settings: {name}={value!r}" in out.stderr and says in out.stderr, out.stderr


def test_the_poll_interval_parses_and_defaults_to_20_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESFLOW_LOG_POLL_MS", raising=False)
    assert Settings().log_poll_ms == 20.0
    monkeypatch.setenv("MESFLOW_LOG_POLL_MS", "60")
    assert Settings().log_poll_ms == 60.0
    with pytest.raises(pydantic.ValidationError):
        Settings(log_poll_ms=0)
