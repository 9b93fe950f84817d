"""The one place the service's configuration is read from (environment and `.env`)."""

from __future__ import annotations

import ipaddress
import json
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.redaction import mask_url

OPT_IN_CODE = "[opt-in-code]"
DEFAULT_OPTIN_BODY = "Yes, send me text updates! [opt-in-code]"
DEFAULT_OPTOUT_KEYWORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT")


class CallLoopRoute:
    """Where one campaign's subscribers go: a group URL and an optional trigger URL."""

    __slots__ = ("group_url", "key", "trigger_url")

    def __init__(self, key: str, group_url: str, trigger_url: str | None) -> None:
        self.key = key
        self.group_url = group_url
        self.trigger_url = trigger_url


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def check_group_url(url: str, where: str) -> None:
    """A Call Loop group URL must be absolute http(s) and carry `/r/` (we derive `/s/` from it)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{where}: the group URL {mask_url(url)} must start with https://")
    if "/r/" not in url:
        raise ValueError(
            f"{where}: the group URL {mask_url(url)} has no '/r/' path segment "
            "(the opt-out URL is derived by replacing /r/ with /s/)"
        )


def check_trigger_url(url: str, where: str) -> None:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{where}: the trigger URL {mask_url(url)} must start with https://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # A start-up error must not print the raw input: it holds the secret Call Loop URLs
        # and keys. Our own messages name the setting (and the route) with URLs masked.
        hide_input_in_errors=True,
    )

    # Where and how the service runs
    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    database_url: str = "sqlite+aiosqlite:///./optin.db"
    # PostgreSQL: give up on a new connection after this long (a hung server answers 503, fast)
    database_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # LoopMessage
    loop_api_key: SecretStr | None = None
    loop_api_base_url: str = "https://a.loopmessage.com"
    loop_optin_body: str = DEFAULT_OPTIN_BODY
    loop_sender_type: Literal["", "shared"] = ""
    loop_webhook_secret: SecretStr | None = None
    # During a rotation LoopMessage may still send the old value: both are accepted.
    loop_webhook_secret_previous: SecretStr | None = None
    loop_timeout_seconds: float = 10.0
    loop_audience_delete_on_optout: bool = False
    optout_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OPTOUT_KEYWORDS)
    )

    # Call Loop
    callloop_group_url: SecretStr | None = None
    callloop_trigger_url: SecretStr | None = None
    callloop_routes: SecretStr | None = None
    callloop_method: Literal["POST", "GET"] = "POST"
    callloop_phone_format: Literal["E164", "NATIONAL", "DIGITS"] = "E164"
    callloop_timeout_seconds: float = 10.0
    phone_default_region: str = "US"

    # The public link endpoints
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_links: str = "30/minute"
    rate_limit_storage_url: str = "memory://"
    # Wrong admin tokens (admin API and console sign-in) per client IP, before a 429
    rate_limit_admin_failures: str = "10/minute"
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Admin
    admin_token: SecretStr | None = None
    # Read-only bearer token for /metrics (ADMIN_TOKEN is accepted there too)
    metrics_token: SecretStr | None = None

    # Delivery worker
    run_worker: bool = True
    delivery_poll_interval_seconds: float = 1.0
    delivery_backoff_base_seconds: float = 2.0
    delivery_backoff_max_seconds: float = 900.0
    delivery_max_attempts: int = Field(default=8, ge=1, le=100)
    delivery_lease_seconds: float = Field(default=30.0, gt=0, le=60)
    delivery_concurrency: int = Field(default=8, ge=1, le=100)
    # The in-process worker (RUN_WORKER) gives way to a busy API: when the API serves 8 or more
    # requests at once as a claim's jobs are done, it waits this long before the next; 0: never.
    delivery_yield_seconds: float = Field(default=0.05, ge=0, le=5)
    # The standalone worker (`optin-backend worker`) serves its own /metrics on HOST:this port,
    # without a token: keep it on an internal network. Unset: no metrics port.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # On shutdown, jobs still running after this long are cancelled and given back (pending).
    delivery_shutdown_grace_seconds: float = Field(default=20.0, ge=0, le=120)

    @field_validator("cors_allow_origins", "trusted_proxies", "optout_keywords", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("cors_allow_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if "*" in origin:
                raise ValueError("CORS_ALLOW_ORIGINS takes exact origins; '*' is not allowed")
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise ValueError(
                    f"CORS_ALLOW_ORIGINS: {origin!r} is not an origin like https://example.com"
                )
        return [origin.rstrip("/") for origin in origins]

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ValueError(f"TRUSTED_PROXIES: {proxy!r} is not an IP or CIDR") from exc
        return proxies

    @field_validator("optout_keywords")
    @classmethod
    def _upper_keywords(cls, keywords: list[str]) -> list[str]:
        return [keyword.upper() for keyword in keywords]

    @field_validator("loop_optin_body")
    @classmethod
    def _body_has_code(cls, body: str) -> str:
        if OPT_IN_CODE not in body:
            raise ValueError(f"LOOP_OPTIN_BODY must contain the literal {OPT_IN_CODE}")
        return body

    @field_validator("loop_api_base_url")
    @classmethod
    def _strip_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("rate_limit_links", "rate_limit_admin_failures")
    @classmethod
    def _rate_limit(cls, value: str, info: ValidationInfo) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            name = str(info.field_name).upper()
            raise ValueError(f"{name}: {value!r} is not a limit like 30/minute") from exc
        return value

    @field_validator(
        "loop_api_key",
        "loop_webhook_secret",
        "loop_webhook_secret_previous",
        "admin_token",
        "metrics_token",
        "callloop_group_url",
        "callloop_trigger_url",
        "callloop_routes",
        "worker_metrics_port",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.callloop_group_url is not None:
            check_group_url(self.callloop_group_url.get_secret_value(), "CALLLOOP_GROUP_URL")
        if self.callloop_trigger_url is not None:
            check_trigger_url(self.callloop_trigger_url.get_secret_value(), "CALLLOOP_TRIGGER_URL")
        _ = self.routes  # parse now so a bad routing table stops the start-up
        secrets = {
            "LOOP_WEBHOOK_SECRET": self.loop_webhook_secret,
            "LOOP_WEBHOOK_SECRET_PREVIOUS": self.loop_webhook_secret_previous,
            "ADMIN_TOKEN": self.admin_token,
            "METRICS_TOKEN": self.metrics_token,
        }
        admin = self.admin_token.get_secret_value() if self.admin_token else None
        for name in ("LOOP_WEBHOOK_SECRET", "LOOP_WEBHOOK_SECRET_PREVIOUS", "METRICS_TOKEN"):
            value = secrets[name]
            if admin and value is not None and value.get_secret_value() == admin:
                raise ValueError(f"{name} and ADMIN_TOKEN must differ")
        if self.environment == "production":
            for name, secret in secrets.items():
                if secret is not None and secret.get_secret_value() in {"changeme", "change-me"}:
                    raise ValueError(f"{name} still holds a placeholder value")
        return self

    @cached_property
    def routes(self) -> dict[str, CallLoopRoute]:
        """The per-campaign routing table (CALLLOOP_ROUTES), checked entry by entry."""
        if self.callloop_routes is None:
            return {}
        try:
            raw = json.loads(self.callloop_routes.get_secret_value())
        except json.JSONDecodeError as exc:
            raise ValueError(f"CALLLOOP_ROUTES is not valid JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError("CALLLOOP_ROUTES must be a JSON object of routes")
        routes: dict[str, CallLoopRoute] = {}
        for key, entry in raw.items():
            where = f"CALLLOOP_ROUTES[{key!r}]"
            if not key or len(key) > 200:
                raise ValueError(f"{where}: the key must be 1 to 200 characters")
            if not isinstance(entry, dict) or not isinstance(entry.get("group_url"), str):
                raise ValueError(f"{where}: needs an object with a group_url string")
            unknown = set(entry) - {"group_url", "trigger_url"}
            if unknown:
                raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
            check_group_url(entry["group_url"], where)
            trigger = entry.get("trigger_url")
            if trigger is not None and not isinstance(trigger, str):
                raise ValueError(f"{where}: trigger_url must be a string")
            if trigger:  # an empty string means no trigger, like an unset CALLLOOP_TRIGGER_URL
                check_trigger_url(trigger, where)
            routes[key] = CallLoopRoute(key, entry["group_url"], trigger or None)
        return routes

    @property
    def default_route(self) -> CallLoopRoute | None:
        if self.callloop_group_url is None:
            return None
        trigger = self.callloop_trigger_url
        return CallLoopRoute(
            "default",
            self.callloop_group_url.get_secret_value(),
            trigger.get_secret_value() if trigger else None,
        )

    @property
    def webhook_secrets(self) -> list[str]:
        return [
            secret.get_secret_value()
            for secret in (self.loop_webhook_secret, self.loop_webhook_secret_previous)
            if secret is not None
        ]

    def missing(self) -> list[str]:
        """Names of the settings whose absence disables part of the service."""
        names = []
        if self.loop_api_key is None:
            names.append("LOOP_API_KEY")
        if self.loop_webhook_secret is None:
            names.append("LOOP_WEBHOOK_SECRET")
        if self.callloop_group_url is None and not self.routes:
            names.append("CALLLOOP_GROUP_URL")
        if self.admin_token is None:
            names.append("ADMIN_TOKEN")
        return names


def secret_values(settings: Settings) -> list[str]:
    """Every secret string the service holds, for scrubbing logs."""
    values = [
        secret.get_secret_value()
        for secret in (
            settings.loop_api_key,
            settings.loop_webhook_secret,
            settings.loop_webhook_secret_previous,
            settings.admin_token,
            settings.metrics_token,
            settings.callloop_group_url,
            settings.callloop_trigger_url,
        )
        if secret is not None
    ]
    routes = list(settings.routes.values())
    if settings.default_route is not None:
        routes.append(settings.default_route)
    for route in routes:
        # The opt-out URL is the group URL with /r/ -> /s/ (app.clients.callloop.opt_out_url).
        values.extend((route.group_url, route.group_url.replace("/r/", "/s/", 1)))
        if route.trigger_url:
            values.append(route.trigger_url)
    return [value for value in values if len(value) >= 4]
