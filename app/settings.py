"""Service configuration, read once from the environment (names as in DESIGN §7)."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from app.egress.policy import EgressPolicy


LOCAL_ISSUER = "meshhook-local"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHHOOK_", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    supabase_url: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_URL"))
    supabase_jwt_secret: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_JWT_SECRET"))
    supabase_jwt_issuer: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_JWT_ISSUER"))
    supabase_anon_key: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_ANON_KEY"))
    # Verify tokens by asking Supabase Auth (GET /auth/v1/user) when the project publishes no
    # keys and shares no secret. Results are cached per token until the token expires.
    supabase_auth_verify: bool = Field(default=False, validation_alias=AliasChoices("MESHHOOK_SUPABASE_AUTH_VERIFY"))

    jwt_audience: str = "authenticated"
    jwt_leeway_s: int = Field(default=30, ge=0, le=300)
    jwks_cache_s: int = Field(default=600, ge=1, le=600)
    jwks_min_refetch_s: float = Field(default=5.0, ge=0)

    secret_key: str | None = None  # base64 of 32 bytes, AES-256-GCM for secrets at rest
    data_dir: str | None = None  # embedded Postgres data and generated keys

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    worker_concurrency: int = Field(default=32, ge=1, le=1024)
    # Fair share: at most this many runs of one project execute at once, across all workers.
    project_max_running: int = Field(default=16, ge=1, le=100_000)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    lease_s: float = Field(default=30.0, gt=0.5, le=3600)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    notify_enabled: bool = True
    sse_ping_s: float = Field(default=15.0, gt=0, le=300)  # heartbeat comment on idle event streams
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_output_bytes: int = Field(default=262_144, ge=1024)
    # Limits of one expression / one template render (app/workflows/expressions.py).
    expression_max_steps: int = Field(default=250_000, ge=1000)
    expression_timeout_s: float = Field(default=0.2, gt=0, le=60)
    expression_max_result_bytes: int = Field(default=4_194_304, ge=1024)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_connect_timeout_s: float = Field(default=2.0, gt=0)
    db_pool_timeout_s: float = Field(default=10.0, gt=0)  # wait for a free pooled connection (load)
    db_command_timeout_s: float = Field(default=15.0, gt=0)
    # Tenant safety (DESIGN §9): exceptions to the public-only egress rule, and the token that
    # /metrics requires when set.
    egress_allow: str = ""
    metrics_token: str | None = None
    # `transaction`: DATABASE_URL is a transaction-mode pooler (Supavisor, PgBouncer): no statement
    # outlives its transaction. Unset: `transaction` when the URL says `pgbouncer=true`, else `session`.
    db_pooler: Literal["session", "transaction"] | None = None
    # LISTEN needs a connection of its own for hours: a direct or session-mode URL. Without it under
    # transaction pooling the worker and the event streams poll (and say so at start).
    listen_url: str | None = None
    retention_days: float | None = Field(default=None, ge=1)  # unset: keep runs forever
    audit_retention_days: float | None = Field(default=None, ge=1)  # unset: keep audit rows forever
    retention_batch: int = Field(default=500, ge=1, le=10_000)  # root runs (whole lineage trees) per batch
    retention_interval_s: float = Field(default=300.0, gt=0)  # between pruning passes

    @field_validator("db_pooler", "retention_days", "audit_retention_days", mode="before")
    @classmethod
    def _blank_is_unset(cls, v):
        return None if isinstance(v, str) and v.strip() == "" else v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v):
        if isinstance(v, str) and not v.strip().startswith("["):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("secret_key")
    @classmethod
    def _check_key(cls, v):
        if v is None:
            return v
        try:
            raw = base64.b64decode(v, validate=True)
        except Exception as exc:  # noqa: BLE001 - turned into one clear line
            raise ValueError("must be base64") from exc
        if len(raw) != 32:
            raise ValueError("must be base64 of exactly 32 bytes")
        return v

    @field_validator("egress_allow")
    @classmethod
    def _check_egress(cls, v):
        from app.egress.policy import EgressPolicy

        EgressPolicy.from_setting(v)  # ValueError names the bad entry
        return v

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, v):
        return v or None

    @field_validator("database_url", "listen_url")
    @classmethod
    def _check_db(cls, v):
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("supabase_url")
    @classmethod
    def _check_supabase_url(cls, v):
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL (the project URL, e.g. https://xyz.supabase.co)")
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v):
        import logging

        level = str(v).upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def issuer(self) -> str:
        """The `iss` every token must carry, HS256 included (DESIGN §9.5). Without Supabase it is
        a fixed local issuer, which the dev tokens of `meshhook token` / `serve` carry."""
        if self.supabase_jwt_issuer:
            return self.supabase_jwt_issuer
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1"
        return LOCAL_ISSUER

    @property
    def egress_policy(self) -> EgressPolicy:
        from app.egress.policy import EgressPolicy

        return EgressPolicy.from_setting(self.egress_allow)

    @property
    def jwks_url(self) -> str | None:
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None


class SettingsError(SystemExit):
    """A bad setting: the process exits with one clear line."""


def load_settings() -> Settings:
    from pydantic import ValidationError
    from pydantic_settings.exceptions import SettingsError as _SourceError

    try:
        return Settings()
    except _SourceError as exc:  # a value that could not even be parsed (e.g. bad JSON)
        raise SettingsError(f"meshhook: invalid configuration: {exc}") from None
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "settings"
            info = Settings.model_fields.get(field)
            alias = getattr(info, "validation_alias", None) if info else None
            if field.isupper():
                env = field  # already the variable's name (an alias such as DATABASE_URL)
            elif alias is not None and hasattr(alias, "choices"):
                env = alias.choices[0]
            else:
                env = f"MESHHOOK_{field.upper()}"
            parts.append(f"{env}: {err['msg']}")
        raise SettingsError("meshhook: invalid configuration: " + "; ".join(parts)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
