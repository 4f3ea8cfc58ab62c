"""A real two-node Ray cluster on this machine, for the tests that need one.

Each cluster is a head node and one more node, each its own `ray start --block` process with
its own temp dir, ports and custom resource (``head_node`` / ``worker_node``), 2 CPUs each.
Teardown stops the nodes by their own process groups, never with `ray stop` (which would
stop every Ray on this machine, the test session's included), and fails if any process of
the cluster (raylet, gcs_server, workers, a job's driver) outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
from tests.conftest import free_port

VENV_BIN = Path(sys.executable).parent
NODE_CPUS = 2
OBJECT_STORE_BYTES = 256 * 1024 * 1024
#: Variables of this process that must not leak into the nodes or the clients: a session
#: cluster's address, a job's config, another cluster's token.
FOREIGN_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR",
               "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass
class Cluster:
    url: str  # the head's dashboard: what `patchray submit --address` takes
    temp_root: Path
    procs: list[subprocess.Popen]
    headers: dict[str, str]
    node_ids: dict[str, str] = field(default_factory=dict)  # "head_node"/"worker_node" -> id

    def descendants(self) -> set[int]:
        pids = set()
        for proc in self.procs:
            with suppress(psutil.NoSuchProcess):
                pids.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        return pids


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # as an activated venv/image
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([str(VENV_BIN / "ray"), "start", "--block", *args,
                                 "--node-ip-address", "127.0.0.1", "--num-cpus", str(NODE_CPUS),
                                 "--object-store-memory", str(OBJECT_STORE_BYTES),
                                 "--dashboard-agent-listen-port", str(free_port()),
                                 "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _alive_nodes(url: str, headers: dict[str, str]) -> list[dict]:
    r = requests.get(f"{url}/api/v0/nodes", params={"limit": 100}, headers=headers, timeout=10)
    r.raise_for_status()
    data = r.json()["data"]["result"]
    rows = data["result"] if isinstance(data, dict) else data
    return [n for n in rows if n.get("state") == "ALIVE"]


def _wait_for_nodes(cluster: Cluster, n: int, logs: list[Path], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        for proc, log in zip(cluster.procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")
        try:
            nodes = _alive_nodes(cluster.url, cluster.headers)
            if len(nodes) == n:
                for node in nodes:
                    kind = "head_node" if "head_node" in node["resources_total"] else "worker_node"
                    cluster.node_ids[kind] = node["node_id"]
                return
        except (requests.RequestException, KeyError, ValueError) as e:
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"the cluster at {cluster.url} did not show {n} alive nodes in "
                       f"{timeout_s}s (last error: {last})")


def _survivors(pids: set[int], temp_root: Path, grace_s: float = 30) -> list[str]:
    """Processes of the cluster still alive after ``grace_s`` (then killed, by pid): the
    tracked descendants, and any raylet/gcs_server whose command line names its temp dir."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for p in psutil.process_iter(["pid", "name", "cmdline", "status"]):
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.info["pid"] in pids or (str(temp_root) in cmdline and p.info["pid"] != os.getpid()):
                alive.append(p)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return kill_described(alive)


@contextmanager
def two_node_cluster(tmp: Path, **auth_env: str) -> Iterator[Cluster]:
    """Head + one more node, each with its own temp dir (Ray allows it per node)."""
    # Short: Ray's Unix socket paths under the temp dir must stay below 107 characters.
    temp_root = Path(tempfile.mkdtemp(prefix="prc-", dir="/tmp"))
    env = clean_env(**auth_env)
    gcs_port, dashboard_port = free_port(), free_port()
    url = f"http://127.0.0.1:{dashboard_port}"
    token = Path(auth_env["RAY_AUTH_TOKEN_PATH"]).read_text().strip() \
        if "RAY_AUTH_TOKEN_PATH" in auth_env else None
    cluster = Cluster(url, temp_root, [],
                      {"Authorization": f"Bearer {token}"} if token else {})
    logs = [tmp / f"head-{temp_root.name}.log", tmp / f"node-{temp_root.name}.log"]
    try:
        cluster.procs.append(_ray_start(
            ["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard_port),
             "--ray-client-server-port", str(free_port()),
             "--resources", json.dumps({"head_node": 1}),
             "--temp-dir", str(temp_root / "head")], env, logs[0]))
        _wait_for_nodes(cluster, 1, logs[:1])
        cluster.procs.append(_ray_start(
            ["--address", f"127.0.0.1:{gcs_port}", "--resources", json.dumps({"worker_node": 1}),
             "--temp-dir", str(temp_root / "node")], env, logs[1]))
        _wait_for_nodes(cluster, 2, logs)
        yield cluster
    finally:
        pids = cluster.descendants() | {p.pid for p in cluster.procs}
        for proc in reversed(cluster.procs):  # the extra node first, then the head
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in cluster.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        leaked = _survivors(pids, temp_root)
        shutil.rmtree(temp_root, ignore_errors=True)
        assert not leaked, f"processes of the cluster outlived it: {leaked}"


def kill_described(alive: list[psutil.Process]) -> list[str]:
    """Kill each process; return "<pid> <command line>" of those that were still there."""
    described = []
    for p in alive:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return described
