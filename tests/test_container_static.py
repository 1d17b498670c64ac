"""The container's files, checked without a Docker engine: both Dockerfile flavours (the GPU one
can't be built here), compose.yaml, the locks and their staleness check, and the scripts.

Tests that need a tool (hadolint, docker compose, check-jsonschema, uv + PyPI) skip with the
reason when it is absent; CI installs them from lockfiles/tools.txt."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "Dockerfile.cpu"}
SHARED_MARKER = "# ---- shared: everything below"
SCRIPTS = ROOT / "scripts"



def _script_module(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is no package; keep it off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"detbench_scripts_{name}", SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


fetch_weights = _script_module("fetch_weights")
lock = _script_module("lock")
pin_base_image = _script_module("pin_base_image")

# ---------------------------------------------------------------- helpers


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults.setdefault(name, value.strip('"'))
    return defaults


def env_block(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions(path):
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `uv pip compile --generate-hashes` lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        requirement = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if requirement:
            current = requirement.group(1).lower()
            entries[current] = (requirement.group(2), [])
        elif stripped.startswith("--hash=sha256:") and current:
            entries[current][1].append(stripped.split(":", 1)[1].rstrip(" \\"))
        else:
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return entries


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def compose_default(expression: str) -> str:
    """`${NAME:-default}` -> default."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", expression)
    assert match, expression
    return match.group(1)


def run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def tool(name: str) -> str:
    """A host tool, also from the running interpreter's scripts folder (pip-installed)."""
    import sysconfig

    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if found is None:
        pytest.skip(f"{name} is not installed (pip install --require-hashes --no-deps -r lockfiles/tools.txt)")
    return found


# ---------------------------------------------------------------- Dockerfiles


