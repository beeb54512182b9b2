"""Safe network defaults (issue 20 item 8): the local Ray instance hepray starts only lets in a
client with its token, and joining a cluster that is not there, or that refuses this client,
ends with one line naming the address and what to set (exit 1), not a traceback.

Ray 2.60's servers listen on every interface whatever node address they are given (there is no
bind option), so the token is what keeps other machines out; these tests check exactly that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import infer_job
from .raycluster import cluster_env, free_ports

LOCAL = """
import sys, ray
from hepray.engine.runtime import ensure_ray
ensure_ray(num_cpus=1)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # hold the instance until the test closes stdin
"""

JOIN = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print('joined', ray.cluster_resources()['CPU'])"


def _hepray_run(job: dict, tmp: Path, env: dict) -> subprocess.CompletedProcess:
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    return subprocess.run([sys.executable, "-m", "hepray.cli", "run", "job.yaml"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("hepray: error: cannot join the Ray cluster at "), r.stderr[-2000:]
    return last


def test_nothing_listening_is_one_line_at_once(toy, tmp_path):
    port, = free_ports(1)
    env = cluster_env()
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    r = _hepray_run(infer_job(toy, tmp_path / "run"), tmp_path, env)
    last = _one_line_error(r)
    assert f"127.0.0.1:{port}" in last and "RAY_ADDRESS" in last and "nothing answers" in last, last
    assert not list((tmp_path / "run").glob("parts/**/*.*"))  # no part: the folder holds only the plan


def test_local_instance_takes_only_its_token_and_a_refused_join_names_the_variables(toy, tmp_path):
    env = cluster_env()
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(k)  # as a user's shell: nothing set; hepray turns token mode on for its own instance
    holder = subprocess.Popen([sys.executable, "-c", LOCAL], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        address = holder.stdout.readline().strip()
        assert address, holder.stderr.read()[-2000:]
        # the token the instance was started with (Ray keeps it in ~/.ray/auth_token) lets a client in
        ok = subprocess.run([sys.executable, "-c", JOIN, address], env={**env, "RAY_AUTH_MODE": "token"},
                            capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and "joined 1.0" in ok.stdout, ok.stderr[-2000:]
        job = infer_job(toy, tmp_path / "run")
        # a wrong token: refused, one line naming the address and the token variables
        wrong = {**env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
        last = _one_line_error(_hepray_run(job, tmp_path, wrong))
        assert address in last and "RAY_AUTH_TOKEN" in last, last
        # no token mode: the client sends no token, refused, and the line says to set the mode
        last = _one_line_error(_hepray_run(job, tmp_path, {**env, "RAY_ADDRESS": address}))
        assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN" in last, last
        assert not list((tmp_path / "run").glob("parts/**/*.*"))
    finally:
        holder.stdin.close()
        holder.wait(60)

