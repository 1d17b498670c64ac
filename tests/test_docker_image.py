"""The CPU image, for real: built by scripts/ci-docker.sh (or scripts/build-image.sh cpu), run
here through Docker and `docker compose run`.

Skips, with the reason, where no Docker engine answers or where the image was not built; on CI
(CI=true) a missing image is a failure instead, since scripts/ci-docker.sh builds it first."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = f"{os.environ.get('BENCH_IMAGE_NAME', 'detbench-harness')}:{os.environ.get('BENCH_CPU_TAG', 'cpu')}"

pytestmark = pytest.mark.docker


def docker(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no docker client installed")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("the Docker engine does not answer")
    if info.returncode != 0:
        pytest.skip(f"no Docker engine reachable ({info.stderr.strip().splitlines()[-1:]})")
    if docker("image", "inspect", IMAGE).returncode != 0:
        message = f"image {IMAGE} is not built (scripts/build-image.sh cpu, or scripts/ci-docker.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return IMAGE


@pytest.fixture(scope="module")
def compose_available(image: str) -> None:
    if docker("compose", "version").returncode != 0:
        pytest.skip("docker compose plugin not installed (scripts/ci-docker.sh installs it)")


def image_env(image: str) -> dict[str, str]:
    done = docker("run", "--rm", "--network", "none", "--entrypoint", "env", image)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_runs_as_a_non_root_user(image: str) -> None:
    done = docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1000"


def test_stamps_describe_the_image(image: str) -> None:
    env = image_env(image)
    lock_sha = hashlib.sha256((ROOT / "lockfiles/cpu.txt").read_bytes()).hexdigest()
    assert env["BENCH_LOCKFILE_SHA256"] == lock_sha, "image built from another lock: rebuild it"
    assert env["BENCH_IMAGE_FLAVOUR"] == "cpu"
    assert env["BENCH_IMAGE_NAME"] == IMAGE.split(":")[0] and env["BENCH_IMAGE_TAG"] == IMAGE.split(":")[1]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}|unpinned", env["BENCH_BASE_IMAGE_DIGEST"])
    assert env["BENCH_GIT_COMMIT"] and env["BENCH_GIT_DIRTY"] in ("true", "false", "unknown")


def test_installed_packages_are_exactly_the_lock(image: str) -> None:
    script = ("import json, importlib.metadata as m; "
              "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version "
              "for d in m.distributions()}))")
    done = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", script)
    assert done.returncode == 0, done.stderr
    installed = json.loads(done.stdout)
    locked = dict(re.findall(r"^([a-z0-9_.\-]+)==(\S+) \\$", (ROOT / "lockfiles/cpu.txt").read_text(), re.MULTILINE))
    for name, version in locked.items():
        assert installed.get(name) == version, name
    extra = set(installed) - set(locked) - {"detbench-harness", "pip"}
    assert not extra, f"installed outside the lock: {extra}"


def test_bench_is_the_entrypoint_and_works_offline(image: str) -> None:
    done = docker("run", "--rm", "--network", "none", image, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: bench" in done.stdout


def host_dirs(tmp_path: Path, uid: int, gid: int) -> dict[str, str]:
    """Fresh host folders for compose's mounts, owned by the user compose runs as."""
    env = dict(os.environ, UID=str(uid), GID=str(gid))
    for name in ("reports", "artifacts", "weights", "datasets"):
        folder = tmp_path / name
        folder.mkdir()
        os.chown(folder, uid, gid)
        env[f"BENCH_{name.upper()}_DIR"] = str(folder)
    return env


def invoking_ids() -> tuple[int, int]:
    """The invoking user; when that is root, a stand-in unprivileged one (its files must still
    come back owned by whoever compose was told to run as)."""
    return (os.getuid(), os.getgid()) if os.getuid() != 0 else (4242, 4242)


