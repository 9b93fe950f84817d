"""Deployment files agree with the code: every setting is in .env.example and nothing else is;
compose only sets real settings and has the shape the README promises; the Dockerfile is a slim,
non-root, multi-stage image with a health check. (No Docker engine runs here: hadolint lints the
Dockerfile in `make lint`, these tests check what the files say.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {name.upper() for name in Settings.model_fields}
APP_SERVICES = ("migrate", "api", "worker")
# Read by compose itself (for the bundled postgres), not by the service.
COMPOSE_ONLY = {"POSTGRES_PASSWORD"}
_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=", re.MULTILINE)
_COMMENTED = re.compile(r"^#\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
_INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")


def env_example() -> str:
    return (ROOT / ".env.example").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_every_setting_is_in_env_example_and_nothing_else() -> None:
    names = _ASSIGNMENT.findall(env_example())
    assert len(names) == len(set(names)), "a variable is listed twice"
    assert set(names) - SETTINGS == set(), "not a setting (typo, or a removed setting)"
    assert SETTINGS - set(names) == set(), "a setting is missing from .env.example"


def test_every_env_example_setting_has_a_comment_above_its_section() -> None:
    # Each assignment is preceded (within its block) by at least one comment line.
    blocks = env_example().split("\n\n")
    for block in blocks:
        if _ASSIGNMENT.search(block):
            assert block.lstrip().startswith("#"), block


def test_env_example_is_a_valid_configuration() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.missing()  # secrets are blank in the example, so /readyz would say so


def test_compose_environment_only_sets_real_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["env_file"] in (".env", [".env"]), name  # every setting reaches it
        environment = service.get("environment", {})
        assert isinstance(environment, dict), "use the mapping form"
        assert set(environment) - SETTINGS == set(), name
        for value in environment.values():
            referenced = set(_INTERPOLATION.findall(str(value)))
            assert referenced <= SETTINGS | COMPOSE_ONLY, (name, referenced)
    documented = set(_COMMENTED.findall(env_example()))
    assert documented >= COMPOSE_ONLY, ".env.example should mention POSTGRES_PASSWORD (commented)"


def test_compose_has_postgres_migrate_api_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", *APP_SERVICES}

    postgres = services["postgres"]
    [volume] = postgres["volumes"]
    assert volume.split(":")[0] in compose["volumes"]
    assert volume.endswith(":/var/lib/postgresql/data")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    migrate = services["migrate"]
    assert migrate["command"][-1] == "migrate"
    assert migrate["restart"] == "no"  # one-shot
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    api = services["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert str(api["environment"]["RUN_WORKER"]).lower() == "false"  # the worker runs alone
    assert "command" not in api  # the image's CMD: optin-backend serve

    worker = services["worker"]
    assert worker["command"][-1] == "worker"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in APP_SERVICES:
        url = services[name]["environment"]["DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_slim_multi_stage_non_root_with_a_healthcheck() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert "-slim" in stage[0], stage[0]
    final = stages[-1]
    text = "\n".join(final)
    assert "COPY --from=" in text  # the built virtualenv, not a build inside the final image
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "uv "):
        assert tool not in text, f"{tool} in the final image"
    [user] = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert user not in ("root", "0")
    [healthcheck] = [line for line in final if line.upper().startswith("HEALTHCHECK ")]
    assert "/healthz" in healthcheck
    [cmd] = [line for line in final if line.upper().startswith("CMD ")]
    assert "app.cli" in cmd and "serve" in cmd


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for pattern in (".env", ".venv", "*.db", ".git"):
        assert pattern in ignored


def test_serve_leaves_forwarded_headers_to_the_app() -> None:
    # Client IPs come from TRUSTED_PROXIES (app/clientip.py); uvicorn must not rewrite them.
    source = (ROOT / "app" / "cli.py").read_text(encoding="utf-8")
    assert "proxy_headers=False" in source
