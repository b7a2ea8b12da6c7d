"""streams/labor.py skips moving everyone's bookings on when no one's next cut is due
(`Labor._soonest`): the rows are exactly those of a Labor that looks at every person at
every report, for any sequence of sign-ins, sign-outs, work-order changes and timer ticks."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.plant import PlantConfig
from streams import labor as labor_module
from streams.labor import Labor
from tests.test_labor import at, sign_in, sign_out, wo_end, wo_start

PEOPLE = ["ann", "bo", "cy"]
STATIONS = ["IM-01", "IM-02", "CNC-01"]
STEP = st.tuples(
    st.sampled_from(["in", "out", "start", "end", "tick"]),
    st.sampled_from(PEOPLE),
    st.sampled_from(STATIONS),
    st.floats(min_value=0.0, max_value=30.0),  # hours: crosses shift ends and 12 h expiries
)


def apply(labor: Labor, seq: int, step: tuple[str, str, str, float], forget: bool) -> list[Any]:
    kind, who, station, hours = step
    if forget:  # the reference: as if nothing were known of anyone's next cut
        labor._soonest = labor_module._UNKNOWN
    if kind == "tick":
        labor.tick(int(at(hours).timestamp() * 1_000_000))
    else:
        ev = {
            "in": lambda: sign_in(who, station, at(hours)),
            "out": lambda: sign_out(who, station, at(hours)),
            "start": lambda: wo_start(f"WO-{who}", station, at(hours)),
            "end": lambda: wo_end(f"WO-{who}", station, at(hours)),
        }[kind]()
        labor.on_event(seq, ev)
    return labor.take()


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(STEP, max_size=25))
def test_skipping_ticks_changes_no_row(plant: PlantConfig, steps: list[Any]) -> None:
    fast, reference = Labor(plant), Labor(plant)
    for seq, step in enumerate(steps, start=1):
        assert apply(fast, seq, step, False) == apply(reference, seq, step, True)
