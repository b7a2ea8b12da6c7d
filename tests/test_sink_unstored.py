"""A row type that reaches the results sink with no store for it is named in the log once
(streams/pg_sink.py `unstored`), not dropped silently; the inputs that ride along to the
sink on purpose (pg_sink.PASSED_THROUGH) are not. The suite-wide check that no flow of the
tests sends an unknown type is tests/conftest.py `no_unstored_rows`."""

from __future__ import annotations

import logging
from typing import NamedTuple

import pytest

from streams import pg_sink
from streams.pg_sink import PASSED_THROUGH, _Batch
from streams.records import StatusRow


class ForgottenRow(NamedTuple):
    machine: str
    value: int


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_unknown_row_type_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="streams.pg_sink")
    batch = _Batch()
    try:
        batch.add(ForgottenRow("IM-01", 1))
        batch.add_all([ForgottenRow("IM-02", 2), ForgottenRow("IM-03", 3)])
        _Batch().add(ForgottenRow("IM-04", 4))  # another batch: still once per process
        errors = _errors(caplog)
        assert len(errors) == 1, errors
        assert "test_sink_unstored.ForgottenRow" in errors[0]
        assert "not stored" in errors[0]
        assert batch.registered.groups() == []  # nothing pretends to store it
    finally:
        pg_sink._named_unstored.discard(ForgottenRow)


def test_passed_through_inputs_and_stored_rows_log_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="streams.pg_sink")
    batch = _Batch()
    for t in PASSED_THROUGH:
        # Field values do not matter to the check: it looks at the type only.
        batch.add(t._make([None] * len(t._fields)))  # type: ignore[attr-defined]
    batch.add(StatusRow._make([None] * len(StatusRow._fields)))
    assert _errors(caplog) == []
    assert not pg_sink._named_unstored
