"""A throwaway redis-server on loopback, for the local stack, the tests and bench/."""

from __future__ import annotations

import subprocess

import redis

from sandbox.processes import wait_until


def redis_server_argv(port: int, *options: str) -> list[str]:
    """The command line of a redis-server on 127.0.0.1:port that never snapshots to disk."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *options]


class RedisServer:
    """A redis-server on a given loopback port, restartable (for the outage tests)."""

    def __init__(self, port: int, data_dir: str | None = None, options: tuple[str, ...] = ()) -> None:
        self.port = port
        self.data_dir = data_dir  # set: append-only file there, so data survives a restart like production
        self.options = options  # more redis-server options (a replica's --replicaof, a cluster node's settings)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING (after loading its append-only file, if any)."""
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.data_dir]
            if self.data_dir
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            redis_server_argv(self.port, *persistence, *self.options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, "redis-server", self.proc, 10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server dies at once, with no chance to hand anything over (a crashed host)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:  # refused, or still loading its data (BusyLoadingError)
            return False
        finally:
            client.close()
