"""The nodes of the local Redis Cluster: each one as a service, and what they say about the cluster.

:class:`ClusterNode` is one node as a :class:`tessera.services.lifecycle.Service` (its
``redis.conf``, its probe). :func:`_view` asks a node for ``CLUSTER INFO``, ``CLUSTER NODES``,
``DBSIZE`` and its version (a :class:`NodeView` of :class:`KnownNode` lines); a :class:`Survey`
of every node's view gives the verdict :class:`tessera.services.redis_cluster.RedisCluster` acts
on: healthy, fresh (ready for ``--cluster create``) or inconsistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.services import process
from tessera.services.lifecycle import Probe
from tessera.services.redis_server import NO_PERIODIC_SNAPSHOTS, RedisFiles, _quote

if TYPE_CHECKING:
    import redis

LOOPBACK = "127.0.0.1"
NAME = "redis-cluster"
SLOTS = 16384
BUS_PORT_OFFSET = 10000
_NODE_TIMEOUT_MS = 5000
_CLIENT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ClusterNode(RedisFiles):
    """One node of the cluster, as a :class:`tessera.services.lifecycle.Service`.

    Attributes:
        port: its client port; the cluster bus listens on ``port + 10000``.
        state: the node's folder, ``<state_dir>/redis-cluster/<port>``.
    """

    port: int
    state: Path
    start_timeout: float = 10.0
    stop_timeout: float = 10.0

    @property
    def name(self) -> str:
        """``redis-cluster:<port>``."""
        return f"{NAME}:{self.port}"

    @property
    def host(self) -> str:
        """Always 127.0.0.1."""
        return LOOPBACK

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """The client port and the cluster bus port."""
        return (self.port, self.port + BUS_PORT_OFFSET)

    @property
    def nodes_conf(self) -> Path:
        """``<state>/nodes.conf``: the cluster config Redis writes (ids, epochs, slots)."""
        return self.state / "nodes.conf"

    def render_conf(self) -> str:
        """The ``redis.conf`` of one cluster-mode master on loopback."""
        title = "{title} {listen-addr} {server-mode} {config-file}"
        return "\n".join([
            "# Written by `tessera services up` on every start; edits are lost. docs/services.md",
            f"bind {LOOPBACK}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f"dir {_quote(str(self.state))}",
            "appendonly no",
            *NO_PERIODIC_SNAPSHOTS,
            "cluster-enabled yes",
            f"cluster-config-file {_quote(str(self.nodes_conf))}",
            f"cluster-node-timeout {_NODE_TIMEOUT_MS}",
            f"proc-title-template {_quote(title)}",
            "",
        ])

    def probe(self, pid: int | None) -> Probe:
        """PING (a node answers before it belongs to a cluster), then ``INFO server``."""
        if not process.port_accepts(LOOPBACK, self.port):
            return Probe(False, None, f"nothing accepts connections on {self.address}")
        import redis  # local: `import tessera.services` must stay fast

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=_CLIENT_TIMEOUT_S,
                             socket_connect_timeout=_CLIENT_TIMEOUT_S)
        try:
            client.ping()
            info: dict[str, object] = client.info("server")  # type: ignore[assignment]
        except redis.RedisError as e:
            return Probe(False, None, f"PING failed: {e}")
        finally:
            client.close()
        return Probe(True, str(info.get("redis_version")), "PING ok")


@dataclass(frozen=True, slots=True)
class KnownNode:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    address: str  # "127.0.0.1:7001", without the bus port and hostname
    flags: frozenset[str]
    slots: int

    @property
    def usable(self) -> bool:
        """A master, not in handshake, with an address."""
        return "master" in self.flags and not self.flags & {"handshake", "noaddr"}


@dataclass(frozen=True, slots=True)
class NodeView:
    """What one node says about the cluster (or why it said nothing)."""

    port: int
    error: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    known: tuple[KnownNode, ...] = ()
    keys: int = 0
    version: str | None = None

    @property
    def myself(self) -> KnownNode | None:
        return next((n for n in self.known if "myself" in n.flags), None)

    @property
    def ok(self) -> bool:
        """This node calls the cluster ok, with every slot assigned and served."""
        return (self.error is None and self.info.get("cluster_state") == "ok"
                and self.info.get("cluster_slots_ok") == str(SLOTS))


@dataclass(frozen=True, slots=True)
class Survey:
    """Every node's view, and a verdict on the cluster they form."""

    views: tuple[NodeView, ...]
    addresses: tuple[str, ...]

    @property
    def fresh(self) -> bool:
        """Every node is empty and alone: ready for ``redis-cli --cluster create``."""
        return all(v.error is None and len(v.known) == 1 and v.known[0].slots == 0
                   and v.keys == 0 for v in self.views)

    def inconsistency(self) -> str | None:
        """Why these nodes do not form the configured cluster, or None when they do.

        They do when each knows exactly the configured addresses, all masters, under the same
        node ids, and their slots add up to 16384. Failure flags and ``cluster_state:fail``
        are not inconsistencies: they pass once the nodes reach each other again.
        """
        ids: dict[str, str] = {}
        for v in self.views:
            where = f"node {v.port}"
            if v.error is not None:
                return f"{where}: {v.error}"
            addresses = sorted(n.address for n in v.known)
            if addresses != sorted(self.addresses):
                return (f"{where} knows {', '.join(addresses)}; expected "
                        f"{', '.join(sorted(self.addresses))}")
            for n in v.known:
                if not n.usable:
                    return f"{where} sees {n.address} as {','.join(sorted(n.flags))}"
                if n.slots == 0:
                    return f"{where} sees {n.address} without slots"
                if ids.setdefault(n.address, n.node_id) != n.node_id:
                    return f"the nodes disagree on the id of {n.address}"
            if sum(n.slots for n in v.known) != SLOTS:
                return (f"{where} sees {sum(n.slots for n in v.known)} of {SLOTS} slots "
                        "assigned")
        return None

    @property
    def healthy(self) -> bool:
        """Consistent, and every node says ``cluster_state:ok`` with all slots served."""
        return self.inconsistency() is None and all(v.ok for v in self.views)

    def summary(self) -> str:
        """``cluster_state ok; 16384/16384 slots assigned; 3 nodes (3 masters); 0 keys``."""
        first = next((v for v in self.views if v.error is None), None)
        if first is None:
            return "no node answered"
        states = {v.info.get("cluster_state", "?") for v in self.views if v.error is None}
        state = states.pop() if len(states) == 1 else "/".join(sorted(states))
        masters = sum(1 for n in first.known if "master" in n.flags)
        return (f"cluster_state {state}; {first.info.get('cluster_slots_assigned', '?')}/{SLOTS}"
                f" slots assigned; {first.info.get('cluster_known_nodes', '?')} nodes "
                f"({masters} masters); {sum(v.keys for v in self.views)} keys")


