"""Write a simulated plant history as a replay file (JSON Lines of canonical events)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from mesflow.plant import PlantConfig

from .model import default_start, end_of, generate_timed

# Compact separators and no circular check: ~2x faster than json.dumps with defaults.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_CHUNK = 20_000  # lines per write()


def write_history(
    plant: PlantConfig, path: Path, *, seed: int, start: datetime | None, duration_s: float
) -> int:
    """Write `duration_s` simulated seconds from `start` to `path`; returns the event count."""
    if duration_s < 0:
        raise ValueError("duration_s must not be negative")
    start = start or default_start(plant)
    end = end_of(start, duration_s)
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    buf: list[str] = []
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for _, ev in generate_timed(plant, seed=seed, start=start, end=end):
            buf.append(_encode(ev))
            if len(buf) >= _CHUNK:
                buf.append("")  # the trailing newline
                out.write("\n".join(buf))
                count += len(buf) - 1
                buf.clear()
        if buf:
            buf.append("")
            out.write("\n".join(buf))
            count += len(buf) - 1
    return count
