"""Real Ray clusters on this machine for tests: a head and worker nodes on 127.0.0.1, each a
`ray start --block` in its own process group with its own ports and temp dir, token auth on.

Nodes are stopped by signalling the processes this module started (and anything whose command
line names their temp dir): `ray stop` would stop every Ray instance of this user on the
machine, other test sessions' included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_ports(k: int) -> list[int]:
    """``k`` distinct free ports: all held open at once while asking (one at a time, the OS may
    hand out the same port twice, and Ray refuses to start)."""
    socks = [socket.socket() for _ in range(k)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url: str, token: str, proc: subprocess.Popen, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(req, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not come up (exit code {proc.poll()})") from None
            time.sleep(1)


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links), deepest last."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def pids_mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


NODE_PORTS = ("object-manager-port", "node-manager-port", "metrics-export-port", "runtime-env-agent-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port")


class Node:
    """One `ray start --block` (``head`` or joining ``gcs``) with its own ports and temp dir."""

    def __init__(self, env: dict, log: Path, *, num_cpus: int, head: bool = False, gcs: str | None = None,
                 dashboard: bool = False, resources: str | None = None):
        self.tmp = tempfile.mkdtemp(prefix="hr-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
        ports = free_ports(2 + len(NODE_PORTS))
        self.port, self.dash = ports[0], ports[1]
        cmd = ["ray", "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
               "--temp-dir", self.tmp, "--disable-usage-stats"]
        cmd += [x for k, p in zip(NODE_PORTS, ports[2:]) for x in (f"--{k}", str(p))]
        if head:
            cmd += ["--head", "--port", str(self.port)]
            cmd += (["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dash)]
                    if dashboard else ["--include-dashboard", "false"])
        else:
            cmd += ["--address", gcs]
        if resources:
            cmd += ["--resources", resources]
        self.cmd = cmd
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://127.0.0.1:{self.dash}"

    def kill(self) -> None:
        """The node dies as a lost machine would: SIGKILL to its whole process tree at once (its
        raylet, agents and worker processes, whose titles no longer name the temp dir), no drain."""
        for pid in [self.proc.pid, *descendants(self.proc.pid), *pids_mentioning(self.tmp)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        """Stop this node only: SIGTERM to its `ray start` (it drains and ends its children),
        then anything still running with this node's temp dir in its command line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in pids_mentioning(self.tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def cluster_env() -> dict:
    """The environment for a cluster's nodes and its clients: one fresh token, token mode on,
    no RAY_*/AWS_* variables inherited from the test session."""
    token = secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    base.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    return {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def wait_nodes(address: str, env: dict, n: int, timeout: float = 180) -> None:
    """Until ``n`` nodes are alive in the cluster at ``address`` (asked from a fresh process)."""
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(x['Alive'] for x in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True,
                           text=True, timeout=120)
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} nodes not alive at {address}: {r.stdout[-500:]} {r.stderr[-1500:]}")
        time.sleep(2)
