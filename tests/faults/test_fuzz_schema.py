"""Schemathesis against the service's own OpenAPI schema, on PostgreSQL, through a real server.

Valid and invalid requests for every operation (bounded: a few dozen each): no 5xx, and every
response matches the schema (status documented, content type, body shape).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.conftest import ADMIN_TOKEN, WEBHOOK_SECRET, Fakes
from tests.faults.conftest import Processes, service_env

EXAMPLES = 25  # per operation and mode: the whole run stays around a minute


def auth_for(path: str) -> dict[str, str]:
    if path.startswith("/v1/webhooks/"):
        return {"Authorization": WEBHOOK_SECRET}
    if path.startswith(("/v1/opt-ins", "/v1/deliveries", "/v1/subscribers")):
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return {}


def runner(operation: Any, mode: GenerationMode, base_url: str) -> Any:
    headers = auth_for(operation.path)
    checks = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        checks += [response_schema_conformance, content_type_conformance, status_code_conformance]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=15)
        case.validate_response(response, checks=checks)

    return run


def fuzz(raw_schema: dict[str, Any], base_url: str) -> list[str]:
    schema = schemathesis.openapi.from_dict(raw_schema)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                runner(operation, mode, base_url)()
            except Unsatisfiable:
                continue  # nothing in this operation can be made invalid (no parameters)
            except Exception as exc:  # collect them all, then fail once with the list
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures


async def test_schema_fuzzing_finds_no_5xx_and_no_schema_drift(
    pg_url: str, fakes: Fakes, procs: Processes
) -> None:
    api = await procs.api(
        service_env(
            pg_url,
            fakes,
            rate_limit_links="100000/minute",
            rate_limit_admin_failures="100000/minute",
        )
    )
    async with httpx.AsyncClient() as client:
        raw_schema = (await client.get(f"{api.url}/openapi.json")).json()
    failures = await asyncio.to_thread(fuzz, raw_schema, api.url)
    assert not failures, "\n\n".join(failures)
