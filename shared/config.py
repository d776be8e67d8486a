"""Configuration: defaults, then a YAML file, then the environment (highest wins).

One flat model shared by every process, so a node is described once. The file is
``$CORRAL_CONFIG`` or ``$CORRAL_DIR/corral.yaml`` when it exists.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

# Environment variable -> config field. Kept explicit so `docs/architecture.md` can list them.
ENV = {
    "CORRAL_DIR": "dir",
    "CORRAL_NODE": "node",
    "CORRAL_NATS_URL": "nats_url",
    "CORRAL_NATS_CREDENTIALS": "nats_credentials",
    "CORRAL_REQUEST_TIMEOUT": "request_timeout",
    "CORRAL_OPERATION_RETENTION": "operation_retention",
    "CORRAL_EVENTS_MAX_AGE": "events_max_age",
    "CORRAL_EVENTS_MAX_BYTES": "events_max_bytes",
    "CORRAL_TRACING": "tracing",
    "CORRAL_OTLP_ENDPOINT": "otlp_endpoint",
    "CORRAL_LOG_LEVEL": "log_level",
    "CORRAL_KV_REPLICAS": "kv_replicas",
    "CORRAL_CLUSTER": "cluster",
}


def _default_dir() -> Path:
    return Path.cwd() / "var"


class Config(BaseModel):
    dir: Path = Field(default_factory=_default_dir)
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "none")
    nats_url: str = "nats://127.0.0.1:4222"
    # The bus credentials file (see shared/auth.py); unset: each process reads its own,
    # $CORRAL_DIR/credentials/<name>.json, written by `make up`.
    nats_credentials: Path | None = None
    # Seconds a bus request may take before the caller gets a 503.
    request_timeout: float = 5.0
    # Seconds a finished operation stays readable (LXD: 5 s; users lose exit codes).
    operation_retention: float = 600.0
    events_max_age: float = 24 * 3600.0
    events_max_bytes: int = 256 * 1024 * 1024
    # "off" | "console" | "otlp"
    tracing: str = "off"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    log_level: str = "info"
    # JetStream replicas for KV buckets and streams (1 on one node, 3 in a cluster).
    kv_replicas: int = 1
    # This node is a member of a cluster (`make cluster-up`, docs/cluster.md): the services
    # bound to a host (instance, storage, network) answer ``corral.node.<node>.*`` for the
    # instances, volumes and bridges located here, and records carry their location. Off:
    # a standalone server, where LXD says location "none".
    cluster: bool = False

    @property
    def socket_path(self) -> Path:
        return self.dir / "unix.socket"

    def credentials_for(self, name: str) -> Path:
        """The credentials file a process named ``name`` connects with."""
        return self.nats_credentials or self.dir / "credentials" / f"{name}.json"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"


def load_config(**overrides: object) -> Config:
    """Build the config; explicit overrides (tests, CLI flags) win over everything."""
    env_dir = os.environ.get("CORRAL_DIR")
    base_dir = Path(env_dir) if env_dir else _default_dir()
    path = Path(os.environ.get("CORRAL_CONFIG", base_dir / "corral.yaml"))
    values: dict[str, object] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        values.update(loaded)
    for var, field in ENV.items():
        if var in os.environ:
            values[field] = os.environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = Config(**values)
    cfg.dir = cfg.dir.absolute()
    return cfg


@lru_cache(maxsize=1)
def get_config() -> Config:
    return load_config()


def env_seconds(name: str, default: float, minimum: float) -> float:
    """A period in seconds from the environment variable ``name`` (tests make periodic
    work fast with it): ``default`` when unset or not a number, never below ``minimum``."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = default
    return max(minimum, value)


SCHEDULE_SHIFT_ENV = "CORRAL_SNAPSHOT_SCHEDULE_SHIFT"


def schedule_shift() -> timedelta:
    """How far ahead of the wall clock ``snapshots.schedule`` cron times are matched
    (``CORRAL_SNAPSHOT_SCHEDULE_SHIFT`` seconds, default 0). Why: a cron schedule fires at
    a minute boundary, so a test of the real schedule pass would wait up to a minute for
    one; with a shift it starts the service so the next boundary comes in seconds. Only
    the matching moves: names, ``created_at`` and expiry keep the real clock."""
    return timedelta(seconds=env_seconds(SCHEDULE_SHIFT_ENV, 0.0, 0.0))
