"""The compose stack, built and run for real: scripts/compose-smoke.sh on a private Docker engine.

The engine is Debian's dockerd with its own data root, exec root, socket, pid file and config
under a temporary folder, and no bridge, iptables or NAT: the only networks are `host` and
`none`, so every build and container uses the host's network and is reached on 127.0.0.1. No
image can be pulled here, so the base image is made with debootstrap (Debian bookworm with its
Python 3.11), and the image's Python packages come from this host's pip (its configuration,
indexes, local torch wheel and CA bundle), served to the build on 127.0.0.1. Compose v2 is
Debian trixie's docker-compose package, fetched with `apt-get download` through a temporary
sources list (the system's sources are left alone) and unpacked as a CLI plugin.

The smoke script then builds the cpu image, writes a tiny random DINOv2 and 40 images in the
image, indexes them through the `indexer` service, starts the `search-api` service bound to
127.0.0.1 on a port other than 8000 (so its healthcheck must find that port), and checks
/health, /ready, the page and a search before `down -v`. Afterwards this test checks that
nothing is left in the engine and that the image has no torchvision; the engine is stopped by
its pid and its folder removed.

Left out, since they cannot run here: the Qdrant server (its image cannot be pulled; the
host-network overlay leaves its service out and the apps use the embedded store), GPUs (the cpu
variant is built, not the cuda one), and the cluster, lb and ray overlays (Qdrant and nginx
images, GPUs, several hosts).

Needs root, apt-get, dockerd (docker.io), debootstrap and the network to the Debian mirror and
the package indexes; .ci/run installs docker.io and debootstrap. Skipped elsewhere with the
reason, unless DINOSEEK_REQUIRE_DOCKER=1 (CI), where a missing requirement fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scripts" / "compose-smoke.sh"
BASE_IMAGE = "dinoseek-ci/python:bookworm"
IMAGE = "dinoseek:cpu"
# The release after bookworm, whose docker-compose package is Compose v2.
COMPOSE_SUITE = "trixie"
DEBIAN_SUITES = {"bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The engine's layers (about 3 GB: the base image, the build's cache, the image), the bookworm
# tree and the smoke script's wheels go on a tmpfs of this size where the machine has twice
# that memory free: on the disk, deleting them afterwards takes minutes.
TMPFS_BYTES = 8 * 2**30
# Hang guards only: the engine answers within seconds, and stops within seconds.
ENGINE_START_S = 120
ENGINE_STOP_S = 60

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(1800)]


def missing_requirement() -> str | None:
    """Why the private engine cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (a private dockerd and debootstrap)"
    for tool, package in (
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("dockerd", "docker.io"),
        ("docker", "docker.io"),
        ("debootstrap", "debootstrap"),
        ("curl", "curl"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package}; .ci/run does)"
    if sys.version_info[:2] != (3, 11):
        return "the image's packages come from this Python's pip, and bookworm's Python is 3.11"
    return None


def run(command: list[str], log: Path, cwd: Path | None = None) -> None:
    """Run ``command``, its output appended to ``log``; fail with the log's end."""
    with log.open("ab") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{command[0]} exited {done.returncode}:\n{tail}")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (one-line or deb822 sources)."""
    sources = [Path("/etc/apt/sources.list")]
    for pattern in ("*.list", "*.sources"):
        sources += sorted(Path("/etc/apt/sources.list.d").glob(pattern))
    for source in sources:
        if not source.is_file():
            continue
        uris: list[str] = []
        for line in source.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "deb":  # deb [options] URI suite components
                rest = [w for w in words[1:] if not (w.startswith("[") or w.endswith("]"))]
                if len(rest) >= 2 and rest[1] in DEBIAN_SUITES:
                    return rest[0]
            elif words[0] == "URIs:":
                uris = words[1:]
            elif words[0] == "Suites:" and uris and DEBIAN_SUITES & set(words[1:]):
                return uris[0]
    return DEFAULT_MIRROR


@dataclass(frozen=True)
class Engine:
    """A private dockerd: reach it with ``env``."""

    root: Path
    pid: int
    storage_driver: str
    env: Mapping[str, str]

    def docker(self, *arguments: str) -> str:
        done = subprocess.run(
            ["docker", *arguments], env=dict(self.env), capture_output=True, text=True, check=True
        )
        return done.stdout


