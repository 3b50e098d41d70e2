"""``feature_repo.yaml``: the environment of a Tessera repo, parsed into validated models.

The file holds environment only: store locations, Kafka, the Spark master, schedules and the
local services. Feature definitions live in Python modules that the file points to.

Any value may be overridden by an environment variable ``TESSERA__<SECTION>__<KEY>`` (double
underscores separate levels), for example ``TESSERA__ONLINE__URL=redis://cache:6379/0``. Relative
paths are resolved against the directory that holds the file.

Example:
    >>> from features.config import load_config
    >>> cfg = load_config("feature_repo.yaml")   # doctest: +SKIP
    >>> cfg.online.url                          # doctest: +SKIP
    'redis://127.0.0.1:6390/0'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from features.config_env import apply_env, one_line
from features.config_jobs import (
    DriftConfig,
    Schedule,
    SchedulerConfig,
    ServingLogConfig,
    ValidationConfig,
)
from features.errors import ConfigError

DEFAULT_FILE = "feature_repo.yaml"


class _Model(BaseModel):
    # An unknown key is an error, never silently ignored: a typo must not fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfflineConfig(_Model):
    """Offline store: Parquet files queried by DuckDB."""

    type: Literal["parquet"] = "parquet"
    path: Path = Field(Path(".tessera/offline"), description="Root folder of the Parquet tiles.")
    memory_limit: str = Field("2GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
                              description="DuckDB's memory limit for exports and reads; past "
                                          "it DuckDB spills to spill_path.")
    spill_path: Path = Field(Path(".tessera/spill"),
                             description="Where DuckDB spills what does not fit in memory.")
    online_snapshot: bool = Field(True, description="Batch runs also store every entity's "
                                  "online values next to the tiles, so materialize copies them "
                                  "instead of merging tiles.")


class OnlineConfig(_Model):
    """Online store: Redis (a single node or a cluster endpoint)."""

    type: Literal["redis"] = "redis"
    url: str = Field("redis://127.0.0.1:6390/0", description="redis://, rediss:// (TLS) or unix:// (a Unix socket) URL.")
    cluster: bool = Field(False, description="The URL is a Redis Cluster node.")
    timeout_ms: int = Field(500, gt=0, description="Connect and read timeout of one call.")
    spin_us: int | None = Field(None, ge=0, le=100_000, description=(
        "A read with no other in flight polls for Redis's reply this long before it sleeps "
        "(0: never). On a VM it saves the wake-up of an idle vCPU, ~25-80 µs a read; it costs "
        "that CPU time. Unset: 1000 for a local Redis (Unix socket or loopback), 200 for one "
        "elsewhere, or 0 where the guest kernel already polls before it "
        "halts an idle vCPU (haltpoll's guest_halt_poll_ns > 0), which does it better, and "
        "on a one-CPU machine with a local Redis, where the poll would hold Redis's CPU. "
        "Set 0 where the reader and Redis are pinned to one CPU."))

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {v!r}")
        return v


class KafkaConfig(_Model):
    """Kafka cluster the streaming consumers read from."""

    bootstrap_servers: str = Field("127.0.0.1:9392", description="host:port[,host:port...]")
    consumer_group: str = "tessera"

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, v: str) -> str:
        for server in v.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {v!r}")
        return v


class SparkConfig(_Model):
    """Spark used by ``tessera run --engine spark``: any master URL Spark accepts."""

    master: str = Field("local[2]", description="local[N], spark://host:7077, yarn, k8s://...")
    app_name: str = "tessera"
    conf: dict[str, str] = Field(default_factory=dict, description="Extra spark.* settings.")


class RegistryConfig(_Model):
    """Feast registry file written by ``tessera apply``."""

    path: Path = Path(".tessera/registry.db")


class RedisServiceConfig(_Model):
    """Local Redis started by ``tessera services up`` (Debian's redis-server)."""

    host: Literal["127.0.0.1", "localhost"] = "127.0.0.1"
    port: int = Field(6390, ge=1, le=65535)


class KafkaServiceConfig(_Model):
    """Local Apache Kafka (KRaft, one combined broker/controller) started by ``services up``."""

    host: Literal["127.0.0.1", "localhost"] = "127.0.0.1"
    port: int = Field(9392, ge=1, le=65535)
    controller_port: int = Field(9393, ge=1, le=65535)
    version: str = Field("4.3.1", pattern=r"^\d+\.\d+\.\d+$")
    heap: str = Field("512m", pattern=r"^\d+[mMgG]$", description="JVM -Xmx for the broker.")


class RedisClusterServiceConfig(_Model):
    """Local Redis Cluster (redis-server in cluster mode, one master per port, no replicas).

    Started by ``tessera services up`` when ``enabled`` (or with ``up --cluster``). Each node
    also listens on its cluster bus port, ``port + 10000``.
    """

    enabled: bool = False
    host: Literal["127.0.0.1", "localhost"] = "127.0.0.1"
    ports: tuple[int, ...] = Field((7001, 7002, 7003), description="One master per port.")

    @field_validator("ports")
    @classmethod
    def _cluster_ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters (ports), got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"ports must differ, got {list(v)}")
        bad = [p for p in v if not 1 <= p <= 55535]
        if bad:
            raise ValueError(f"each port must be 1..55535 (its cluster bus is port + 10000), "
                             f"got {bad}")
        return v


