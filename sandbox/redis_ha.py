"""Redis's own HA and scale-out engines on loopback ports, for the tests and bench/: a Sentinel group (a primary,
its replicas and three sentinels) and a Redis Cluster (N primaries, `redis-cli --cluster create`).

Debian's `redis-server`, `redis-sentinel` and `redis-tools` (redis-cli) run them; every server binds 127.0.0.1.
Nothing here knows the gateway: a test points REDIS_URL at `.url`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from sandbox.processes import ChildFailed, free_port, terminate, wait_until
from sandbox.redis_server import RedisServer

SERVICE = "dtgw"
CLUSTER_SLOTS = 16384


def missing_tools(*tools: str) -> list[str]:
    """The executables of `tools` that are not installed."""
    return [tool for tool in tools if not shutil.which(tool)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class Sentinels:
    """A primary, `replicas` replicas and three sentinels watching them as SERVICE.

    `down_after_ms` and `failover_timeout_ms` are low in tests (production keeps Sentinel's defaults, or close):
    the primary is judged down after `down_after_ms` without an answer, and a replica promoted a moment later.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        primary_options: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        ports = [free_port() for _ in range(1 + replicas)]

        def options(port: int) -> tuple[str, ...]:
            # A replica writes the snapshot of a full sync to its directory: the workdir, not the caller's.
            node_dir = self.workdir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            return ("--dir", str(node_dir), "--repl-diskless-sync-delay", "0")

        self.servers = {port: RedisServer(port, options=(*options(port), *primary_options)) for port in ports[:1]}
        for port in ports[1:]:
            self.servers[port] = RedisServer(port, options=(*options(port), "--replicaof", "127.0.0.1", str(ports[0])))
        self.first_primary = ports[0]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """REDIS_URL of the group: `redis+sentinel://HOST:PORT,…/SERVICE/0`."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 30) -> None:
        """Start every server and sentinel; return once the sentinels know the primary, its replicas and each other
        (a failover needs a quorum of sentinels that have met)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for server in self.servers.values():
            server.start()
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            # Sentinel rewrites its configuration file as it learns: it must be a file of its own, writable.
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.workdir}\n"
                f"logfile {self.workdir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.first_primary} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            proc = subprocess.Popen(["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.sentinel_procs.append(proc)
        for port, proc in zip(self.sentinel_ports, self.sentinel_procs, strict=True):
            wait_until(lambda p=port: self._sentinel_ready(p), f"redis-sentinel on {port}", proc, timeout)  # type: ignore[misc]
        self.wait_replicas_in_sync(timeout)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5, decode_responses=True)

    def _sentinel_ready(self, port: int) -> bool:
        client = self._sentinel(port)
        try:
            # Raw SENTINEL commands: redis-py 6.4's parsers of their replies fail on its own keyword arguments.
            master = client.execute_command("SENTINEL", "MASTER", SERVICE)
            replicas = [r for r in _records(client, "REPLICAS") if "s_down" not in r.get("flags", "")]
            others = _records(client, "SENTINELS")
            return (
                bool(master) and len(replicas) == len(self.servers) - 1 and len(others) == len(self.sentinel_ports) - 1
            )
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def primary_port(self) -> int | None:
        """The port of the primary as a majority of the sentinels name it (None: no majority yet)."""
        named: list[int] = []
        for port in self.sentinel_ports:
            client = self._sentinel(port)
            try:
                address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                if address:
                    named.append(int(address[1]))
            except redis.exceptions.RedisError:
                pass
            finally:
                client.close()
        for port in set(named):
            if named.count(port) > len(self.sentinel_ports) // 2:
                return port
        return None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        if port is None:
            raise ChildFailed("the sentinels do not agree on a primary", None)
        return self.servers[port]

    def kill_primary(self) -> int:
        """SIGKILL the current primary; return its port."""
        server = self.primary()
        server.kill()
        return server.port

    def wait_failover(self, old_port: int, timeout: float = 20) -> int:
        """Wait until the sentinels name another primary than `old_port`, and it takes writes; return its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port and self._is_primary(port):
                return port
            time.sleep(0.05)
        raise ChildFailed(f"no failover away from {old_port} within {timeout:g} s", None)

    def _is_primary(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5)
        try:
            return bool(client.execute_command("ROLE")[0] in (b"master", "master"))
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def wait_replicas_in_sync(self, timeout: float = 10) -> None:
        """Wait until every running replica of the current primary has caught up with it."""
        deadline = time.monotonic() + timeout
        primary = self.primary()
        running = sum(1 for s in self.servers.values() if s.running and s is not primary)
        client = redis.Redis(port=primary.port, socket_timeout=1, decode_responses=True)
        try:
            while time.monotonic() < deadline:
                _role, offset, replicas = client.execute_command("ROLE")[:3]
                if len(replicas) == running and all(int(r[2]) >= int(offset) for r in replicas):
                    return
                time.sleep(0.05)
        finally:
            client.close()
        raise ChildFailed(f"replicas of {primary.port} not in sync within {timeout:g} s", None)

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            terminate("redis-sentinel", proc)
        self.sentinel_procs = []
        for server in self.servers.values():
            server.stop()


def _records(client: redis.Redis, what: str) -> list[dict[str, str]]:
    """`SENTINEL REPLICAS|SENTINELS SERVICE` as dicts (Redis answers each record as a flat name, value list)."""
    rows = client.execute_command("SENTINEL", what, SERVICE)
    return [dict(zip(row[::2], row[1::2], strict=True)) for row in rows]


class Cluster:
    """A Redis Cluster of `primaries` primaries (and `replicas` replicas of each), every slot assigned."""

    def __init__(
        self, workdir: str | os.PathLike[str], *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 2000
    ) -> None:
        self.workdir = Path(workdir)
        self.replicas = replicas
        self.servers: list[RedisServer] = []
        for _ in range(primaries * (1 + replicas)):
            port = free_cluster_port()
            node_dir = self.workdir / str(port)
            options = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--dir",
                str(node_dir),
                "--logfile",
                str(node_dir / "redis.log"),
                # A replica syncs at once (the default waits 5 s for more replicas to share the transfer).
                "--repl-diskless-sync-delay",
                "0",
            )
            self.servers.append(RedisServer(port, options=options))

    @property
    def url(self) -> str:
        """REDIS_URL of the cluster: `redis+cluster://HOST:PORT,…` (any node will do; every one is listed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self, timeout: float = 60) -> None:
        """Start the nodes, join them into one cluster, and return once every node sees every slot served."""
        for server in self.servers:
            (self.workdir / str(server.port)).mkdir(parents=True, exist_ok=True)
            server.start()
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if create.returncode != 0:
            raise ChildFailed(f"redis-cli --cluster create failed: {create.stdout[-2000:]}{create.stderr}", None)
        deadline = time.monotonic() + timeout
        # Settled: every node sees every slot served, and every replica is one and has synced with its primary. A
        # node redis-cli has not made a replica yet still says "master"; a replica that never synced would be
        # promoted empty.
        replicas = len(self.servers) - len(self.servers) // (1 + self.replicas)
        while not (
            all(self._node_ok(s.port) for s in self.servers)
            and sum(self._replica_synced(s.port) for s in self.servers) == replicas
        ):
            if time.monotonic() > deadline:
                raise ChildFailed(f"the cluster did not settle within {timeout:g} s", None)
            time.sleep(0.1)

    def _replica_synced(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            info: Any = client.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def nodes(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as a running node sees it: port, id, flags, the id of its primary (for a replica)."""
        port = next(s.port for s in self.servers if s.running)
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            text = client.execute_command("CLUSTER", "NODES")
        finally:
            client.close()
        rows = []
        for line in str(text).splitlines():
            node_id, address, flags, primary = line.split()[:4]
            rows.append(
                {
                    "id": node_id,
                    "port": int(address.split("@")[0].rpartition(":")[2]),
                    "flags": set(flags.split(",")),
                    "primary": primary,
                }
            )
        return rows

    def primary_port_for(self, key: str) -> int | None:
        """The port of the primary serving `key`'s slot, as a fresh client reads the slot map (None: not served)."""
        nodes = [ClusterNode("127.0.0.1", s.port) for s in self.servers if s.running]
        try:
            client = RedisCluster(startup_nodes=nodes, socket_timeout=1, socket_connect_timeout=0.5)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            return None
        try:
            return int(client.get_node_from_key(key).port)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            return None
        finally:
            client.close()

    def replica_ports_of(self, port: int) -> list[int]:
        nodes = self.nodes()
        primary_id = next(n["id"] for n in nodes if n["port"] == port)
        return [n["port"] for n in nodes if n["primary"] == primary_id]

    def wait_failover(self, key: str, old_port: int, timeout: float = 30) -> int:
        """Wait until another node serves `key`'s slot and every running node sees the cluster ok; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port_for(key)
            if port not in (None, old_port) and all(self._state_ok(s.port) for s in self.servers if s.running):
                return port  # type: ignore[return-value]
            time.sleep(0.1)
        raise ChildFailed(
            f"no failover of {key}'s slot away from {old_port} within {timeout:g} s\n{self.diagnose()}", None
        )

    def diagnose(self, lines: int = 15) -> str:
        """Each running node's role, replication state and key count, and its log's last lines: for a test that
        failed after a failover."""
        out = []
        for server in self.servers:
            head = f"== {server.port}: "
            if server.running:
                client = redis.Redis(port=server.port, socket_timeout=1, decode_responses=True)
                try:
                    info: Any = client.info("replication")
                    head += (
                        f"{info.get('role')} link={info.get('master_link_status')} "
                        f"offset={info.get('master_repl_offset')} keys={client.dbsize()}"
                    )
                except redis.exceptions.RedisError as e:
                    head += f"{type(e).__name__}: {e}"
                finally:
                    client.close()
            else:
                head += "not running"
            log_file = self.workdir / str(server.port) / "redis.log"
            tail = log_file.read_text(errors="replace").splitlines()[-lines:] if log_file.exists() else []
            out.append("\n".join([head, *tail]))
        return "\n".join(out)

    def _state_ok(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def _node_ok(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            text = client.execute_command("CLUSTER", "INFO")
            info = dict(line.split(":", 1) for line in text.split() if ":" in line)
            known = int(info.get("cluster_known_nodes", 0))
            # Every bus link up, no node still in handshake: a manual failover needs the replica's link to its
            # primary, and an election the votes of the other primaries.
            # And this node's view of the roles is the final one: gossip reaches each node in its own time, and a
            # node that still lists a replica as a primary hands clients a wrong topology.
            rows = [line.split() for line in str(client.execute_command("CLUSTER", "NODES")).splitlines()]
            linked = all(
                row[7] == "connected" and not {"handshake", "noaddr", "fail", "fail?"} & set(row[2].split(","))
                for row in rows
            )
            replicas = sum("slave" in row[2].split(",") for row in rows)
            return (
                info.get("cluster_state") == "ok"
                and int(info.get("cluster_slots_ok", 0)) == CLUSTER_SLOTS
                and known == len(self.servers)
                and linked
                and replicas == len(self.servers) - len(self.servers) // (1 + self.replicas)
            )
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m sandbox.redis_ha sentinel|cluster`: start one on loopback, print its REDIS_URL, run until Ctrl-C."""
    import argparse
    import signal
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m sandbox.redis_ha", description=main.__doc__)
    parser.add_argument("kind", choices=["sentinel", "cluster"])
    parser.add_argument("--replicas", type=int, default=None, help="sentinel: 1 (default); cluster: per primary, 0")
    parser.add_argument("--primaries", type=int, default=3, help="cluster only (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"redis-{args.kind}-") as workdir:
        group: Sentinels | Cluster
        if args.kind == "sentinel":
            group = Sentinels(workdir, replicas=1 if args.replicas is None else args.replicas)
        else:
            group = Cluster(workdir, primaries=args.primaries, replicas=args.replicas or 0)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            group.start()
            print(group.url, flush=True)
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            group.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