def test_both_flavours_share_everything_below_the_marker() -> None:
    bodies = {name: path.read_text(encoding="utf-8").split(SHARED_MARKER, 1) for name, path in DOCKERFILES.items()}
    assert all(len(parts) == 2 for parts in bodies.values()), "shared marker missing"
    assert bodies["gpu"][1] == bodies["cpu"][1], "Dockerfile and Dockerfile.cpu drifted apart below the marker"


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_flavour_head_names_its_base_lock_and_python(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    steps = instructions(path)
    assert steps[0] == ("ARG", steps[0][1]) and steps[0][1].startswith("BASE_IMAGE=")
    assert steps[1] == ("FROM", "${BASE_IMAGE}"), "the base image must be the build argument"
    assert [k for k, _ in steps].count("FROM") == 1, "one stage: the classic builder builds every stage"
    defaults = arg_defaults(path)
    assert defaults["FLAVOUR"] == flavour
    assert defaults["LOCK_PYTHON"] == lock.FLAVOURS[flavour].python
    assert lock.FLAVOURS[flavour].dockerfile == path.name
    if flavour == "gpu":
        assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", defaults["BASE_IMAGE"])
        assert defaults["VENV_SYSTEM_SITE_PACKAGES"] == "1", "TensorRT's bindings are in the base's site-packages"
    else:
        assert re.fullmatch(r"python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?", defaults["BASE_IMAGE"])
        assert defaults["VENV_SYSTEM_SITE_PACKAGES"] == "0"
        assert defaults["BASE_TENSORRT"] == "" and defaults["DEFAULT_PLAN"] == ""


def test_gpu_base_carries_the_tensorrt_the_locked_onnxruntime_gpu_is_built_for() -> None:
    """onnxruntime-gpu 1.31's TensorRT execution provider is built for TensorRT 10.14; the base
    image must carry 10.14 (NGC 25.11), not 25.10's 10.13, and the build checks it."""
    defaults = arg_defaults(DOCKERFILES["gpu"])
    assert lock_entries(ROOT / "lockfiles/gpu.txt")["onnxruntime-gpu"][0].startswith("1.31.")
    assert defaults["BASE_TENSORRT"] == "10.14"
    assert defaults["BASE_IMAGE"].startswith("nvcr.io/nvidia/tensorrt:25.11-py3")
    record = (ROOT / "docker/GPU_IMAGE.md").read_text(encoding="utf-8")
    assert "| TensorRT | 10.14" in record and "25.11" in record
    docs = (ROOT / "docs/container.md").read_text(encoding="utf-8")
    assert "`nvcr.io/nvidia/tensorrt:25.11-py3` (CUDA 13.0, TensorRT 10.14" in docs
    # The minimum driver, from NVIDIA's CUDA compatibility table (CUDA 13.x: >= 580).
    assert re.search(r"minimum NVIDIA driver[^.]*\b580\b", docs), "docs/container.md must state the minimum driver"


def check_base(*args: str, python_says: str | None, env: dict[str, str] | None = None,
               tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """docker/check-base.sh with a stand-in python3 whose `import tensorrt` reports a version."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\n" + (f"echo {python_says}\n" if python_says else "exit 1\n"))
    fake.chmod(0o755)
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", **(env or {})}
    return run("sh", str(ROOT / "docker/check-base.sh"), *args, env=environment)


def test_check_base_refuses_a_gpu_base_with_another_tensorrt(tmp_path: Path) -> None:
    base = "nvcr.io/nvidia/tensorrt:25.11-py3"
    ok = check_base(base, "", "10.14", python_says="10.14.1.48", tmp_path=tmp_path)
    assert ok.returncode == 0 and "TensorRT: 10.14.1.48" in ok.stdout, ok.stderr
    wrong = check_base(base, "", "10.14", python_says="10.13.3.9", tmp_path=tmp_path)
    assert wrong.returncode == 1 and "has TensorRT 10.13.3.9" in wrong.stderr
    assert check_base(base, "", "10.14", python_says="10.140.0", tmp_path=tmp_path).returncode == 1
    from_env = check_base(base, "", "10.14", python_says=None, env={"TRT_VERSION": "10.14.1.48"}, tmp_path=tmp_path)
    assert from_env.returncode == 0, from_env.stderr
    unknown = check_base(base, "", "10.14", python_says=None, tmp_path=tmp_path)
    assert unknown.returncode == 1 and "says which TensorRT" in unknown.stderr
    assert check_base("python:3.11-slim-bookworm", "", "", python_says=None, tmp_path=tmp_path).returncode == 0


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_base_digest_is_pinned_or_declared_unverified(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    defaults = arg_defaults(path)
    base, digest = defaults["BASE_IMAGE"], defaults["BASE_IMAGE_DIGEST"]
    if "@sha256:" in base:
        assert digest == "sha256:" + base.split("@sha256:", 1)[1]
    else:
        # Never an invented digest: an unpinned default must say so, here and in the record.
        assert digest == ""
        assert "UNVERIFIED DIGEST" in path.read_text(encoding="utf-8")
        if flavour == "gpu":
            assert "UNVERIFIED" in (ROOT / "docker/GPU_IMAGE.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_lockfile_stamp_is_the_lock_sha256(flavour: str) -> None:
    assert arg_defaults(DOCKERFILES[flavour])["LOCKFILE_SHA256"] == sha256_file(ROOT / f"lockfiles/{flavour}.txt")


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_entrypoint_user_workdir(flavour: str) -> None:
    steps = instructions(DOCKERFILES[flavour])
    last = {keyword: rest for keyword, rest in steps}
    assert json.loads(last["ENTRYPOINT"]) == ["/opt/bench/docker/entrypoint.sh"]
    assert json.loads(last["CMD"]) == [], "no arguments: the flavour's default plan (entrypoint.sh)"
    user = last["USER"]
    assert user == "${BENCH_UID}:${BENCH_GID}"
    assert arg_defaults(DOCKERFILES[flavour])["BENCH_UID"] not in ("0", "root")
    assert last["WORKDIR"] == "/work"
    keywords = [keyword for keyword, _ in steps]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), \
        "USER comes after the last RUN: everything that needs root happens before it"


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_image_stamps_what_environment_capture_reads(flavour: str) -> None:
    from harness.environment.capture import CONTAINER_STAMPS

    env = env_block(DOCKERFILES[flavour])
    expected = {
        "BENCH_IMAGE_NAME": "${IMAGE_NAME}",
        "BENCH_IMAGE_TAG": "${IMAGE_TAG}",
        "BENCH_IMAGE_FLAVOUR": "${FLAVOUR}",
        "BENCH_BASE_IMAGE_DIGEST": "${BASE_IMAGE_DIGEST:-unpinned}",
        "BENCH_LOCKFILE_SHA256": "${LOCKFILE_SHA256}",
        "BENCH_GIT_COMMIT": "${GIT_COMMIT}",
        "BENCH_GIT_DIRTY": "${GIT_DIRTY}",
    }
    for name, value in expected.items():
        assert env.get(name) == value, name
    assert set(CONTAINER_STAMPS.values()) <= set(env), "the harness reads a stamp the image doesn't set"
    assert env["RF_HOME"] == "/work/weights", "`weights: cache` must read compose's weights volume"


def test_every_install_is_hash_locked() -> None:
    """No unpinned install anywhere: the lock with hashes, or the harness itself offline."""
    texts = [path.read_text(encoding="utf-8") for path in DOCKERFILES.values()]
    texts += [path.read_text(encoding="utf-8") for path in (ROOT / "docker").glob("*.sh")]
    installs = [line for text in texts for line in re.findall(r"pip[^\n]*\binstall\b[^\n]*(?:\\\n[^\n]*)*", text)]
    assert installs, "no pip install found at all"
    for command in installs:
        flat = " ".join(command.replace("\\\n", " ").split())
        locked = "--require-hashes" in flat and "--no-deps" in flat and "-r " in flat
        harness_itself = "--no-deps" in flat and "--no-index" in flat and "--no-build-isolation" in flat
        assert locked or harness_itself, flat
    for text in texts:
        assert "apt-get install" not in text, "apt packages are not pinned: keep them out of the images"
    install_locked = (ROOT / "docker/install-locked.sh").read_text(encoding="utf-8")
    assert "--only-binary :all:" in install_locked, "a source build would run code outside the lock"


def test_dockerignore_admits_everything_the_dockerfiles_copy() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern[1:] if negate else pattern
            body = body.rstrip("/")
            if fnmatch(path, body) or path.startswith(body + "/") or fnmatch(path, body.replace("**/", "")):
                verdict = not negate
        return verdict

    for flavour, dockerfile in DOCKERFILES.items():
        for keyword, rest in instructions(dockerfile):
            if keyword != "COPY":
                continue
            sources = rest.split()[:-1]
            for source in sources:
                source = source.replace("${FLAVOUR}", flavour).rstrip("/")
                assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
                assert not ignored(source), f".dockerignore hides {source}"
    assert ignored("reports/x/report.html") and ignored(".git/config") and ignored("weights/a.pth")


# ---------------------------------------------------------------- locks


@pytest.mark.parametrize("flavour", ["cpu", "gpu", "tools"])
def test_every_lock_entry_is_pinned_and_hashed(flavour: str) -> None:
    entries = lock_entries(ROOT / f"lockfiles/{flavour}.txt")
    assert entries
    for name, (_version, hashes) in entries.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_locks_carry_the_tested_versions_and_the_right_onnxruntime() -> None:
    cpu = lock_entries(ROOT / "lockfiles/cpu.txt")
    gpu = lock_entries(ROOT / "lockfiles/gpu.txt")
    constraints = dict(line.split("==") for line in (ROOT / "lockfiles/constraints.txt").read_text().splitlines()
                       if line and not line.startswith("#"))
    for entries in (cpu, gpu):
        for name, version in constraints.items():
            assert entries[name][0] == version
        assert entries["rfdetr"][0] == "1.11.2"
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert gpu["onnxruntime-gpu"][0].startswith("1.31."), "the onnxruntime-gpu line built for CUDA 13"
    assert "onnxruntime" not in gpu, "CPU and GPU builds of onnxruntime both own the `onnxruntime` module"
    for entries in (cpu, gpu):
        assert {"setuptools", "wheel"} <= set(entries), "the harness builds without isolation"


def test_locks_cover_pyproject_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    core = names(project["dependencies"])
    extras = project["optional-dependencies"]
    cpu = set(lock_entries(ROOT / "lockfiles/cpu.txt"))
    gpu = set(lock_entries(ROOT / "lockfiles/gpu.txt"))
    assert core | names(extras["torch"]) | names(extras["onnx"]) <= cpu
    assert core | names(extras["torch"]) | {"onnx"} <= gpu


def lock_check_tree(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "Dockerfile", "Dockerfile.cpu"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "lockfiles", tmp_path / "lockfiles")
    return tmp_path


def lock_check(root: Path) -> subprocess.CompletedProcess[str]:
    tool("uv")
    return run(sys.executable, str(SCRIPTS / "lock.py"), "--check", "--flavour", "cpu", "--root", str(root),
               timeout=240)


def test_lock_check_passes_on_the_committed_locks(tmp_path: Path) -> None:
    done = lock_check(lock_check_tree(tmp_path))
    assert done.returncode == 0, done.stderr


def test_lock_check_fails_when_pyproject_changes(tmp_path: Path) -> None:
    root = lock_check_tree(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    assert '"psutil>=5.9",' in text
    pyproject.write_text(text.replace('"psutil>=5.9",', '"psutil>=5.9",\n  "tomli-w>=1.0",'), encoding="utf-8")
    done = lock_check(root)
    assert done.returncode == 1
    assert "lockfiles/cpu.txt is stale" in done.stderr and "+tomli-w==" in done.stderr


def test_lock_check_fails_on_a_hand_edited_lock_or_stamp(tmp_path: Path) -> None:
    root = lock_check_tree(tmp_path)
    cpu_lock = root / "lockfiles/cpu.txt"
    cpu_lock.write_text(cpu_lock.read_text(encoding="utf-8").replace("rich==", "rich==0.0.0.dev0+"), encoding="utf-8")
    done = lock_check(root)
    assert done.returncode == 1 and "lockfiles/cpu.txt is stale" in done.stderr
    assert "ARG LOCKFILE_SHA256=" in done.stderr, "the Dockerfile's stamp no longer matches the lock"


def test_lock_regenerate_rewrites_the_dockerfile_stamp(tmp_path: Path) -> None:
    tool("uv")
    root = lock_check_tree(tmp_path)
    dockerfile = root / "Dockerfile.cpu"
    dockerfile.write_text(re.sub(r"ARG LOCKFILE_SHA256=\w+", "ARG LOCKFILE_SHA256=0", dockerfile.read_text()))
    done = run(sys.executable, str(SCRIPTS / "lock.py"), "--flavour", "cpu", "--root", str(root), timeout=240)
    assert done.returncode == 0, done.stderr
    assert (root / "lockfiles/cpu.txt").read_text() == (ROOT / "lockfiles/cpu.txt").read_text(), \
        "same inputs and resolution date must give the same lock"
    assert arg_defaults(dockerfile)["LOCKFILE_SHA256"] == sha256_file(root / "lockfiles/cpu.txt")


# A hermetic index for the lock's own logic: PEP 691 JSON pages with upload times, served on the
# loopback, so that the tests can make an index's past change under a committed lock.


def _wheel(name: str, version: str) -> bytes:
    """A minimal pure-Python wheel (what uv needs to read a version's metadata)."""
    import base64
    import io
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{name.replace('-', '_')}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            # A fixed time stamp: the same release must give the same bytes (and hash) twice.
            archive.writestr(zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


class FakeIndex:
    """name -> {filename: (bytes, upload time, yanked)}; change it while a test runs."""

    def __init__(self) -> None:
        self.projects: dict[str, dict[str, tuple[bytes, str, bool]]] = {}
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
                self.answer(with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.answer(with_body=True)

            def answer(self, *, with_body: bool) -> None:
                parts = [p for p in self.path.split("/") if p]
                if len(parts) == 2 and parts[0] == "simple" and parts[1] in index.projects:
                    files = index.projects[parts[1]]
                    body = json.dumps({
                        "meta": {"api-version": "1.1"}, "name": parts[1],
                        "versions": sorted({f.split("-")[1] for f in files}),
                        "files": [{"filename": f, "url": f"/files/{f}",
                                   "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                                   "upload-time": uploaded, "yanked": yanked, "size": len(data)}
                                  for f, (data, uploaded, yanked) in files.items()],
                    }).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
                elif len(parts) == 2 and parts[0] == "files":
                    found = [d for files in index.projects.values() for f, (d, _, _) in files.items() if f == parts[1]]
                    if not found:
                        self.send_error(404)
                        return
                    body, kind = found[0], "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, name: str, version: str, uploaded: str, *, yanked: bool = False) -> None:
        filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        self.projects.setdefault(name, {})[filename] = (_wheel(name, version), uploaded, yanked)

    def withdraw(self, name: str, version: str) -> None:
        del self.projects[name][f"{name.replace('-', '_')}-{version}-py3-none-any.whl"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_index() -> object:
    index = FakeIndex()
    yield index
    index.close()


def fake_lock_tree(tmp_path: Path, index_url: str) -> Path:
    """A project whose CPU lock resolves two packages from `index_url`, cut off on 2026-06-01."""
    root = tmp_path / "project"
    (root / "lockfiles").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "fake-project"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["alpha"]\n[project.optional-dependencies]\ntorch = ["beta"]\nonnx = []\nserve = []\n',
        encoding="utf-8")
    (root / "lockfiles/cpu.in").write_text("", encoding="utf-8")
    (root / "lockfiles/constraints.txt").write_text("", encoding="utf-8")
    (root / "lockfiles/resolution-date").write_text("2026-06-01T00:00:00Z\n", encoding="utf-8")
    (root / "lockfiles/index-url").write_text(index_url + "\n", encoding="utf-8")
    shutil.copy(ROOT / "lockfiles/tools.txt", root / "lockfiles/tools.txt")  # the uv pin
    (root / "Dockerfile.cpu").write_text("ARG LOCKFILE_SHA256=0\n", encoding="utf-8")
    return root


def fake_lock(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    tool("uv")
    environment = dict(os.environ if env is None else env, UV_CACHE_DIR=str(root.parent / "uv-cache"))
    return run(sys.executable, str(SCRIPTS / "lock.py"), "--flavour", "cpu", "--root", str(root), *args,
               env=environment, timeout=120)


def test_lock_check_stays_green_when_the_index_later_offers_a_backdated_release(
        tmp_path: Path, fake_index: FakeIndex) -> None:
    fake_index.publish("alpha", "1.0", "2026-01-01T00:00:00Z")
    fake_index.publish("beta", "2.0", "2026-01-01T00:00:00Z")
    root = fake_lock_tree(tmp_path, fake_index.url)
    made = fake_lock(root)
    assert made.returncode == 0, made.stderr
    lock_text = (root / "lockfiles/cpu.txt").read_text()
    assert "alpha==1.0" in lock_text and "beta==2.0" in lock_text
    assert f"index {fake_index.url}, files uploaded before 2026-06-01T00:00:00Z" in lock_text
    # A release appears that carries an upload time before the cut-off (un-yanked, restored, a
    # mirror catching up): a resolution from nothing would now take it, a kept lock must not.
    fake_index.publish("alpha", "1.1", "2026-02-01T00:00:00Z")
    checked = fake_lock(root, "--check")
    assert checked.returncode == 0, checked.stderr
    assert "would choose: alpha 1.0 -> 1.1" in checked.stdout
    assert fake_lock(root).returncode == 0
    assert (root / "lockfiles/cpu.txt").read_text() == lock_text, "regenerating keeps a valid lock"
    # A release uploaded after the cut-off stays invisible either way.
    fake_index.publish("beta", "3.0", "2026-07-01T00:00:00Z")
    assert "beta" not in fake_lock(root, "--check").stdout


def test_lock_check_catches_hand_edits_and_a_locked_release_that_is_gone(
        tmp_path: Path, fake_index: FakeIndex) -> None:
    fake_index.publish("alpha", "1.0", "2026-01-01T00:00:00Z")
    fake_index.publish("alpha", "1.1", "2026-02-01T00:00:00Z")
    fake_index.publish("beta", "2.0", "2026-01-01T00:00:00Z")
    root = fake_lock_tree(tmp_path, fake_index.url)
    assert fake_lock(root).returncode == 0
    lock = root / "lockfiles/cpu.txt"
    good = lock.read_text()
    # A hash edited by hand: the check reads every hash from the index again.
    alpha_hash = re.search(r"alpha==1\.1 \\\n\s+--hash=sha256:(\w+)", good).group(1)
    lock.write_text(good.replace(alpha_hash, "0" * 64))
    checked = fake_lock(root, "--check")
    assert checked.returncode == 1 and "lockfiles/cpu.txt is stale" in checked.stderr and alpha_hash in checked.stderr
    # A yanked release stays installable where it is pinned exactly (PEP 592): the lock is kept,
    # and the check says what a resolution from nothing would take instead.
    lock.write_text(good)
    fake_index.publish("alpha", "1.1", "2026-02-01T00:00:00Z", yanked=True)
    checked = fake_lock(root, "--check")
    assert checked.returncode == 0, checked.stderr
    assert "would choose: alpha 1.1 -> 1.0" in checked.stdout
    # A locked release that is gone from the index: the lock no longer resolves as committed.
    fake_index.withdraw("alpha", "1.1")
    checked = fake_lock(root, "--check")
    assert checked.returncode == 1 and "-alpha==1.1" in checked.stderr and "+alpha==1.0" in checked.stderr


def test_lock_ignores_ambient_uv_settings_and_refuses_another_uv(tmp_path: Path, fake_index: FakeIndex) -> None:
    fake_index.publish("alpha", "1.0", "2026-01-01T00:00:00Z")
    fake_index.publish("beta", "2.0", "2026-01-01T00:00:00Z")
    root = fake_lock_tree(tmp_path, fake_index.url)
    assert fake_lock(root).returncode == 0
    # A uv.toml in the project and UV_* variables of the caller name other indexes and settings:
    # none of them may take part (the index is lockfiles/index-url, recorded with the lock).
    (root / "uv.toml").write_text('index-url = "http://127.0.0.1:9/simple"\nprerelease = "allow"\n')
    env = dict(os.environ, UV_INDEX_URL="http://127.0.0.1:9/simple", UV_EXTRA_INDEX_URL="http://127.0.0.1:9/x",
               UV_EXCLUDE_NEWER="2020-01-01T00:00:00Z", UV_RESOLUTION="lowest")
    checked = fake_lock(root, "--check", env=env)
    assert checked.returncode == 0, checked.stderr
    # The resolver is an input too: the uv of lockfiles/tools.txt, or a clear refusal (exit 2).
    tools = root / "lockfiles/tools.txt"
    tools.write_text(re.sub(r"^uv==\S+", "uv==0.0.1", tools.read_text(), flags=re.MULTILINE))
    refused = fake_lock(root, "--check")
    assert refused.returncode == 2 and "the locks are made with uv 0.0.1" in refused.stderr
    assert "Traceback" not in refused.stderr
    (root / "lockfiles/index-url").write_text("not a url\n")
    shutil.copy(ROOT / "lockfiles/tools.txt", tools)
    refused = fake_lock(root, "--check")
    assert refused.returncode == 2 and "lockfiles/index-url" in refused.stderr and "Traceback" not in refused.stderr


# ---------------------------------------------------------------- compose


def test_compose_services_volumes_user_network() -> None:
    services = compose()["services"]
    assert set(services) == {"bench", "bench-cpu", "tests", "tests-cpu"}
    for name, dockerfile in (("bench", "Dockerfile"), ("bench-cpu", "Dockerfile.cpu"),
                             ("tests", "Dockerfile"), ("tests-cpu", "Dockerfile.cpu")):
        service = services[name]
        assert service["build"]["dockerfile"] == dockerfile
        assert service["build"]["network"] == "host"
        assert service["network_mode"] == "none"
        assert service["user"] == "${UID:-1000}:${GID:-1000}"
        assert service.get("shm_size")
        defaults = arg_defaults(ROOT / dockerfile)
        args = service["build"]["args"]
        assert compose_default(args["BASE_IMAGE"]) == defaults["BASE_IMAGE"]
        assert compose_default(args["BASE_IMAGE_DIGEST"]) == defaults["BASE_IMAGE_DIGEST"]
        gpu = dockerfile == "Dockerfile"
        assert ("deploy" in service) == gpu
        if gpu:
            devices = service["deploy"]["resources"]["reservations"]["devices"]
            assert devices == [{"driver": "nvidia", "capabilities": ["gpu"],
                                "device_ids": ["${NVIDIA_VISIBLE_DEVICES:-${CUDA_VISIBLE_DEVICES:-0}}"]}]
    for name in ("bench", "bench-cpu"):
        service = services[name]
        assert service["working_dir"] == "/work" and "entrypoint" not in service
        mounts = {volume.split(":")[-2] if volume.endswith(":ro") else volume.rsplit(":", 1)[1]:
                  volume.endswith(":ro") for volume in service["volumes"]}
        # The project folder itself, so that a plan anywhere in it (and what it names relative
        # to itself) resolves as natively; the folders a run writes over it.
        assert service["volumes"][0] == ".:/work:ro"
        assert mounts == {"/work": True, "/work/datasets": True, "/work/weights": False,
                          "/work/artifacts": False, "/work/reports": False}
    for name in ("tests", "tests-cpu"):
        service = services[name]
        assert service["profiles"] == ["tests"], "`docker compose up` must not start the test suite"
        assert service["volumes"] == [".:/src:ro"] and service["working_dir"] == "/src"
        assert service["entrypoint"][:3] == ["python", "-m", "pytest"]


def test_compose_config_is_valid() -> None:
    docker = shutil.which("docker")
    if docker is None or run(docker, "compose", "version").returncode != 0:
        pytest.skip("docker compose plugin not installed (scripts/ci-docker.sh installs it)")
    done = run(docker, "compose", "config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_compose_matches_the_compose_spec_schema() -> None:
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_clean() -> None:
    done = run(tool("hadolint"), "Dockerfile", "Dockerfile.cpu")
    assert done.returncode == 0, done.stdout + done.stderr


def compose_rendered(env: dict[str, str]) -> dict:
    docker = shutil.which("docker")
    if docker is None or run(docker, "compose", "version").returncode != 0:
        pytest.skip("docker compose plugin not installed (scripts/ci-docker.sh installs it)")
    clean = {k: v for k, v in os.environ.items() if k not in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")}
    done = run(docker, "compose", "--profile", "tests", "config", "--format", "json", env={**clean, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_host_gpu_choice_reaches_the_gpu_services() -> None:
    def device_ids(env: dict[str, str], service: str = "bench") -> list[str]:
        devices = compose_rendered(env)["services"][service]["deploy"]["resources"]["reservations"]["devices"]
        return devices[0]["device_ids"]

    assert device_ids({}) == ["0"]
    assert device_ids({"NVIDIA_VISIBLE_DEVICES": "2"}) == ["2"]
    assert device_ids({"CUDA_VISIBLE_DEVICES": "1"}, "tests") == ["1"]
    assert device_ids({"NVIDIA_VISIBLE_DEVICES": "GPU-4f1c", "CUDA_VISIBLE_DEVICES": "1"}) == ["GPU-4f1c"]
    # Inside, the GPU handed over is cuda:0: the host's CUDA_VISIBLE_DEVICES must not follow it in.
    environment = compose_rendered({"CUDA_VISIBLE_DEVICES": "1"})["services"]["bench"].get("environment") or {}
    assert "CUDA_VISIBLE_DEVICES" not in environment


def test_gpu_image_default_plan_is_the_gpu_quickstart() -> None:
    from harness.plan.load import bundled_quickstart_text, load_plan

    gpu, cpu = arg_defaults(DOCKERFILES["gpu"]), arg_defaults(DOCKERFILES["cpu"])
    assert gpu["DEFAULT_PLAN"] == "/opt/bench/plans/quickstart-gpu.yaml"
    copies = [rest.split() for keyword, rest in instructions(DOCKERFILES["gpu"]) if keyword == "COPY"]
    assert ["plans/quickstart-gpu.yaml", "/opt/bench/plans/"] in copies
    assert env_block(DOCKERFILES["gpu"])["BENCH_DEFAULT_PLAN"] == "${DEFAULT_PLAN}"
    plan = load_plan(ROOT / "plans/quickstart-gpu.yaml")
    assert plan.plan.device == "cuda" and {cell.device for cell in plan.cells} == {"cuda:0"}
    # The CPU image keeps bench's bundled quickstart, which is the CPU one.
    assert cpu["DEFAULT_PLAN"] == "" and "device: cpu" in bundled_quickstart_text()


def test_checkout_carries_the_folders_compose_mounts() -> None:
    """A fresh clone must have every relative bind-mount source: Docker creates a missing one
    owned by root, and the container (running as the user) can't write into it."""
    volumes = compose()["services"]["bench"]["volumes"]
    sources = []
    for volume in volumes:
        match = re.match(r"^(?:\$\{\w+:-([^}]*)\}|([^:]+)):", volume)
        assert match, volume
        sources.append(match.group(1) or match.group(2))
    for source in sources:
        folder = (ROOT / source).resolve()
        assert folder.is_dir(), f"{source} is not in the checkout"
        if folder != ROOT.resolve():
            assert any(folder.iterdir()), f"{source} holds no file, so git would not keep it"
    if shutil.which("git") and run("git", "rev-parse", "--git-dir").returncode == 0:
        tracked = run("git", "ls-files", "--", *[s for s in sources if s != "."]).stdout.split()
        for source in sources:
            if source != ".":
                assert any(path.startswith(source.removeprefix("./") + "/") for path in tracked), source


def readme_block_lines() -> list[str]:
    return [line.strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("    ")]


def readme_command(service: str) -> str:
    """The README's one-line start for a compose service: build, then run."""
    lines = [line.split("    #")[0].strip() for line in readme_block_lines()
             if "scripts/build-image.sh" in line and re.search(rf"docker compose run --rm {service}(\s|$)", line)]
    assert len(lines) == 1, f"README.md: expected one start line for {service}, found {lines}"
    return lines[0]


@pytest.mark.parametrize(("service", "build"), [("bench", "scripts/build-image.sh &&"),
                                                ("bench-cpu", "scripts/build-image.sh cpu &&")])
def test_readme_start_lines_are_complete(service: str, build: str) -> None:
    """Each line works on its own in a fresh clone: the user's ids exported for compose's
    `user:`, the image built, then run (the mounted folders are in the checkout)."""
    line = readme_command(service)
    assert line.startswith("export UID GID=$(id -g) && "), line
    assert build in line and line.index(build) < line.index("docker compose run")
    assert "mkdir" not in line


def test_readme_test_section_names_the_test_extras_and_tools() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Test\n"):readme.index("\n## ", readme.index("## Test\n") + 1)]
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    extras = re.search(r"pip install -q -e '(\.\[[^\]]+\])'", ci).group(1)
    assert f"pip install -e '{extras}'" in section
    for pin in re.findall(r"\b(torch==\S+|torchvision==\S+|tensorrt-stubs==\S+)", ci):
        assert pin in section, pin
    for package in re.search(r"apt-get install -y -q (.+?) >/dev/null", ci).group(1).split():
        assert f"`{package}`" in section, package
    for name in ("lockfiles/tools.txt", "docker.io", "debootstrap", "git", "unzip",
                 "docker compose run --rm tests-cpu", "ruff check harness tests", "mypy harness"):
        assert name in section, name


def test_ci_runs_the_image_tests_as_a_user_would() -> None:
    """CI's run of the image's test service is the user's command, with the user's selection."""
    script = (ROOT / "scripts/ci-docker.sh").read_text(encoding="utf-8")
    runs = re.findall(r"^[^#\n]*docker compose run --rm tests-cpu([^'\"\n]*)", script, re.MULTILINE)
    assert runs, "scripts/ci-docker.sh does not run the image's test service"
    assert all(rest.strip() == "" for rest in runs), f"CI narrows the selection: {runs}"
    assert any(line.split("  #")[0].strip() == "docker compose run --rm tests-cpu" for line in readme_block_lines())
    # ... and README.md's CPU start line, verbatim, in a fresh clone, as an unprivileged user.
    assert "git clone" in script and 'runuser -u "$CI_USER"' in script and "readme_line" in script


# ---------------------------------------------------------------- the entrypoint


def entrypoint(root: Path, *args: str, env: dict[str, str] | None = None,
               as_uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """docker/entrypoint.sh in root/work, with a stand-in `bench` that prints its arguments."""
    command = ["sh", str(ROOT / "docker/entrypoint.sh"), *args]
    if as_uid is not None and os.getuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to run the entrypoint as another user")
        command = [setpriv, f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", *command]
    environment = {"PATH": f"{root / 'bin'}:/usr/bin:/bin", **(env or {})}
    return subprocess.run(command, cwd=root / "work", env=environment, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.fixture
def work_dir() -> object:
    """A stand-in for the container's /work, in a folder any user may enter (pytest's tmp_path
    is private to the user running the tests, and the entrypoint runs as others here)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="entrypoint-"))
    os.chmod(root, 0o755)
    work = root / "work"
    for name in ("reports", "artifacts", "weights", "plans"):
        (work / name).mkdir(parents=True)
    (work / "plan.yaml").write_text("name: x\n")
    (root / "bin").mkdir()
    (root / "bin/bench").write_text('#!/bin/sh\necho "bench called with: $*"\n')
    (root / "bin/bench").chmod(0o755)
    yield work
    shutil.rmtree(root)


def test_entrypoint_runs_the_flavours_default_plan(work_dir: Path) -> None:
    root = work_dir.parent
    default = entrypoint(root, env={"BENCH_DEFAULT_PLAN": str(work_dir / "plan.yaml")})
    assert default.returncode == 0 and default.stdout.strip() == f"bench called with: run {work_dir / 'plan.yaml'}"
    assert entrypoint(root).stdout.strip() == "bench called with:", "no default: bench's bundled quickstart"
    given = entrypoint(root, "plan.yaml", "--gpus", "0", env={"BENCH_DEFAULT_PLAN": "/nope.yaml"})
    assert given.stdout.strip() == "bench called with: plan.yaml --gpus 0"


def test_entrypoint_explains_a_missing_plan(work_dir: Path) -> None:
    root = work_dir.parent
    for args in (["nope.yaml"], ["run", "sub/nope.yaml"], ["validate", "nope.yaml"]):
        done = entrypoint(root, *args)
        assert done.returncode == 2 and "no plan file" in done.stderr and "project folder" in done.stderr, args
        assert "bench called" not in done.stdout
    host_path = entrypoint(root, "/home/someone/detbench/plan.yaml")
    assert host_path.returncode == 2 and "absolute path of the host" in host_path.stderr
    assert entrypoint(root, "validate", "plan.yaml").returncode == 0
    assert entrypoint(root, "run", "--resume", "reports/x").returncode == 0


def test_entrypoint_explains_folders_the_user_cannot_write(work_dir: Path) -> None:
    root = work_dir.parent
    if os.getuid() != 0:
        pytest.skip("needs root to hand folders to other users (CI runs as root)")
    for name in ("reports", "artifacts", "weights"):
        os.chmod(work_dir / name, 0o777)
    os.chown(work_dir / "reports", 4343, 4343)
    os.chmod(work_dir / "reports", 0o755)
    # compose's fallback user (UID/GID not exported): the advice is to export them.
    done = entrypoint(root, "plan.yaml", as_uid=1000)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "./reports (or $BENCH_REPORTS_DIR) belongs to 4343:4343 but the container runs as 1000:1000" in done.stderr
    assert "export UID GID=$(id -g)" in done.stderr
    # Someone else's folder: no advice to export anything.
    other = entrypoint(root, "plan.yaml", as_uid=4242)
    assert other.returncode == 2 and "runs as 4242:4242" in other.stderr and "export UID" not in other.stderr
    os.chmod(work_dir / "reports", 0o777)
    os.chown(work_dir / "artifacts", 0, 0)
    os.chmod(work_dir / "artifacts", 0o755)
    done = entrypoint(root, as_uid=4242)
    assert done.returncode == 2 and "./artifacts (or $BENCH_ARTIFACTS_DIR) is owned by root" in done.stderr
    assert "sudo chown" in done.stderr
    # Commands that write nothing are not held up.
    for args in (["--help"], ["validate", "plan.yaml"], ["env"]):
        assert entrypoint(root, *args, as_uid=4242).returncode == 0, args
    os.chown(work_dir / "artifacts", 4242, 4242)
    assert entrypoint(root, "plan.yaml", as_uid=4242).returncode == 0


# ---------------------------------------------------------------- build helpers


def test_check_base_refuses_a_digest_that_names_another_base() -> None:
    script = str(ROOT / "docker/check-base.sh")
    digest = "sha256:" + "a" * 64
    assert run("sh", script, f"python:3.11-slim-bookworm@{digest}", digest).returncode == 0
    assert run("sh", script, "python:3.11-slim-bookworm", "").returncode == 0
    wrong = run("sh", script, f"python:3.11-slim-bookworm@{digest}", "sha256:" + "b" * 64)
    assert wrong.returncode == 1 and "pinned to" in wrong.stderr
    assert run("sh", script, f"python:3.11-slim-bookworm@{digest}", "").returncode == 1


def test_install_ca_certs_without_certificates_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    done = run("sh", str(ROOT / "docker/install-ca-certs.sh"), str(tmp_path))
    assert done.returncode == 0 and "none" in done.stdout
    assert not (tmp_path / "README.md").exists()


def test_pin_base_image_rewrites_dockerfile_and_compose_consistently(tmp_path: Path) -> None:
    for name in ("Dockerfile", "Dockerfile.cpu", "compose.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    digest = "sha256:" + "c" * 64
    assert pin_base_image.main(["gpu", "--digest", digest, "--root", str(tmp_path)]) == 0
    defaults = arg_defaults(tmp_path / "Dockerfile")
    assert defaults["BASE_IMAGE"] == "nvcr.io/nvidia/tensorrt:25.11-py3@" + digest
    assert defaults["BASE_IMAGE_DIGEST"] == digest
    args = yaml.safe_load((tmp_path / "compose.yaml").read_text())["services"]["bench"]["build"]["args"]
    assert compose_default(args["BASE_IMAGE"]) == defaults["BASE_IMAGE"]
    assert compose_default(args["BASE_IMAGE_DIGEST"]) == digest
    assert arg_defaults(tmp_path / "Dockerfile.cpu") == arg_defaults(ROOT / "Dockerfile.cpu"), "other flavour untouched"
    check = run("sh", str(ROOT / "docker/check-base.sh"), defaults["BASE_IMAGE"], defaults["BASE_IMAGE_DIGEST"])
    assert check.returncode == 0, check.stderr
    with pytest.raises(SystemExit):
        pin_base_image.main(["cpu", "--digest", "sha256:short", "--root", str(tmp_path)])
    assert pin_base_image.repository_of("nvcr.io/nvidia/tensorrt:25.10-py3") == "nvcr.io/nvidia/tensorrt"
    assert pin_base_image.repository_of("localhost:5000/a/b:1@sha256:" + "d" * 64) == "localhost:5000/a/b"
    assert pin_base_image.repository_of("python:3.11-slim") == "python"


def test_build_image_script_help() -> None:
    done = run("bash", str(SCRIPTS / "build-image.sh"), "--help")
    assert done.returncode == 0 and "bench-cpu" in done.stdout
    assert run("bash", str(SCRIPTS / "build-image.sh"), "arm64").returncode == 2


# ---------------------------------------------------------------- fetch-coco


COCO = {
    "val2017.zip": (815585330, "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
    "annotations_trainval2017.zip": (252907541, "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268"),
}


def test_fetch_coco_dry_run_names_urls_sizes_and_checksums(tmp_path: Path) -> None:
    done = run("bash", str(SCRIPTS / "fetch-coco.sh"), "--dry-run", "--dest", str(tmp_path / "coco"))
    assert done.returncode == 0, done.stderr
    for name, (size, sha) in COCO.items():
        assert f"{name} ({size} bytes, sha256 {sha})" in done.stdout
    assert "http://images.cocodataset.org/zips/val2017.zip" in done.stdout
    assert not (tmp_path / "coco").exists(), "a dry run creates nothing"
    docs = (ROOT / "docs/container.md").read_text(encoding="utf-8")
    assert all(sha in docs for _, sha in COCO.values()), "docs/container.md must list the same checksums"


def test_fetch_coco_rejects_bad_arguments(tmp_path: Path) -> None:
    assert run("bash", str(SCRIPTS / "fetch-coco.sh"), "--bogus").returncode == 2
    assert run("bash", str(SCRIPTS / "fetch-coco.sh"), "--dest").returncode == 2
    missing = run("bash", str(SCRIPTS / "fetch-coco.sh"), "--from", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "not a folder" in missing.stderr


def test_fetch_coco_stops_on_a_checksum_mismatch_before_extracting(tmp_path: Path) -> None:
    # The script checks for its tools before anything else; the images carry no unzip (it is a
    # host script: COCO is fetched on the host, the container reads it read-only).
    for needed in ("unzip", "sha256sum", "stat"):
        if shutil.which(needed) is None:
            pytest.skip(f"scripts/fetch-coco.sh needs {needed}, which is not installed here")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for name in COCO:
        (downloads / name).write_bytes(b"not the real archive")
    dest = tmp_path / "coco"
    done = run("bash", str(SCRIPTS / "fetch-coco.sh"), "--from", str(downloads), "--dest", str(dest))
    assert done.returncode == 1
    assert "val2017.zip: checksum mismatch" in done.stderr
    assert (dest / "val2017.zip.bad").exists() and not (dest / "val2017.zip").exists()
    assert not (dest / "val2017").exists(), "nothing is extracted from an archive that failed its check"


# ---------------------------------------------------------------- fetch-weights


def test_fetch_weights_registry_is_rfdetrs() -> None:
    from rfdetr.assets.model_weights import ModelWeights

    known = fetch_weights.checkpoints()
    assert known["nano"].filename == "rf-detr-nano.pth"
    for item in known.values():
        asset = ModelWeights.from_filename(item.filename)
        assert asset is not None and (item.url, item.md5) == (asset.url, asset.md5_hash)


def test_fetch_weights_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch_weights.main(["--dry-run", "--dest", str(tmp_path), "nano"]) == 0
    assert f"-> {tmp_path / 'rf-detr-nano.pth'}" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
    for bad in ([], ["no-such-variant"]):
        with pytest.raises(SystemExit) as exit_info:
            fetch_weights.main(bad)
        assert exit_info.value.code == 2


class _OneFile(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_fetch_weights_downloads_verifies_and_records_sha256(tmp_path: Path) -> None:
    body = os.urandom(4096)
    _OneFile.body = body
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneFile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ckpt.pth"
        good = fetch_weights.Checkpoint("nano", "rf-detr-nano.pth", url, hashlib.md5(body).hexdigest())
        target = fetch_weights.fetch(good, tmp_path)
        assert target.read_bytes() == body
        sums = (tmp_path / "SHA256SUMS").read_text()
        assert sums == f"{hashlib.sha256(body).hexdigest()}  rf-detr-nano.pth\n"
        bad = fetch_weights.Checkpoint("small", "rf-detr-small.pth", url, "0" * 32)
        with pytest.raises(ValueError, match="MD5 mismatch"):
            fetch_weights.fetch(bad, tmp_path)
        assert not (tmp_path / "rf-detr-small.pth").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- release-upload


def fake_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "reports" / "quickstart" / "20260101T000000Z-abc123"
    (run_dir / "cells").mkdir(parents=True)
    for name in ("results.json", "report.html", "summary.md", "cells/a.json"):
        (run_dir / name).write_text(name)
    return run_dir


def test_release_upload_bundles_the_run_and_prints_the_gh_command(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path)
    out = tmp_path / "out"
    done = run("bash", str(SCRIPTS / "release-upload.sh"), str(run_dir), "v0.1.0", "--repo", "o/r",
               "--clobber", "--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stderr
    name = "quickstart-20260101T000000Z-abc123"
    assert done.stdout.startswith(f"would run: gh release upload v0.1.0 {out}/{name}-report.html")
    assert "--repo o/r --clobber" in done.stdout
    listing = run("tar", "tzf", str(out / f"{name}.tar.gz")).stdout.split()
    assert "20260101T000000Z-abc123/cells/a.json" in listing
    assert run("sha256sum", "-c", f"{name}.sha256", cwd=out).returncode == 0


def test_release_upload_rejects_incomplete_runs_and_bad_arguments(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path)
    assert run("bash", str(SCRIPTS / "release-upload.sh"), str(run_dir)).returncode == 2
    assert run("bash", str(SCRIPTS / "release-upload.sh"), str(run_dir), "v1", "--bogus").returncode == 2
    (run_dir / "report.html").unlink()
    done = run("bash", str(SCRIPTS / "release-upload.sh"), str(run_dir), "v1", "--dry-run")
    assert done.returncode == 1 and "report.html is missing" in done.stderr
