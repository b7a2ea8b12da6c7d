"""Schemathesis against the CRM intake's own OpenAPI, with credentials, on real PostgreSQL:
no input it generates, valid or not, gets a 5xx, and every answer matches the schema."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from collectors.crm_api import create_app
from mesflow.plant import PlantConfig
from mesflow.settings import Settings

TOKEN = "tok-schemathesis-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_conforms_to_its_openapi(
    db_url: str, plant: PlantConfig, mode: GenerationMode
) -> None:
    app = create_app(plant, db_url, Settings(crm_tokens=f"crm-s:{TOKEN}"))
    # One stored order, so that work orders and GETs also reach their deeper paths.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """INSERT INTO crm_order (order_no, version, customer, priority, product, qty, due,
                                      status, event_ts, changed_by)
               VALUES ('SO-1', 1, 'ACME', 1, 'P-100', 10, now(), 'open', now(), 'seed')"""
        )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Intake (2), GET order, trace (2), change requests, promise (collectors/crm_dispatch.py).
    assert len(operations) == 7, [o.label for o in operations]
    calls: dict[int, int] = {}

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=BEARER, checks=CHECKS)
            calls[response.status_code] = calls.get(response.status_code, 0) + 1

        run()
    assert sum(calls.values()) >= 60, calls
    assert not any(code >= 500 for code in calls), calls
    # The credentials were used: the requests reached the routes, not only the guard.
    # (Bodies that pass the schema and the plant's products are fuzzed in
    # tests/test_crm_api_fuzz.py, which also reaches the 2xx paths.)
    assert calls.keys() & {404, 422}, calls
    if mode is GenerationMode.POSITIVE:
        assert 401 not in calls, calls  # (negative mode also mangles the credentials)