def start_dockerd(root: Path, storage_driver: str) -> subprocess.Popen[bytes]:
    """dockerd with everything of its own under ``root``: no bridge, no iptables, no NAT."""
    (root / "daemon.json").write_text("{}\n")
    log = (root / f"dockerd-{storage_driver}.log").open("wb")
    return subprocess.Popen(
        [
            "dockerd",
            f"--config-file={root / 'daemon.json'}",
            f"--data-root={root / 'scratch' / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--host=unix://{root / 'docker.sock'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--storage-driver={storage_driver}",
            "--containerd-namespace=dinoseek-ci",
            "--containerd-plugins-namespace=dinoseek-ci-plugins",
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_engine(process: subprocess.Popen[bytes], env: Mapping[str, str]) -> bool:
    """True once the engine answers; False if dockerd exited first."""
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        info = subprocess.run(["docker", "info"], env=dict(env), capture_output=True, check=False)
        if info.returncode == 0:
            return True
        time.sleep(0.5)
    raise AssertionError(f"the private dockerd did not answer within {ENGINE_START_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, then SIGKILL if it does not stop."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=ENGINE_STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=ENGINE_STOP_S)


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (dockerd's containerd and shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(root).encode() in cmdline:
                found.append(int(entry.name))
    return found


def mounts_under(root: Path) -> list[str]:
    """Mount points inside ``root``, deepest first."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def memory_available() -> int:
    """MemAvailable of /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def make_scratch(root: Path) -> str:
    """``root/scratch``, on a tmpfs where there is the memory for it; where it is."""
    scratch = root / "scratch"
    scratch.mkdir()
    if memory_available() < 2 * TMPFS_BYTES:
        return "disk"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(scratch)],
        capture_output=True,
        check=False,
    )
    return "tmpfs" if mounted.returncode == 0 else "disk"


def clean_up(root: Path) -> list[str]:
    """Kill what is left of the engine by pid, unmount what it left mounted (dockerd keeps its
    network namespace mounted under the exec root), remove ``root``; what could not be."""
    left = []
    for pid in processes_under(root):
        left.append(f"process {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in mounts_under(root):
        subprocess.run(["umount", point], check=False)
    left += [f"mount {point}" for point in mounts_under(root)]
    if not left:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            left.append(f"folder {root}")
    return left


def fetch_compose_plugin(root: Path, mirror: str, log: Path) -> Path:
    """Compose v2 from Debian's next release, as a CLI plugin in a DOCKER_CONFIG of its own;
    apt reads a temporary sources list and keeps its lists and cache under ``root``."""
    apt = root / "apt"
    for folder in ("lists/partial", "cache/archives/partial"):
        (apt / folder).mkdir(parents=True)
    (apt / "sources.list").write_text(f"deb {mirror} {COMPOSE_SUITE} main\n")
    options = [
        f"-oDir::Etc::sourcelist={apt / 'sources.list'}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::Cache={apt / 'cache'}",
        "-oAPT::Get::List-Cleanup=0",
        "-oAPT::Sandbox::User=root",
    ]
    run(["apt-get", *options, "-q", "update"], log)
    run(["apt-get", *options, "-q", "download", "docker-compose"], log, cwd=apt)
    [package] = apt.glob("docker-compose_*.deb")
    run(["dpkg-deb", "-x", str(package), str(apt / "unpacked")], log)
    config = root / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    shutil.copy2(
        apt / "unpacked/usr/libexec/docker/cli-plugins/docker-compose",
        config / "cli-plugins" / "docker-compose",
    )
    shutil.rmtree(apt)
    return config


def make_base_image(engine: Engine, mirror: str, log: Path) -> None:
    """Debian bookworm (minbase) with Python and its venv module, imported as BASE_IMAGE."""
    rootfs = engine.root / "scratch" / "rootfs"
    run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python-is-python3,ca-certificates",
            "bookworm",
            str(rootfs),
            mirror,
        ],
        log,
    )
    tar = subprocess.Popen(
        [
            "tar", "-C", str(rootfs),
            "--exclude=./var/cache/apt/archives/*.deb", "--exclude=./var/lib/apt/lists/*",
            "-c", ".",
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert tar.stdout is not None
    with log.open("ab") as out:
        imported = subprocess.run(
            ["docker", "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(engine.env),
            check=False,
        )
    tar.stdout.close()
    assert tar.wait() == 0, "tar of the bookworm tree failed"
    assert imported.returncode == 0, log.read_text(errors="replace")[-2000:]
    shutil.rmtree(rootfs)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A private dockerd with Compose v2 and the bookworm base image; stopped by its pid and
    removed afterwards, and nothing of it may be left."""
    reason = missing_requirement()
    if reason is not None:
        if os.environ.get("DINOSEEK_REQUIRE_DOCKER") == "1":
            pytest.fail(f"DINOSEEK_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)
    # Short: a unix socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="dinoseek-docker-", dir="/tmp"))
    process: subprocess.Popen[bytes] | None = None
    try:
        mirror = debian_mirror()
        log = root / "setup.log"
        began = time.monotonic()
        print(f"scratch space on {make_scratch(root)}")
        config = fetch_compose_plugin(root, mirror, log)
        print(f"compose plugin from {mirror} {COMPOSE_SUITE}: {time.monotonic() - began:.0f} s")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DOCKER_", "COMPOSE_"))
        }
        env |= {"DOCKER_HOST": f"unix://{root / 'docker.sock'}", "DOCKER_CONFIG": str(config)}
        # overlay2 unless this file system cannot hold it; vfs copies every layer (slow).
        for driver in ("overlay2", "vfs"):
            process = start_dockerd(root, driver)
            if wait_for_engine(process, env):
                break
            failed = (root / f"dockerd-{driver}.log").read_text(errors="replace")
            print(f"dockerd did not start with {driver}:\n{failed[-2000:]}")
        else:
            raise AssertionError("the private dockerd started with neither overlay2 nor vfs")
        started = Engine(root=root, pid=process.pid, storage_driver=driver, env=env)
        print(f"dockerd (pid {process.pid}, {driver}) answers: {time.monotonic() - began:.0f} s")
        make_base_image(started, mirror, log)
        print(f"{BASE_IMAGE} made with debootstrap: {time.monotonic() - began:.0f} s")
        yield started
    finally:
        began = time.monotonic()
        if process is not None:
            stop(process)
        print(f"dockerd stopped: {time.monotonic() - began:.0f} s")
        left = clean_up(root)
        print(f"its folder removed: {time.monotonic() - began:.0f} s")
    assert not left, f"left behind by the private dockerd: {left}"


def free_port() -> int:
    """A loopback port nobody listens on (now), other than the image's default 8000."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != 8000:
            return port


def test_compose_stack_builds_indexes_and_answers_on_loopback(engine: Engine) -> None:
    port = free_port()
    env = {
        **engine.env,
        "SMOKE_PYTHON_IMAGE": BASE_IMAGE,
        "SMOKE_PYTHON": sys.executable,
        "SMOKE_PORT": str(port),
        "TMPDIR": str(engine.root / "scratch"),
        "SMOKE_WHEELS_PORT": str(free_port()),
        # How long `up --wait` may take: a hang guard, not a verdict on speed.
        "SMOKE_WAIT_S": os.environ.get("SMOKE_WAIT_S", "600"),
    }
    env.pop("DINOSEEK_API_KEY", None)
    log = engine.root / "smoke.log"
    began = time.monotonic()
    with log.open("wb") as out:
        smoke = subprocess.run(
            [str(SMOKE), "--cpu", "--host-network", "--tiny-model", "--wheels-from-host"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = log.read_text(errors="replace")
    print(f"storage driver: {engine.storage_driver}\n{output}")
    print(f"compose-smoke.sh: {time.monotonic() - began:.0f} s")
    assert smoke.returncode == 0, output[-6000:]
    assert "smoke test passed" in output
    assert f"listening on port {port}: ['0100007F']" in output
    assert '"ready":true' in output
    assert '"points":40' in output

    # Only the engine's own networks: nothing made a bridge. `down -v` left nothing running.
    assert set(engine.docker("network", "ls", "--format", "{{.Name}}").split()) == {"host", "none"}
    assert engine.docker("ps", "--all", "--quiet") == ""
    assert engine.docker("volume", "ls", "--quiet") == ""

    # The cpu image: a CPU torch, and no torchvision (PyPI's is built for the CUDA torch).
    probe = (
        "import importlib.util, torch; "
        "print(torch.__version__, torch.version.cuda, importlib.util.find_spec('torchvision'))"
    )
    answer = engine.docker("run", "--rm", "--network", "none", IMAGE, "python", "-c", probe)
    version, cuda, torchvision = answer.split()
    assert version.startswith("2.13.0"), answer
    assert (cuda, torchvision) == ("None", "None"), answer
