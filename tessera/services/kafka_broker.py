"""The local Apache Kafka: one KRaft node (broker and controller) on loopback.

State under ``<state_dir>/kafka/``:

- ``<version>/libs/``: the jars (see :mod:`tessera.services.kafka_runtime`);
- ``server.properties``: rewritten on every start from ``services.kafka``;
- ``cluster.id``: generated once; ``data/``: the log dirs, formatted on first start only;
- ``kafka.pid``; ``server.log`` (log4j2, rolled at 10 MB); ``stdout.log`` (JVM stdout/stderr);
  ``format.log`` (the one-off storage format).
"""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.services import kafka_runtime
from tessera.services.errors import ServiceError
from tessera.services.lifecycle import Probe, Say
from tessera.services.process import cmdline, port_accepts

if TYPE_CHECKING:
    from features.config import KafkaServiceConfig

LOOPBACK = "127.0.0.1"
LOG4J2_CONFIG = Path(__file__).with_name("log4j2.properties")
_FORMAT_TIMEOUT_S = 120
_PROBE_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class KafkaBroker:
    """Kafka as a :class:`tessera.services.lifecycle.Service`.

    Attributes:
        cfg: ``services.kafka`` from ``feature_repo.yaml``.
        state: the service's folder, ``<state_dir>/kafka``.
    """

    cfg: KafkaServiceConfig
    state: Path
    name: str = "kafka"
    start_timeout: float = 60.0
    # A controlled shutdown moves leadership and flushes logs; on one node it takes ~2 s.
    stop_timeout: float = 30.0

    @property
    def host(self) -> str:
        """Always 127.0.0.1: listeners bind and advertise IPv4 loopback only."""
        return LOOPBACK

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the bootstrap server clients use."""
        return f"{LOOPBACK}:{self.cfg.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """The client (PLAINTEXT) port and the KRaft controller port."""
        return (self.cfg.port, self.cfg.controller_port)

    @property
    def libs(self) -> Path:
        """``<state>/<version>/libs``."""
        return self.state / self.cfg.version / "libs"

    @property
    def data_dir(self) -> Path:
        """``<state>/data``: Kafka's ``log.dirs`` (topic partitions and the metadata log)."""
        return self.state / "data"

    @property
    def properties(self) -> Path:
        """``<state>/server.properties``."""
        return self.state / "server.properties"

    @property
    def pid_file(self) -> Path:
        """``<state>/kafka.pid``."""
        return self.state / "kafka.pid"

    @property
    def server_log(self) -> Path:
        """``<state>/server.log``: the broker's log4j2 log."""
        return self.state / "server.log"

    @property
    def stdout_log(self) -> Path:
        """``<state>/stdout.log``: what the JVM prints outside log4j (crashes, bad options)."""
        return self.state / "stdout.log"

    @property
    def log_files(self) -> tuple[Path, ...]:
        """``server.log`` then ``stdout.log``."""
        return (self.server_log, self.stdout_log)

    @property
    def marker(self) -> str:
        """The absolute path of ``server.properties``, the broker's last argument."""
        return str(self.properties)

    def prepare(self, say: Say) -> list[str]:
        """Find Java, fetch jars, write ``server.properties``, format once; return the command."""
        if self.cfg.port == self.cfg.controller_port:
            raise ServiceError(f"services.kafka: port and controller_port are both "
                               f"{self.cfg.port!r}; they must differ")
        java = kafka_runtime.find_java()
        kafka_runtime.ensure_jars(self.libs, self.cfg.version, say)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(self.render_properties(), encoding="utf-8")
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, say)
        return [java, f"-Xmx{self.cfg.heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError", f"-XX:ErrorFile={self.state}/hs_err_pid%p.log",
                "-Djava.awt.headless=true", *self._log_flags(),
                "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.properties)]

    def render_properties(self) -> str:
        """``server.properties`` for one combined broker/controller on loopback."""
        port, cport = self.cfg.port, self.cfg.controller_port
        if self._dynamic_quorum():
            quorum = f"controller.quorum.bootstrap.servers={LOOPBACK}:{cport}"
        else:  # before 3.9 only the static voter list exists
            quorum = f"controller.quorum.voters=1@{LOOPBACK}:{cport}"
        return "\n".join([
            "# Written by `tessera services up` on every start; edits are lost. docs/services.md",
            "process.roles=broker,controller",
            "node.id=1",
            quorum,
            f"listeners=PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport}",
            f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.data_dir}",
            "num.partitions=4",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ])

    def cluster_id(self) -> str:
        """This state directory's cluster id, generated on first use and kept in ``cluster.id``.

        Generated like Kafka's ``Uuid.randomUuid().toString()`` (what ``kafka-storage.sh
        random-uuid`` prints): 16 random bytes in URL-safe base64 without padding, never
        starting with "-" (it would read as a command-line option). Doing it here saves a JVM.
        """
        path = self.state / "cluster.id"
        if path.exists():
            return path.read_text(encoding="ascii").strip()
        for _ in range(100):
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
            if not cid.startswith("-"):
                break
        self.state.mkdir(parents=True, exist_ok=True)
        path.write_text(cid + "\n", encoding="ascii")
        return cid

    def probe(self, pid: int | None) -> Probe:
        """A metadata round trip with kafka-python's admin client: cluster and topics."""
        version = self.running_version(pid)
        if not port_accepts(LOOPBACK, self.cfg.port):
            return Probe(False, version, f"nothing accepts connections on {self.address} yet")
        from kafka import KafkaAdminClient  # local: `import tessera.services` must stay fast

        admin = None
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.address, client_id="tessera-services",
                                     request_timeout_ms=_PROBE_TIMEOUT_MS,
                                     bootstrap_timeout_ms=_PROBE_TIMEOUT_MS)
            cluster = admin.describe_cluster()
            topics = [t for t in admin.list_topics() if not t.startswith("__")]
        except Exception as e:  # a health check reports; it never raises
            return Probe(False, version, f"metadata request failed: {type(e).__name__}: {e}")
        finally:
            if admin is not None:
                admin.close()
        live = [b for b in cluster.get("brokers", []) if not b.get("is_fenced")]
        if not live:
            return Probe(False, version, "the broker is not registered (still fenced)")
        detail = f"cluster {cluster.get('cluster_id')}; {len(topics)} topic(s)"
        if version is not None and version != self.cfg.version:
            detail += (f"; config asks for {self.cfg.version}: run `tessera services down` "
                       "then `up` to switch")
        return Probe(True, version, detail)

    def running_version(self, pid: int | None) -> str | None:
        """The Kafka version of process ``pid``, read from the jars on its class path."""
        match = re.search(r"-cp (.+?)/\* kafka\.Kafka ", cmdline(pid)) if pid else None
        libs = Path(match.group(1)) if match else self.libs
        found = kafka_runtime.jar_version(libs)
        return found[0] if found else None

    def _dynamic_quorum(self) -> bool:
        major, minor, _ = (int(p) for p in self.cfg.version.split("."))
        return (major, minor) >= (3, 9)

    def _log_flags(self, log: Path | None = None) -> list[str]:
        return [f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                f"-Dtessera.kafka.log={log or self.server_log}"]

    def _format(self, java: str, say: Say) -> None:
        say("kafka: formatting the storage (first start only)")
        # Its own log: the format step dumps the whole KafkaConfig, which would otherwise be
        # the "last lines of server.log" quoted when the broker then fails to start.
        argv = [java, "-Xmx256m", *self._log_flags(self.state / "format.log"),
                "-cp", f"{self.libs}/*",
                "kafka.tools.StorageTool", "format", "-t", self.cluster_id(),
                "-c", str(self.properties)]
        if self._dynamic_quorum():
            argv.append("--standalone")  # this node alone is the initial controller quorum
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=_FORMAT_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"formatting Kafka's storage took over {_FORMAT_TIMEOUT_S} s: "
                               f"{' '.join(argv)}") from None
        if done.returncode != 0:
            out = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ServiceError(
                f"formatting Kafka's storage in {self.data_dir} failed (exit {done.returncode}). "
                f"Hint: if the folder holds data from another cluster, stop the services and "
                f"delete it.\n{out}"
            )
