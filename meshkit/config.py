"""Configuration from environment variables, with defaults for the embedded (one-machine) mode.

Every variable is `GREENMESH_<FIELD>`; the OpenTelemetry SDK reads its own standard `OTEL_*` variables.
A missing or invalid value stops the process with one line naming the variable (see `load_settings`).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshkit.provinces import is_province_code

ENV_PREFIX = "GREENMESH_"


class Component(StrEnum):
    REGISTRY = "registry"
    FLOWS = "flows"
    ENERGY = "energy"
    GATEWAY = "gateway"
    # The national view (services/national): the dispatch statistics of every province, from the national hub.
    NATIONAL = "national"


SERVICES: tuple[Component, ...] = (Component.REGISTRY, Component.FLOWS, Component.ENERGY)
# What a province runs (deploy/k8s/base); the national view runs once, at the national level (deploy/k8s/national).
PROVINCE_COMPONENTS: tuple[Component, ...] = (*SERVICES, Component.GATEWAY)

# Default gRPC ports on one machine; `greenmesh up` moves a component elsewhere if its port is taken.
DEFAULT_GRPC_PORTS: dict[Component, int] = {
    Component.GATEWAY: 50050,
    Component.REGISTRY: 50051,
    Component.FLOWS: 50052,
    Component.ENERGY: 50053,
    Component.NATIONAL: 50054,
}
DEFAULT_HTTP_PORT = 8080
# A shared secret that signs caller identities (meshkit/caller.py) is at least this long.
MIN_CALLER_KEY_LENGTH = 32


class MeshSettings(BaseSettings):
    """Settings shared by every component; each process reads the ones it needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    province: str = Field("32", description="GB/T 2260 two-digit province code of this deployment")
    data_dir: Path = Field(Path(".greenmesh"), description="local data: SQLite files, NATS store, traces")
    nats_url: str = Field("nats://127.0.0.1:4222", description="comma-separated NATS server URLs")
    nats_reconnect_wait_seconds: float = Field(1.0, gt=0)
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file <data_dir>/<component>.db"
    )
    caller_key: SecretStr | None = Field(
        None,
        description=(
            "the mesh's shared secret that signs caller identities; at least 32 characters; in Kubernetes from "
            "the Secret; default: <data_dir>/caller.key, made when missing"
        ),
    )
    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds; 0.0.0.0 in containers")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="default: per component, 50050-50053")
    http_host: str = Field("127.0.0.1")
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535, description="the gateway's REST port")
    gateway_default_timeout_seconds: float = Field(
        10.0, gt=0, description="gateway: deadline of a backend call when the client sets none"
    )
    gateway_max_timeout_seconds: float = Field(60.0, gt=0, description="gateway: the longest deadline a client gets")
    gateway_stream_timeout_seconds: float = Field(
        3600.0, gt=0, description="gateway: default and longest deadline of a server stream (the event subscription)"
    )
    gateway_max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="gateway: the largest REST request body (413 above it)"
    )
    gateway_rate_per_second: float = Field(50.0, gt=0, description="gateway: calls per second per credential")
    gateway_rate_burst: float = Field(100.0, ge=1, description="gateway: bucket size per credential")
    gateway_anonymous_rate_per_second: float = Field(
        10.0, gt=0, description="gateway: calls per second per client address without a credential"
    )
    gateway_anonymous_rate_burst: float = Field(20.0, ge=1)
    gateway_credential_cache_seconds: float = Field(
        300.0, gt=0, description="gateway: how long a verified API key is trusted without asking the registry"
    )
    registry_addr: str = Field("127.0.0.1:50051", description="host:port the gateway reaches registry at")
    flows_addr: str = Field("127.0.0.1:50052")
    energy_addr: str = Field("127.0.0.1:50053")
    migrate_on_start: bool = Field(True, description="apply Alembic migrations when a service starts")
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    db_ping_seconds: float = Field(2.0, gt=0, description="how often readiness checks the database")
    outbox_poll_seconds: float = Field(0.5, gt=0)
    outbox_batch_size: int = Field(1000, ge=1, le=10_000)  # rows per pipelined publish window
    outbox_backlog_limit: int = Field(
        200_000,
        ge=0,
        description="reports answer RESOURCE_EXHAUSTED (reason OUTBOX_BACKLOG) while more outbox rows than this "
        "wait to be published (NATS down, or the relay held by a slow consumer); 0: no limit",
    )
    consumer_lag_limit: int = Field(
        1_000_000,
        ge=0,
        description="the outbox relay holds publishing while a durable consumer of its stream has more than this "
        "many messages not yet delivered; 0: never",
    )
    stream_replicas: int = Field(1, ge=1, le=5)
    stream_max_age_days: float = Field(400.0, gt=0, description="how long JetStream keeps events")
    stream_duplicate_window_seconds: float = Field(600.0, gt=0)
    consumer_ack_wait_seconds: float = Field(30.0, gt=0)
    consumer_max_deliver: int = Field(20, ge=1)
    trace_consumer_link_only: bool = Field(
        False, description="consumers link to the producer span instead of continuing its trace"
    )
    reflection: bool = Field(True, description="serve gRPC server reflection")
    flows_diversion_days: float = Field(
        7.0, gt=0, description="flows: a shipment not received within this many days raises POSSIBLE_DIVERSION"
    )
    flows_monitor_interval_seconds: float = Field(
        60.0, gt=0, description="flows: how often overdue storage, diversion, overstock and mass balance are checked"
    )
    national_link: bool = Field(
        False,
        description=(
            "flows: this province's NATS is a leaf of the national hub; import other provinces' facilities and "
            "the transfers shipped to this province (stream GREENMESH_<province>_INBOUND)"
        ),
    )
    log_level: str = Field("INFO")
    log_format: str = Field("json", description="json or text")

    @field_validator("province")
    @classmethod
    def _province_is_gbt2260(cls, value: str) -> str:
        if not is_province_code(value):
            raise ValueError(f"{value!r} is not a GB/T 2260 province code such as 32 (Jiangsu)")
        return value

    @field_validator("caller_key")
    @classmethod
    def _caller_key_is_real(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < MIN_CALLER_KEY_LENGTH:
            raise ValueError(f"must be at least {MIN_CALLER_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`)")
        if "CHANGE-ME" in secret.upper():
            raise ValueError("is the placeholder of deploy/k8s/base/secret.yaml; generate one: openssl rand -hex 32")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_known(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return upper

    @field_validator("log_format")
    @classmethod
    def _log_format_known(cls, value: str) -> str:
        if value not in {"json", "text"}:
            raise ValueError("must be json or text")
        return value

    def database_url_for(self, component: Component) -> str:
        """The component's own database; SQLite under the data directory unless configured."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{component.value}.db').resolve()}"

    def grpc_port_for(self, component: Component) -> int:
        return self.grpc_port if self.grpc_port is not None else DEFAULT_GRPC_PORTS[component]

    def service_addr(self, component: Component) -> str:
        return {
            Component.REGISTRY: self.registry_addr,
            Component.FLOWS: self.flows_addr,
            Component.ENERGY: self.energy_addr,
        }[component]


def normalise_database_url(url: str) -> str:
    """Accept the plain URLs operators write and pick the async drivers the services use."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


class ConfigError(SystemExit):
    """Raised (and so ends the process with status 2) when a variable is missing or invalid."""


def load_settings(**overrides: object) -> MeshSettings:
    """Read the environment; on a bad value print one line naming the variable and exit."""
    try:
        return MeshSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        variable = f"{ENV_PREFIX}{field.upper()}"
        message = first["msg"].removeprefix("Value error, ")
        print(f"greenmesh: configuration error: {variable}: {message}", file=sys.stderr)
        raise ConfigError(2) from None
