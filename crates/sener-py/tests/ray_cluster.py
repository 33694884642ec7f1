"""A real local Ray cluster of separate processes for the tests and the benchmark: a head node and
worker nodes, each started by its own `ray start --block` (one CPU each) on free loopback ports,
in its own process group, so that one node can be killed mid-run and everything can be stopped
without `ray stop` touching other Ray processes of the machine.

    with RayCluster(tmp_dir, nodes=2) as c:
        c.address          # "127.0.0.1:PORT", for ray.init / --address
        c.node_ids()       # the live nodes' ids, head first
        c.kill(1)          # SIGKILL the second node (raylet, workers and all)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(n: int) -> int:
    """The first of `n` consecutive free loopback ports (for Ray's worker port range)."""
    for _ in range(200):
        first = free_port()
        if first + n > 65535:
            continue
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def _ray_bin() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _descendants(pids: set[int]) -> set[int]:
    """Every live process below `pids` (by parent id), `pids` included."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class RayCluster:
    def __init__(self, tmp: Path, nodes: int = 2, cpus: int = 1, object_store_mb: int = 200) -> None:
        self.tmp = Path(tmp)
        self.n = nodes
        self.cpus = cpus
        self.store = object_store_mb * 1024 * 1024
        self.procs: list[subprocess.Popen] = []
        self.node_manager_ports: list[int] = []
        self.address = ""
        self.seen: set[int] = set()
        self.logs: list[Path] = []
        self.ray_tmp = tempfile.mkdtemp(prefix="sener-ray-", dir="/tmp")

    def _start(self, head: bool) -> None:
        i = len(self.procs)
        nm = free_port()
        workers = free_port_range(12)
        args = [
            _ray_bin(), "start", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.cpus), "--num-gpus", "0",
            "--object-store-memory", str(self.store),
            "--node-manager-port", str(nm),
            "--object-manager-port", str(free_port()),
            "--min-worker-port", str(workers), "--max-worker-port", str(workers + 11),
            "--metrics-export-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
        ]
        if head:
            port = free_port()
            self.address = f"127.0.0.1:{port}"
            args += [
                "--head", "--port", str(port), "--include-dashboard", "false",
                "--ray-client-server-port", str(free_port()),
                # Ray's socket paths must stay under 108 bytes: a short folder of its own
                "--temp-dir", self.ray_tmp,
            ]
        else:
            args += ["--address", self.address]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_DISABLE_DOCKER_CPU_WARNING="1")
        log = self.tmp / f"node{i}.log"
        self.logs.append(log)
        with open(log, "w") as fh:
            p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(p)
        self.node_manager_ports.append(nm)

    def __enter__(self) -> "RayCluster":
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            self._start(head=True)
            self._wait_for(1)
            for _ in range(self.n - 1):
                self._start(head=False)
            self._wait_for(self.n)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def nodes(self) -> list[dict]:
        """`ray.nodes()`, asked by a separate driver process (the caller stays Ray-free)."""
        code = (
            "import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False);"
            "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'port': n['NodeManagerPort']} for n in ray.nodes()]))"
        ) % self.address
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"ray.nodes() failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def node_ids(self) -> list[str]:
        """Ids of the live nodes, in the order they were started."""
        by_port = {n["port"]: n["id"] for n in self.nodes() if n["alive"]}
        return [by_port[p] for p in self.node_manager_ports if p in by_port]

    def _wait_for(self, n: int, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for p, log in zip(self.procs, self.logs):
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}: {log.read_text()[-3000:]}")
            try:
                if len(self.node_ids()) >= n:
                    return
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError):
                pass
            time.sleep(1.0)
        raise RuntimeError(f"{n} Ray node(s) did not come up in {timeout:.0f} s")

    def _remember(self) -> None:
        self.seen |= _descendants({p.pid for p in self.procs})

    def kill(self, i: int) -> None:
        """SIGKILL node `i` and every process it started."""
        p = self.procs[i]
        pids = _descendants({p.pid})
        self.seen |= pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def stop(self) -> None:
        """Stops every node (SIGTERM to each `ray start --block`, which stops its node; then
        SIGKILL to whatever of its processes is left) and waits until none is alive."""
        self._remember()
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 20
        while time.monotonic() < end and any(p.poll() is None for p in self.procs):
            self._remember()
            time.sleep(0.2)
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 10
        while time.monotonic() < end and self.left():
            time.sleep(0.2)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def left(self) -> list[int]:
        """Processes of this cluster still alive."""
        return sorted(pid for pid in self.seen if alive(pid))
