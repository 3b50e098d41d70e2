"""The local Redis Cluster: Debian's ``redis-server`` in cluster mode, one master per port.

Off by default; ``services.redis_cluster.enabled: true`` (or ``tessera services up --cluster``)
starts it. Each node is a :class:`ClusterNode`, started and stopped by :mod:`lifecycle` like the
plain Redis; :class:`RedisCluster` adds what only a cluster needs: ``redis-cli --cluster create``
once, a bounded wait until every node says ``cluster_state:ok``, and a wipe-and-recreate when
the nodes' view of the cluster is inconsistent (a lost ``nodes.conf``, other ports, a half-done
create). A cluster restarted after ``down`` rejoins from its ``nodes.conf``, keys included.
The nodes, and the reading of what they say about the cluster (:class:`Survey`), are in
:mod:`tessera.services.redis_cluster_nodes`.

State under ``<state_dir>/redis-cluster/``:

- ``<port>/redis.conf`` (rewritten on every start), ``<port>/redis.pid``, ``<port>/redis.log``;
- ``<port>/nodes.conf``: the node's cluster config, written by Redis, kept across ``down``/``up``;
- ``<port>/dump.rdb``: the node's keys, saved when it stops (no snapshots while it serves);
- ``create.log``: the output of the last ``redis-cli --cluster create``.

Example:
    >>> from features.config import RedisClusterServiceConfig
    >>> startup_url(RedisClusterServiceConfig())
    'redis://127.0.0.1:7001'
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.services import lifecycle, process
from tessera.services.errors import ServiceError
from tessera.services.lifecycle import Say
from tessera.services.redis_cluster_nodes import (
    BUS_PORT_OFFSET,
    LOOPBACK,
    NAME,
    ClusterNode,
    Survey,
    _view,
)
from tessera.services.redis_server import ensure_debian_tool, ensure_redis_server
from tessera.services.status import ServiceStatus

if TYPE_CHECKING:
    from features.config import RedisClusterServiceConfig

_CREATE_TIMEOUT_S = 60.0
# After a restart a master waits 2 s before it calls the cluster ok again, and a FAIL flag
# saved in nodes.conf clears only after 2 x cluster-node-timeout: 10 s. 30 s is ample.
_CONVERGE_TIMEOUT_S = 30.0
_POLL_S = 0.2
_BROKEN_AFTER_S = 2.0
_CORRUPT_NODES_CONF = "corrupted cluster config file"  # what redis-server logs, then exits
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def startup_url(cfg: RedisClusterServiceConfig) -> str:
    """The URL of the cluster's first node, ``redis://127.0.0.1:<first port>``.

    Any node is a startup node: a cluster client (``redis.cluster.RedisCluster.from_url``)
    asks it for the slot map and then talks to every master.
    """
    return f"redis://{LOOPBACK}:{cfg.ports[0]}"


class RedisCluster:
    """Start, stop and check the whole cluster (its nodes through :mod:`lifecycle`)."""

    name = NAME

    def __init__(self, cfg: RedisClusterServiceConfig, state: Path) -> None:
        """
        Args:
            cfg: ``services.redis_cluster`` from ``feature_repo.yaml``.
            state: the cluster's folder, ``<state_dir>/redis-cluster``.
        """
        self.cfg = cfg
        self.state = state
        self.nodes = [ClusterNode(p, state / str(p)) for p in cfg.ports]

    @property
    def address(self) -> str:
        """``127.0.0.1:7001,7002,7003``: every node's client port."""
        return f"{LOOPBACK}:{','.join(str(p) for p in self.cfg.ports)}"

    @property
    def url(self) -> str:
        """The startup node, see :func:`startup_url`."""
        return startup_url(self.cfg)

    @property
    def create_log(self) -> Path:
        """``<state>/create.log``: what the last ``redis-cli --cluster create`` printed."""
        return self.state / "create.log"

    def running_pids(self, *, repair: bool = False) -> dict[int, int]:
        """``{port: pid}`` of the nodes of ours that run."""
        found = {}
        for node in self.nodes:
            pid, _ = lifecycle.find(node, repair=repair)
            if pid is not None:
                found[node.port] = pid
        return found

    def start(self, say: Say) -> ServiceStatus:
        """Make every node run and the cluster be ok; leave a healthy cluster alone.

        Raises:
            ServiceError: a port (client or bus) is taken by another program, redis-server or
                redis-cli is missing, a node did not start, ``--cluster create`` failed, or the
                cluster was not ok within the time allowed (logs quoted).
        """
        began = time.monotonic()
        running = self.running_pids(repair=True)
        if len(running) == len(self.nodes):
            survey = self.survey()
            if survey.healthy:
                say(f"{NAME}: already running at {self.address}; nothing to do")
                return self._status(survey, running, f"already running; {survey.summary()}")
        self._check_ports(running)
        ensure_redis_server(say)
        cli = ensure_debian_tool("redis-cli", "redis-tools", say)
        running = self._start_nodes(say)
        survey = self._settle()
        done = "rejoined"
        if not survey.healthy:
            if not survey.fresh:
                why = survey.inconsistency() or f"not ok after {_CONVERGE_TIMEOUT_S:.0f} s"
                say(f"{NAME}: the cluster state is broken ({why}); wiping {self.state} and "
                    "creating it again (its keys are lost)")
                self._wipe(say)
                running = self._start_nodes(say)
            self._create(cli, say)
            survey = self._await_ok()
            done = "created"
        took = time.monotonic() - began
        say(f"{NAME}: {done}; cluster_state ok on {len(self.nodes)} nodes in {took:.1f} s")
        return self._status(survey, running, f"{done} in {took:.1f} s; {survey.summary()}")

    def stop(self, say: Say) -> ServiceStatus:
        """Stop every node (SIGTERM; Redis saves nodes.conf and its keys). Keeps the state."""
        notes = [lifecycle.stop(node, say).detail for node in self.nodes]
        stopped = [n for n in notes if n != "not running"]
        detail = "not running" if not stopped else f"{len(stopped)} node(s) stopped"
        return ServiceStatus(NAME, self.address, None, None, False, detail,
                             self.nodes[0].stdout_log)

    def inspect(self) -> ServiceStatus:
        """The current state; reads only."""
        statuses = [lifecycle.inspect(node) for node in self.nodes]
        pids = {n.port: st.pid for n, st in zip(self.nodes, statuses, strict=True)
                if st.pid is not None}
        if not pids:
            odd = [f"{st.name}: {st.detail}" for st in statuses if st.detail != "not running"]
            return ServiceStatus(NAME, self.address, None, None, False,
                                 "; ".join(["not running", *odd]), self.nodes[0].stdout_log)
        survey = self.survey()
        detail = survey.summary()
        if len(pids) < len(self.nodes):
            down = [str(n.port) for n in self.nodes if n.port not in pids]
            detail = f"node(s) {', '.join(down)} not running; {detail}"
        elif not survey.healthy:
            detail = f"{detail}; {survey.inconsistency() or 'not every node says ok'}"
        return self._status(survey, pids, detail)

    def survey(self) -> Survey:
        """Ask every node for ``CLUSTER INFO``, ``CLUSTER NODES``, ``DBSIZE`` and its version."""
        return Survey(tuple(_view(n.port) for n in self.nodes),
                      tuple(n.address for n in self.nodes))

    def _check_ports(self, running: dict[int, int]) -> None:
        for node in self.nodes:
            if node.port in running:
                continue
            for port in node.ports:
                if process.port_is_free(LOOPBACK, port):
                    continue
                owner = process.port_owner(port)
                who = process.describe(owner) if owner is not None else "another program"
                what = "client port" if port == node.port else f"cluster bus of node {node.port}"
                raise ServiceError(
                    f"{NAME}: port {port} ({what}) on {LOOPBACK} is already in use by {who}. "
                    f"Hint: stop that program, or choose other ports under "
                    f"services.redis_cluster.ports in feature_repo.yaml (each node also needs "
                    f"port + {BUS_PORT_OFFSET})."
                )

    def _start_nodes(self, say: Say) -> dict[int, int]:
        """Start every node that is not running.

        A node that refuses its own ``nodes.conf`` ("corrupted cluster config file") gets the
        whole cluster wiped, then every node is started once more. Any other failure is raised.
        """
        try:
            return self._start_each(say)
        except ServiceError as e:
            if _CORRUPT_NODES_CONF not in str(e):
                raise
            say(f"{NAME}: a node refused its saved cluster config ({_CORRUPT_NODES_CONF}); "
                f"wiping {self.state} and creating the cluster again")
            self._wipe(say)
            return self._start_each(say)

    def _start_each(self, say: Say) -> dict[int, int]:
        pids = {}
        for node in self.nodes:
            st = lifecycle.start(node, say)
            assert st.pid is not None  # start() returns healthy or raises
            pids[node.port] = st.pid
        return pids

    def _settle(self) -> Survey:
        """Wait, bounded, while the nodes rejoin; return at once when healthy or fresh.

        An inconsistent view counts as broken only once it has lasted ``_BROKEN_AFTER_S``: a
        wipe loses the keys, so a moment of gossip must not trigger one.
        """
        now = time.monotonic()
        deadline, broken_since = now + _CONVERGE_TIMEOUT_S, None
        while True:
            survey = self.survey()
            if survey.healthy or survey.fresh:
                return survey
            now = time.monotonic()
            if survey.inconsistency() is None:
                broken_since = None
            elif broken_since is None:
                broken_since = now
            if now >= deadline or (broken_since is not None
                                   and now - broken_since >= _BROKEN_AFTER_S):
                return survey
            time.sleep(_POLL_S)

    def _wipe(self, say: Say) -> None:
        """Stop every node and delete its cluster config and data (logs stay)."""
        for node in self.nodes:
            lifecycle.stop(node, say)
            for name in ("nodes.conf", "dump.rdb"):
                (node.state / name).unlink(missing_ok=True)
            shutil.rmtree(node.state / "appendonlydir", ignore_errors=True)

    def _create(self, cli: str, say: Say) -> None:
        argv = [cli, "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes"]
        say(f"{NAME}: {' '.join(argv[1:])}")
        self.state.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=_CREATE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{NAME}: `redis-cli --cluster create` took over "
                               f"{_CREATE_TIMEOUT_S:.0f} s") from None
        output = _ANSI.sub("", done.stdout + done.stderr)  # redis-cli colours even a pipe
        stamp = f"=== tessera services up: {datetime.now(UTC).isoformat()} ===\n"
        self.create_log.write_text(stamp + output, encoding="utf-8")
        if done.returncode != 0:
            out = "\n".join(output.splitlines()[-20:])
            raise ServiceError(f"{NAME}: `{' '.join(argv)}` failed (exit {done.returncode}); "
                               f"output in {self.create_log}:\n{out}")

    def _await_ok(self) -> Survey:
        deadline = time.monotonic() + _CONVERGE_TIMEOUT_S
        while True:
            survey = self.survey()
            if survey.healthy:
                return survey
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_S)
        tails = "\n".join(lifecycle.log_tails(n, 5) for n in self.nodes)
        raise ServiceError(
            f"{NAME}: not ok within {_CONVERGE_TIMEOUT_S:.0f} s after `--cluster create` "
            f"({survey.inconsistency() or survey.summary()}); see {self.create_log}\n{tails}"
        )

    def _status(self, survey: Survey, pids: dict[int, int], detail: str) -> ServiceStatus:
        version = next((v.version for v in survey.views if v.version), None)
        ordered = tuple(pids[n.port] for n in self.nodes if n.port in pids)
        return ServiceStatus(NAME, self.address, ordered[0] if ordered else None, version,
                             survey.healthy and len(ordered) == len(self.nodes), detail,
                             self.nodes[0].stdout_log, pids=ordered)