def _view(port: int) -> NodeView:
    """One node's view, through a bare connection (no client-side reply parsing)."""
    import redis  # local: `import tessera.services` must stay fast

    conn = redis.Connection(host=LOOPBACK, port=port, socket_timeout=_CLIENT_TIMEOUT_S,
                            socket_connect_timeout=_CLIENT_TIMEOUT_S, decode_responses=True)
    try:
        info = _ask(conn, "CLUSTER", "INFO")
        nodes = _ask(conn, "CLUSTER", "NODES")
        keys = int(_ask(conn, "DBSIZE"))
        server = _ask(conn, "INFO", "server")
    except (redis.RedisError, OSError) as e:
        return NodeView(port, error=f"{type(e).__name__}: {e}")
    finally:
        conn.disconnect()
    version = next((line.split(":", 1)[1].strip() for line in server.splitlines()
                    if line.startswith("redis_version:")), None)
    return NodeView(port, None, _parse_info(info), _parse_nodes(nodes), keys, version)


def _ask(conn: redis.Connection, *args: str) -> str:
    conn.send_command(*args)
    reply = conn.read_response()
    return reply if isinstance(reply, str) else str(reply)


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _parse_nodes(text: str) -> tuple[KnownNode, ...]:
    """``<id> <ip:port@bus[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``."""
    known = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0].split(",", 1)[0]
        known.append(KnownNode(fields[0], address, frozenset(fields[2].split(",")),
                               _count_slots(fields[8:])))
    return tuple(known)


def _count_slots(ranges: Sequence[str]) -> int:
    total = 0
    for r in ranges:
        if r.startswith("["):  # a slot being imported or migrated: still owned by its owner
            continue
        lo, _, hi = r.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total
