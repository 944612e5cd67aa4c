"""Settings: ``jitgate.yaml`` (``--config`` / ``JITGATE_CONFIG``) overlaid by ``JITGATE_*``.

Nested keys are joined by ``__`` in the environment (``JITGATE_GATEWAY__LISTEN``).
Every problem stops start-up with one message that names the source and the key:
``jitgate.yaml: gateway.listen: expected HOST:PORT, got 'x'``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from jitgate.domain.durations import parse_duration
from jitgate.errors import ConfigError, JitgateError
from jitgate.notify.kinds import is_pattern


def _duration(value: Any) -> timedelta:
    try:
        return parse_duration(value)
    except JitgateError as exc:
        raise ValueError(exc.detail) from exc


def _duration_or_zero(value: Any) -> timedelta:
    if value in (0, "0", "0s"):
        return timedelta(0)
    return _duration(value)


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _http_url(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.split("/")[0]:
        raise ValueError("expected an http:// or https:// URL")
    return value


def _event_pattern(value: str) -> str:
    if not is_pattern(value):
        raise ValueError(f"{value!r} is not a notification type or a prefix such as 'request.*'")
    return value


MAX_CLOCK_SKEW = timedelta(seconds=5)
Duration = Annotated[timedelta, BeforeValidator(_duration)]
DurationOrZero = Annotated[timedelta, BeforeValidator(_duration_or_zero)]
Listen = Annotated[str, AfterValidator(_listen)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
EventPattern = Annotated[str, AfterValidator(_event_pattern)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControlSettings(_Section):
    listen: Listen = "127.0.0.1:8700"
    public_url: str | None = None

    @property
    def url(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")


class DecisionSettings(_Section):
    """The decision endpoints (``/authz/…``) answer with the upstream secret: they are off
    unless enabled, and then answer only callers (the proxies) within ``allow_from``."""

    enabled: bool = False
    allow_from: list[IPv4Network | IPv6Network] = [
        IPv4Network("127.0.0.1/32"),
        IPv6Network("::1/128"),
    ]


class GatewaySettings(_Section):
    listen: Listen = "127.0.0.1:8701"
    public_url: str | None = None
    # Gateway worker processes; unset: 1 for `jitgate up`, one per CPU for `serve gateway`.
    workers: int | None = Field(default=None, ge=1, le=256)
    clock_skew: DurationOrZero = timedelta(0)  # leeway on nbf/exp; at most 5s
    token_cache_size: int = 65_536
    upstream_connect_timeout: Duration = timedelta(seconds=5)
    upstream_timeout: Duration = timedelta(seconds=60)  # for the answer's head, and per body read
    # A caller must finish its request head within this of connecting (or of its previous
    # answer), and each read of its body must bring data within it: slow clients are cut.
    client_timeout: Duration = timedelta(seconds=30)
    max_body_size: ByteSize = ByteSize(1 << 30)  # request bodies, counted while streaming
    # JSON answers of APIs with response masks are read whole to be masked: larger is a 502.
    max_mask_body: ByteSize = ByteSize(10 << 20)
    # Upstreams on link-local / cloud-metadata addresses (169.254.0.0/16, fe80::/10,
    # fd00:ec2::254): refused at registration and at connect time unless this is true.
    allow_link_local_upstreams: bool = False
    decisions: DecisionSettings = DecisionSettings()

    @property
    def url(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")

    @property
    def leeway(self) -> float:
        return self.clock_skew.total_seconds()


class RevocationSettings(_Section):
    max_staleness: Duration = timedelta(seconds=2)


class AuditSettings(_Section):
    batch_size: int = 500
    flush_interval: float = 0.05  # seconds
    queue_size: int = 10_000
    checkpoint_interval: Duration = timedelta(minutes=5)


class DemoSettings(_Section):
    upstream_listen: Listen = "127.0.0.1:8702"


class WebhookSettings(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    url: HttpUrl
    secret: SecretStr = Field(min_length=16)
    events: list[EventPattern] = ["*"]  # notification types, "request.*" or "*"


class SlackSettings(_Section):
    # Never empty: an HMAC under the empty key is one anybody can compute.
    bot_token: SecretStr = Field(min_length=1)
    signing_secret: SecretStr = Field(min_length=1)
    api_url: HttpUrl = "https://slack.com/api"
    default_channel: str | None = Field(default=None, min_length=1, max_length=80)


class NotificationSettings(_Section):
    webhooks: list[WebhookSettings] = []
    slack: SlackSettings | None = None
    max_attempts: int = Field(default=10, ge=1, le=100)
    backoff: Duration = timedelta(seconds=10)  # the first retry's delay; doubles each time
    max_backoff: Duration = timedelta(hours=1)
    timeout: Duration = timedelta(seconds=10)  # one delivery attempt, connect to answer
    expiry_warning: Duration = timedelta(minutes=5)  # grantees are told this long before

    @model_validator(mode="after")
    def _unique_names(self) -> NotificationSettings:
        names = [w.name for w in self.webhooks]
        if len(names) != len(set(names)):
            raise ValueError("webhook names must be unique")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks) or self.slack is not None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JITGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database_url: str | None = None
    state_dir: Path = Path("./.jitgate")
    control: ControlSettings = ControlSettings()
    gateway: GatewaySettings = GatewaySettings()
    policy_file: Path | None = None
    master_key_file: Path | None = None
    master_key: SecretStr | None = None
    revocation: RevocationSettings = RevocationSettings()
    audit: AuditSettings = AuditSettings()
    demo: DemoSettings = DemoSettings()
    notifications: NotificationSettings = NotificationSettings()
    issuer: str | None = None
    log_level: str = "info"
    config: Path | None = None  # the file these settings came from (JITGATE_CONFIG)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (the YAML file's content, passed by load_settings) < environment.
        return env_settings, init_settings

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'jitgate.db').resolve()}"

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.state_dir / "master.key"

    @property
    def token_issuer(self) -> str:
        return self.issuer or self.control.url


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the YAML file (if any) and the environment; ``ConfigError`` if bad."""
    path = config_file or (
        Path(os.environ["JITGATE_CONFIG"]) if "JITGATE_CONFIG" in os.environ else None
    )
    data: dict[str, Any] = {}
    source = "environment"
    if path is not None:
        source = f"{path} or environment"
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
        except yaml.MarkedYAMLError as exc:  # one line, naming the line (as the policy does)
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = ", ".join(part for part in (exc.context, exc.problem) if part)
            raise ConfigError(f"{where}: not valid YAML: {problem or 'malformed'}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the configuration must be a mapping of settings")
        data = dict(loaded or {})
        data["config"] = path
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from exc
    if settings.gateway.clock_skew > MAX_CLOCK_SKEW:
        raise ConfigError(f"{source}: gateway.clock_skew: at most 5s is allowed")
    return settings
