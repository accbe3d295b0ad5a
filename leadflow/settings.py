"""What a process reads from its environment: typed settings, a bad value refused in one line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Self

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """An environment variable a process cannot use; main() refuses to start (exit 2)."""


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def integer(minimum: int, maximum: int) -> Callable[[object], int]:
    """A validator: an int within [minimum, maximum] (`Annotated[int, BeforeValidator(...)]`)."""

    def check(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum:
            return value
        text = _text(value)
        try:
            number = int(text)
        except ValueError:
            number = minimum - 1
        if not minimum <= number <= maximum:
            raise ValueError(f"must be an integer from {minimum} to {maximum}, not {text!r}")
        return number

    return check


def number(minimum: float, maximum: float) -> Callable[[object], float]:
    """A validator: a float within [minimum, maximum]."""

    def check(value: object) -> float:
        text = _text(value)
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if not minimum <= number <= maximum:  # NaN fails too
            raise ValueError(f"must be a number from {minimum:g} to {maximum:g}, not {text!r}")
        return number

    return check


Port = Annotated[int, BeforeValidator(integer(0, 65535))]


def _database_url(value: object) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = _text(value)
    try:
        drivername = make_url(text).drivername
    except ArgumentError:
        drivername = None
    if drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        # Never the URL itself in the message: it may hold a password.
        raise ValueError("must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
    return text


def _log_format(value: object) -> str:
    text = _text(value).lower()
    if text not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}, not {text!r}")
    return text


def _log_level(value: object) -> str:
    text = _text(value).upper()
    if not isinstance(logging.getLevelName(text), int):
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {text!r}")
    return text


DatabaseUrl = Annotated[str, BeforeValidator(_database_url)]
LogFormat = Annotated[str, BeforeValidator(_log_format)]
LogLevel = Annotated[str, BeforeValidator(_log_level)]


class EnvSettings(BaseSettings):
    """Fields named after their variables without the LEADFLOW_ prefix; a blank variable is an
    unset one (its default applies); `from_env` reads them or raises SettingsError."""

    model_config = SettingsConfigDict(
        env_prefix="LEADFLOW_",
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    @classmethod
    def from_env(cls) -> Self:
        """Read the environment now (only main() does, once): a bad value is a SettingsError
        naming its variable, as one line."""
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(describe(exc, cls.model_config.get("env_prefix", ""))) from None


def describe(exc: ValidationError, prefix: str) -> str:
    """A ValidationError as one line naming each variable: `LEADFLOW_GRPC_PORT must be ...`."""
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0] if error["loc"] else "").upper()
        if not name.startswith(prefix.upper()):  # a field without an alias of its own
            name = f"{prefix.upper()}{name}"
        cause = error.get("ctx", {}).get("error")
        if error["type"] == "value_error" and cause is not None:
            problems.append(f"{name} {cause}")
        else:
            problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)


class LogSettings(EnvSettings):
    """How a process logs: LEADFLOW_LOG_FORMAT and LEADFLOW_LOG_LEVEL."""

    log_format: LogFormat = "text"
    log_level: LogLevel = "INFO"


class ServiceSettings(LogSettings):
    """What every service reads: where its configuration and data are, where to listen. Each
    service's config.py subclasses it, with its own default ports."""

    # LEADFLOW_CONFIG, spelled out so `settings.config_path` is not mistaken for the Config.
    config_path: str = Field("leadflow.yaml", validation_alias="LEADFLOW_CONFIG")
    data_dir: str = "data"
    database_url: DatabaseUrl | None = None
    host: str = "0.0.0.0"
    grpc_port: Port = 0
    # 0: no metrics endpoint.
    metrics_port: Port = 0

    # Never from the environment: the PostgreSQL schema (or SQLite file) the service owns.
    db_schema: ClassVar[str] = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"