def test_compose_run_validates_a_mounted_plan(image: str, compose_available: None, tmp_path: Path) -> None:
    env = host_dirs(tmp_path, *invoking_ids())
    done = docker("compose", "run", "--rm", "bench-cpu", "validate", "plans/quickstart.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rfdetr-nano" in done.stdout


@pytest.mark.slow
def test_compose_run_without_a_plan_runs_the_quickstart_into_host_reports(
        image: str, compose_available: None, tmp_path: Path) -> None:
    uid, gid = invoking_ids()
    env = host_dirs(tmp_path, uid, gid)
    done = docker("compose", "run", "--rm", "bench-cpu", env=env, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = list((tmp_path / "reports").glob("quickstart/*/report.html"))
    assert len(reports) == 1, done.stdout[-2000:]
    run_dir = reports[0].parent
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["cells"]) == 2
    container = results["cells"][0]["environment"]["container"]
    assert container["image_flavour"] == "cpu"
    assert container["lockfile_sha256"] == hashlib.sha256((ROOT / "lockfiles/cpu.txt").read_bytes()).hexdigest()
    for path in [run_dir, *run_dir.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path


def compose_in(project: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`docker compose run` with `project` as the project folder (what `.` mounts), this
    checkout's compose.yaml and the image already built."""
    return docker("compose", "-f", str(ROOT / "compose.yaml"), "--project-directory", str(project),
                  "run", "--rm", *args, env=env, timeout=timeout)


def project_dir(tmp_path: Path, uid: int, gid: int) -> tuple[Path, dict[str, str]]:
    """A project folder as a fresh clone has it: the mounted folders present, owned by the user."""
    project = tmp_path / "project"
    for name in ("reports", "artifacts", "weights", "datasets"):
        (project / name).mkdir(parents=True)
    for path in [project, *project.iterdir()]:
        os.chown(path, uid, gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_") or k in ("BENCH_IMAGE_NAME", "BENCH_CPU_TAG")}
    return project, dict(env, UID=str(uid), GID=str(gid))


ROOT_PLAN = """
name: rootplan
device: cpu
models:
  - {name: nano, variant: nano, weights: random, resolutions: [128]}
runtimes: [torch]
precisions: [fp32]
scopes: [model]
protocol: {warmup_iterations: 1, warmup_seconds: 0, min_iterations: 3, min_seconds: 0, max_seconds: 30}
dataset: {images: data/sample/images, annotations: data/sample/instances.json}
accuracy: {agreement_images: 2, gallery_images: 1}
"""


@pytest.mark.slow
def test_compose_run_takes_a_plan_from_the_project_root_with_relative_paths(
        image: str, compose_available: None, tmp_path: Path) -> None:
    """`docker compose run --rm bench-cpu plan.yaml` with plan.yaml beside compose.yaml, naming
    a dataset relative to itself, as `bench plan.yaml` would natively."""
    from harness.accuracy.sample import make_sample_dataset

    uid, gid = invoking_ids()
    project, env = project_dir(tmp_path, uid, gid)
    (project / "plan.yaml").write_text(ROOT_PLAN)
    make_sample_dataset(project / "data" / "sample", n_images=2)
    done = compose_in(project, "bench-cpu", "plan.yaml", env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results_file,) = (project / "reports").glob("rootplan/*/results.json")
    (cell,) = json.loads(results_file.read_text())["cells"]
    # measured (a loaded machine may call the timing unstable; that is a verdict, not a failure)
    assert cell["status"] in ("ok", "unstable"), cell.get("reason")
    assert cell["accuracy"] is not None, "the dataset named relative to the plan was not read"
    for path in [results_file.parent, *results_file.parent.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path


def test_compose_run_explains_a_reports_folder_it_cannot_write(
        image: str, compose_available: None, tmp_path: Path) -> None:
    """Without exported UID/GID compose runs the container as 1000:1000; a reports/ of another
    user must give that advice and exit 2, not a PermissionError from deep inside the run."""
    if os.getuid() != 0:
        pytest.skip("needs root to hand the folder to another user")
    project, env = project_dir(tmp_path, 1000, 1000)
    os.chown(project / "reports", 4343, 4343)
    env.pop("UID"), env.pop("GID")
    done = compose_in(project, "bench-cpu", "plans/quickstart.yaml", env=env)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "belongs to 4343:4343 but the container runs as 1000:1000" in done.stderr
    assert "export UID GID=$(id -g)" in done.stderr and "Traceback" not in done.stderr
    os.chown(project / "reports", 1000, 1000)
    missing = compose_in(project, "bench-cpu", "/home/someone/plan.yaml", env=env)
    assert missing.returncode == 2 and "absolute path of the host" in missing.stderr