class ServicesConfig(_Model):
    """Local services for development, tests and the demo. Loopback only."""

    state_dir: Path = Field(Path(".tessera"), description="pids, logs, data; git-ignored.")
    redis: RedisServiceConfig = RedisServiceConfig()
    kafka: KafkaServiceConfig = KafkaServiceConfig()
    redis_cluster: RedisClusterServiceConfig = RedisClusterServiceConfig()


class ServeConfig(_Model):
    """``tessera serve``: the HTTP feature server (see docs/serving.md).

    The bearer token is best given by naming an environment variable (``token_env``), so that no
    secret sits in the file; ``token`` (or ``TESSERA__SERVE__TOKEN``) works too. With neither,
    the server needs no token.
    """

    host: str = Field("127.0.0.1", min_length=1, description="Address to bind (loopback).")
    port: int = Field(6566, ge=1, le=65535, description="TCP port (Feast's default, 6566).")
    token: SecretStr | None = Field(None, description="Bearer token every feature request "
                                    "must carry.")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="Name of an environment variable holding it.")
    max_entities: int = Field(1000, ge=1, description="Entities per request, at most.")
    max_body_bytes: int = Field(1 << 20, ge=64, description="Request body size, at most.")
    body_timeout_ms: int = Field(10_000, ge=1, description=(
        "A request whose body has not all arrived this long after it started gets a 408 and "
        "its connection is closed (a client that declared more bytes than it sent)."))
    poll_us: int | None = Field(None, ge=0, le=100_000, description=(
        "After each response the event loop polls for the next request this long before it "
        "sleeps (0: never). On a VM it saves the wake-up of the server's idle vCPU; it costs "
        "up to that much CPU a request, a core at most while requests keep coming. Unset: "
        "1000, or 0 where the guest kernel already polls before it halts an idle vCPU "
        "(haltpoll's guest_halt_poll_ns > 0), on a one-CPU machine and under a CPU quota "
        "(cgroup v2 cpu.max or v1 cpu.cfs_quota_us) of less than 2 CPUs. Measured cost: "
        "20% of a core at 100 requests/s against 10% without, 79% at 500/s against 26%."))

    @field_validator("token", mode="before")
    @classmethod
    def _token_text(cls, v: Any) -> Any:
        # A YAML number would be read as int (0123 as 83!): refuse it rather than mangle it.
        if v is not None and not isinstance(v, str | SecretStr):
            raise ValueError("must be a string: quote it in YAML (or in the variable: "
                             "'\"...\"'); the value is not shown")
        if isinstance(v, str) and not v:
            raise ValueError("is empty (remove it to serve without a token)")
        return v

    @field_validator("token_env")
    @classmethod
    def _one_token_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("token") is not None:
            raise ValueError("give serve.token or serve.token_env, not both")
        return v

    def resolve_poll_us(self) -> int:
        """``poll_us``, or this machine's default when unset (``default_serve_poll_us``)."""
        from features.online.spin import default_serve_poll_us

        return default_serve_poll_us() if self.poll_us is None else self.poll_us

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The token requests must carry (None: no token needed).

        Raises:
            ConfigError: ``token_env`` names a variable that is unset or empty: the server must
                not start open by accident.
        """
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.token_env, "")
        if not value:
            raise ConfigError(f"serve.token_env: environment variable {self.token_env!r} is "
                              f"not set or empty (set it, or remove token_env to serve without "
                              f"a token)")
        return value


class StreamConfig(_Model):
    """``tessera stream``: the Kafka consumers (see docs/streaming.md)."""

    allowed_lateness: str = Field("1d", description="How late an event may arrive after its "
                                  "tile left the longest window and still count.")
    max_future: str = Field("1d", description="How far after the consumer's clock an event may "
                            "be stamped; later ones are dead letters (too_early): a sentinel "
                            "time like 9999-12-31 never reaches a window.")
    max_batch_events: int = Field(60_000, ge=1, description="Events per micro-batch, at most.")
    max_batch_ms: int = Field(200, ge=1, description="Longest wait to fill a micro-batch.")
    fetch_min_bytes: int = Field(65_536, ge=1, description="Kafka fetch: the broker answers "
                                 "once this many bytes wait, or after fetch_max_wait_ms. Fewer, "
                                 "fuller fetches leave the applying thread more of the GIL.")
    fetch_max_wait_ms: int = Field(50, ge=0, description="Kafka fetch: longest the broker holds "
                                   "a fetch for fetch_min_bytes (the added latency of a quiet "
                                   "stream, at most; capped by max_batch_ms).")
    dlq_suffix: str = Field(".dlq", min_length=1, description="Dead-letter topic: topic + this.")
    land: bool = Field(True, description="Append accepted events to the offline store.")
    land_every_ms: int = Field(10_000, ge=0, description="Longest time accepted events (online "
                               "already) wait to be landed together: fewer, larger files. Their "
                               "offsets are committed after; 0 lands every batch at once.")
    land_max_events: int = Field(200_000, ge=1, description="Land sooner once this many events "
                                 "wait (bounds the memory they hold).")
    status_every_s: float = Field(5.0, gt=0, description="Seconds between status lines.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve Prometheus "
                                     "metrics on 127.0.0.1:port (0: any free port).")

    @field_validator("allowed_lateness", "max_future")
    @classmethod
    def _duration(cls, v: str) -> str:
        from features.windows import parse_duration

        try:
            parse_duration(v)
        except Exception as e:  # DefinitionError: shown as this field's error
            raise ValueError(str(e)) from None
        return v


class RepoConfig(_Model):
    """The whole of ``feature_repo.yaml``."""

    project: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    definitions: list[Path] = Field(
        default_factory=list, description="Python files that define entities and feature views."
    )
    offline: OfflineConfig = OfflineConfig()
    online: OnlineConfig = OnlineConfig()
    kafka: KafkaConfig = KafkaConfig()
    spark: SparkConfig = SparkConfig()
    registry: RegistryConfig = RegistryConfig()
    services: ServicesConfig = ServicesConfig()
    schedules: list[Schedule] = Field(default_factory=list)
    scheduler: SchedulerConfig = SchedulerConfig()
    validation: ValidationConfig = ValidationConfig()
    drift: DriftConfig = DriftConfig()
    serving_log: ServingLogConfig = ServingLogConfig()
    serve: ServeConfig = ServeConfig()
    stream: StreamConfig = StreamConfig()
    root: Path = Field(Path("."), exclude=True, description="Folder of the file; set on load.")

    def resolve(self, path: Path) -> Path:
        """An absolute path for a path written in the file (relative to the file's folder)."""
        return path if path.is_absolute() else (self.root / path).resolve()


def load_config(path: str | os.PathLike[str] = DEFAULT_FILE,
                environ: Mapping[str, str] | None = None) -> RepoConfig:
    """Read, override from the environment, and validate ``feature_repo.yaml``.

    ``path`` may be the file or the folder that holds it.

    Raises:
        ConfigError: one line per problem, each naming the file and the dotted key (or, for a
            value from the environment, the variable).
    """
    import yaml  # kept local: only the commands that need the config pay for it

    file = _config_file(Path(path))
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found (expected a feature_repo.yaml)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text (expected a feature_repo.yaml)") from None
    except OSError as e:
        raise ConfigError(f"{file}: cannot read: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{file}:{where}: not valid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping of keys at the top, got {type(raw).__name__}")
    data = dict(raw)
    from_env = apply_env(data, os.environ if environ is None else environ)
    data["root"] = file.resolve().parent
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(one_line(file, err, from_env, raw)
                                    for err in e.errors())) from None


def _config_file(path: Path) -> Path:
    """``path`` itself, or the feature_repo.yaml inside it when it is a folder."""
    if not path.is_dir():
        return path
    inside = path / DEFAULT_FILE
    if inside.is_file():
        return inside
    raise ConfigError(f"{path}: is a folder without a {DEFAULT_FILE} "
                      f"(expected the file or its folder)")
