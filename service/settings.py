"""One Settings object for every process; environment variables use the prefix ``CREME_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine.inputs import EMBEDDED_MODEL
from service.logs import LogFormat


class Settings(BaseSettings):
    """Configuration of the gateway, the workers and the command line."""

    model_config = SettingsConfigDict(env_prefix="CREME_", extra="ignore")

    model: str = Field(EMBEDDED_MODEL, description="Local HF model directory, or the embedded default.")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field("cpu", description="torch device for the model, e.g. cpu, cuda, cuda:1.")
    cache_dir: Path = Field(Path.home() / ".cache" / "creme", description="Converted model cache.")
    database_url: str = Field("sqlite:///./creme.db", description="SQLAlchemy URL; Postgres in production.")
    redis_url: str | None = Field(None, description="Redis URL; unset means the in-process queue.")
    queue_prefix: str = Field(
        "creme", description="Redis key prefix: a stream PREFIX:jobs:<model> per model, channel PREFIX:nudge."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    worker_id: str | None = Field(None, description="Stable worker name; defaults to host-pid.")
    heartbeat_seconds: float = 5.0
    worker_lease_seconds: float = 30.0
    reconcile_seconds: float = 2.0
    max_job_attempts: int = 3
    max_wait_seconds: float = 120.0
    max_queue_depth: int = 1000
    max_prompt_chars: int = 2000
    max_prompt_tokens: int = Field(256, description="Longest prompt, answer or phrase, in the model's tokens.")
    max_edit_cost: int = Field(
        20_000, description="Largest edit: tokens of the longest templated prompt x templates x layers."
    )
    max_eval_queries: int = 64
    max_body_bytes: int = 1_000_000
    require_auth: bool = Field(False, description="Require an API key on /v1 even while no key exists.")
    log_format: LogFormat = Field("text", description="Log lines as text, or one JSON object each.")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
