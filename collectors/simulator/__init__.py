"""The plant simulator: a believable, deterministic demo plant.

`generate` is the model (pure, no I/O); `write_history` writes its events as a replay file;
`run_simulator` publishes them live over MQTT, paced by the simulated clock.
"""

from __future__ import annotations

from .history import write_history
from .model import default_start, generate, generate_timed, machine_specs
from .publisher import run_simulator

__all__ = [
    "default_start",
    "generate",
    "generate_timed",
    "machine_specs",
    "run_simulator",
    "write_history",
]
