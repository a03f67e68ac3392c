"""docker-compose.yml is correct by construction: services, healthchecks, GPU, env names match Settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"]
    assert services["migrate"]["command"] == ["creme", "migrate"]
    assert services["api"]["command"] == ["creme", "serve"]
    assert services["worker"]["command"] == ["creme", "worker"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    for name in ("api", "worker"):  # the gateway reads the tokenizer, the workers the model
        assert any(v.endswith(":/models:ro") for v in services[name]["volumes"])


def test_every_creme_variable_is_a_setting() -> None:
    fields = {f"CREME_{name.upper()}" for name in Settings.model_fields}
    services = _compose()["services"]
    seen = set()
    for service in services.values():
        for key in service.get("environment", {}):
            if key.startswith("CREME_"):
                seen.add(key)
                assert key in fields, f"{key} is not a Settings field"
    assert {"CREME_DATABASE_URL", "CREME_REDIS_URL", "CREME_MODEL", "CREME_DEVICE"} <= seen
    api_env = services["api"]["environment"]
    assert api_env["CREME_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert api_env["CREME_REDIS_URL"].startswith("redis://redis:")


def test_database_url_points_at_the_postgres_service() -> None:
    compose = _compose()
    pg = compose["services"]["postgres"]["environment"]
    url = compose["services"]["api"]["environment"]["CREME_DATABASE_URL"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}" in url


def test_readme_documents_every_setting() -> None:
    readme = (COMPOSE.parent / "README.md").read_text()
    missing = [f"CREME_{name.upper()}" for name in Settings.model_fields if f"CREME_{name.upper()}" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
