"""Probes, and the migrations as the one source of the schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from app.db import Base
from tests.conftest import Api, ApiFactory


async def test_healthz(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-request-id"]


async def test_request_id_is_echoed(api: Api) -> None:
    response = await api.client.get("/healthz", headers={"X-Request-ID": "req-abc-123"})
    assert response.headers["x-request-id"] == "req-abc-123"


async def test_readyz_ready_when_configured(api: Api) -> None:
    from tests.conftest import wait_until

    async def ready() -> bool:
        return (await api.client.get("/readyz")).status_code == 200

    await wait_until(ready)
    body = (await api.client.get("/readyz")).json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"] == "ok"


async def test_readyz_names_missing_settings(make_api: ApiFactory) -> None:
    api = await make_api(loop_api_key=None, admin_token=None, run_worker=False)
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert "LOOP_API_KEY" in body["checks"]["missing_settings"]
    assert "ADMIN_TOKEN" in body["checks"]["missing_settings"]
    assert any("settings missing" in reason for reason in body["reasons"])


async def test_readyz_notices_migrations_behind(make_api: ApiFactory, db_engine: object) -> None:
    api = await make_api(run_worker=False)
    async with db_engine.begin() as conn:  # type: ignore[attr-defined]
        head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        await conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
    try:
        response = await api.client.get("/readyz")
        assert response.status_code == 503
        assert "migrations" in " ".join(response.json()["reasons"])
    finally:  # the PostgreSQL database is shared by the whole run: put the version back
        async with db_engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})


async def test_models_and_migrations_agree(db_engine: object) -> None:
    async with db_engine.connect() as conn:  # type: ignore[attr-defined]
        diff = await conn.run_sync(
            lambda sync_conn: compare_metadata(
                MigrationContext.configure(sync_conn, opts={"compare_type": True}), Base.metadata
            )
        )
    assert diff == []


async def test_openapi_describes_the_api(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    for path in ("/v1/opt-in-links", "/v1/webhooks/loopmessage", "/v1/opt-ins", "/readyz"):
        assert path in spec["paths"]
    assert (await api.client.get("/docs")).status_code == 200
