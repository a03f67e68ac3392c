"""`creme keys create/list/revoke` and the `creme serve` binding rule, as subprocesses on a tmp SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.db import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.keys import authenticate

REPO = Path(__file__).resolve().parents[2]


def _env(db: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREME_")}
    env.update(
        CREME_DATABASE_URL=db,
        CREME_CACHE_DIR=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def _creme(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    return url


def test_keys_create_list_revoke_round_trip(migrated: str, tmp_path: Path) -> None:
    env = _env(migrated, tmp_path)
    created = _creme(env, "keys", "create", "ci-bot", "--scope", "read", "--scope", "edit")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("creme_") and "\n" not in token
    assert "shown only this once" in created.stderr and token not in created.stderr

    listed = _creme(env, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["scopes"], row["revoked_at"]) == ("ci-bot", ["read", "edit"], None)
    assert row["prefix"] == token.removeprefix("creme_")[:8]
    assert token not in listed.stdout

    table = _creme(env, "keys", "list")
    assert table.returncode == 0 and row["id"] in table.stdout and "active" in table.stdout
    assert token not in table.stdout

    engine = make_engine(migrated)
    try:
        with make_session_factory(engine)() as session:
            assert authenticate(session, token) is not None
        revoked = _creme(env, "keys", "revoke", row["prefix"])
        assert revoked.returncode == 0, revoked.stderr
        assert row["id"] in revoked.stdout
        with make_session_factory(engine)() as session:
            assert authenticate(session, token) is None
    finally:
        engine.dispose()
    after = json.loads(_creme(env, "keys", "list", "--json").stdout)
    assert after[0]["revoked_at"] is not None
    assert "revoked" in _creme(env, "keys", "list").stdout


def test_keys_default_to_read_and_refuse_unknown_scopes(migrated: str, tmp_path: Path) -> None:
    env = _env(migrated, tmp_path)
    assert _creme(env, "keys", "create", "viewer").returncode == 0
    assert json.loads(_creme(env, "keys", "list", "--json").stdout)[0]["scopes"] == ["read"]
    bad = _creme(env, "keys", "create", "x", "--scope", "root")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = _creme(env, "keys", "revoke", "no-such-key")
    assert missing.returncode == 1 and "no API key" in missing.stderr


def test_keys_need_a_migrated_database(tmp_path: Path) -> None:
    env = _env(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    result = _creme(env, "keys", "list")
    assert result.returncode == 2
    assert "not migrated" in result.stderr and "creme migrate" in result.stderr


def test_serve_on_a_public_address_without_keys_refuses_fast(tmp_path: Path) -> None:
    env = _env(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path)
    started = time.monotonic()
    result = _creme(env, "serve", "--host", "0.0.0.0", "--port", "8", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "refusing to serve on 0.0.0.0" in result.stderr and "creme keys create" in result.stderr
    assert "loading" not in result.stderr  # refused before the model is loaded
    assert not (tmp_path / "cache").exists()
    assert elapsed < 30


def test_serve_refuses_via_the_environment_host_too(tmp_path: Path) -> None:
    env = _env(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path, CREME_HOST="::")
    result = _creme(env, "serve", timeout=120)
    assert result.returncode == 2 and "refusing to serve on ::" in result.stderr
