"""The benchmarks clean up after themselves and count right (bench/replay_bench.py,
bench/live_latency.py): run small, each with a temporary folder of its own (TMPDIR), which
must be empty afterwards, with no process of the run left, even when interrupted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesflow.settings import REPO_ROOT


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path: the benchmarks' embedded PostgreSQL puts its socket
    under TMPDIR, and a Unix socket path may not exceed 107 bytes (pytest's tmp_path on a
    clean CI machine is longer than that once the run's own folders are added)."""
    path = Path(tempfile.mkdtemp(prefix="mfb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _processes_of(tmp: Path) -> list[str]:
    """Processes whose environment or command line names the run's temporary folder."""
    found = []
    marker = str(tmp).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in seen:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


def _run(script: str, args: list[str], tmp: Path, timeout: float) -> str:
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _assert_clean(tmp: Path) -> None:
    deadline = time.monotonic() + 10  # a stopped server may take a moment to exit
    while _processes_of(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(tmp) == []
    assert sorted(p.name for p in tmp.iterdir()) == []


@pytest.mark.timeout(300)
def test_replay_bench_counts_and_leaves_nothing(short_tmp: Path) -> None:
    tmp = short_tmp / "tmp"
    out = _run(
        "replay_bench.py",
        ["--events", "3000", "--machines", "12", "--ceiling-rows", "2000"],
        tmp,
        240,
    )
    assert "read 3,000 | stored 3,000 | dead-lettered 0 | processed up to seq 3,000" in out
    assert re.search(r"ratio to the binary COPY ceiling \d+\.\d\d", out)
    assert "load " in out
    _assert_clean(tmp)


@pytest.mark.timeout(300)
def test_store_bench_compares_with_a_revision_and_leaves_nothing(short_tmp: Path) -> None:
    tmp = short_tmp / "tmp"
    # HEAD~0 is today's code: the comparison runs the loaded-from-git path all the same.
    out = _run(
        "store_bench.py",
        ["--events", "3000", "--machines", "12", "--rounds", "2", "--against", "HEAD"],
        tmp,
        240,
    )
    rounds = re.findall(r"round \d +(\S+): 3,000 rows in [\d.]+ s = [\d,]+ rows/s", out)
    assert sorted(rounds) == ["HEAD", "HEAD", "today", "today"], out
    assert re.search(r"ratio today / HEAD: rows/s \d+\.\d\dx, PostgreSQL CPU per row", out)
    _assert_clean(tmp)


@pytest.mark.timeout(300)
def test_live_bench_counts_every_stage_and_leaves_nothing(short_tmp: Path) -> None:
    tmp = short_tmp / "tmp"
    out = _run(
        "live_latency.py",
        [
            "--rate",
            "400",
            "--seconds",
            "3",
            "--machines",
            "12",
            "--every",
            "1",
            "--ceiling-rows",
            "2000",
            "--ceiling-messages",
            "3000",
            "--drain",
            "90",
            "--warmup",
            "0",
        ],
        tmp,
        240,
    )
    sent = re.search(r"^sent ([\d,]+) \| received ([\d,]+) \| stored ([\d,]+)", out, re.M)
    assert sent, out
    n = int(sent[1].replace(",", ""))
    assert 1100 <= n <= 1300  # 3 s at 400/s, each acknowledged by the broker
    assert sent[1] == sent[2] == sent[3], out
    # The log also holds the 12 machines' CRM orders and work orders, posted before the run.
    top = f"{n + 24:,}"
    assert f"processed up to seq {top} of {top}" in out
    # The operator reports reached their steps: each machine's work order has parts, and
    # each machine reported a scrap part (message 46 of each machine's 80; ~100 were sent).
    reports = re.search(
        r"^operator reports: (\d+) work orders with progress \(([\d,]+) good parts on them\), "
        r"([\d,]+) parts reported scrap",
        out,
        re.M,
    )
    assert reports, out
    assert int(reports[1]) == 12 and int(reports[2].replace(",", "")) > 0, out
    assert int(reports[3].replace(",", "")) >= 12, out
    assert "lost sent->received 0, received->stored 0" in out
    assert "ceiling paho QoS 1 receive" in out and "ceiling binary COPY" in out
    assert re.search(r"ratio to the paho QoS 1 receive ceiling \d+\.\d\d", out)
    assert re.search(r"publish -> state interval row \(first_seen_at\): p50 [\d.]+ ms", out)
    _assert_clean(tmp)


@pytest.mark.timeout(300)
def test_an_interrupted_live_bench_stops_everything_and_leaves_nothing(short_tmp: Path) -> None:
    tmp = short_tmp / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "live_latency.py"),
            "--rate",
            "300",
            "--seconds",
            "60",
            "--machines",
            "12",
            "--no-ceilings",
        ],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # wait until it is publishing
        seen.append(line)
        if line.lstrip().startswith("t s"):
            break
    assert _processes_of(tmp), "".join(seen)  # broker, PostgreSQL, collector, dataflow...
    time.sleep(2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    proc.communicate(timeout=120)
    _assert_clean(tmp)
