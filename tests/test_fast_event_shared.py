"""The fast path's models share one fields set per shape (mesflow/events.py `_shapes`):
nothing pydantic does to such a model may change it, or every later event of that shape
would claim fields its input did not set."""

from __future__ import annotations

import copy
import pickle

import pytest
from pydantic import ValidationError

from mesflow.events import _fast_event, parse_event_reference

PAYLOADS = [
    b'{"type":"count","machine":"M1","ts":"2026-11-16T07:00:00+08:00","good":3}',
    b'{"type":"count","machine":"M1","ts":"2026-11-16T07:00:00Z","id":"a","scrap":1}',
    b'{"type":"state","machine":"M1","ts":"2026-11-16T07:00:00Z","state":"down","reason":"x"}',
    b'{"type":"counter","machine":"M1","ts":"2026-11-16T07:00:00Z","name":"total","value":7}',
    b'{"type":"process_value","machine":"M1","ts":"2026-11-16T07:00:00Z","values":{"a":1}}',
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_pydantic_never_changes_a_shared_fields_set(payload: bytes) -> None:
    ev = _fast_event(payload)
    assert ev is not None
    before = set(ev.model_fields_set)
    shared = ev.model_fields_set
    assert _fast_event(payload).model_fields_set is shared  # type: ignore[union-attr]

    updated = ev.model_copy(update={"id": "changed"})
    assert updated.model_fields_set == before | {"id"}
    assert ev.model_copy().model_fields_set == before
    assert copy.deepcopy(ev).model_fields_set == before
    with pytest.raises(ValidationError):  # frozen: refused before the set is touched
        ev.id = "x"
    again = pickle.loads(pickle.dumps(ev))
    assert again == ev and again.model_fields_set == before

    assert shared == before
    reference = parse_event_reference(payload)
    assert ev.model_dump(exclude_unset=True) == reference.model_dump(exclude_unset=True)
    assert _fast_event(payload).model_fields_set == reference.model_fields_set  # type: ignore[union-attr]
