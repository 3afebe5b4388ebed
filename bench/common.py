"""Shared helpers of the benchmarks in bench/: the machine, the data, the models, the tables.

The bench scripts run as plain scripts (``python bench/index.py``), so this module is imported
as ``common`` from the scripts' own folder. It imports neither torch nor transformers: the
measured work runs in fresh subprocesses, and the parent stays light so that it disturbs them
as little as possible.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
DEFAULT_OUT = BENCH_DIR / "out"
DEFAULT_CACHE = DEFAULT_OUT / "cache"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
RANDOM_PREFIX = "random:"

# Runs a command (argv[1:]) and prints its peak RSS (KiB) as the last line of stderr. A
# benchmark measures a command's memory through this small process because Linux starts a
# child's peak RSS at its parent's RSS when it forks (and keeps it across exec), and a
# benchmark's own process is large.
PEAK_RSS_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)

# Run in a fresh interpreter when a GPU may be there: what torch sees (threads, CUDA) without
# this process importing torch or creating a CUDA context.
_WHAT_TORCH_SEES = r"""
import json
info = {}
try:
    import torch
    info["torch_threads"] = torch.get_num_threads()
    info["torch_cuda_build"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["cuda_device"] = props.name
        info["cuda_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_device_count"] = torch.cuda.device_count()
except Exception as exc:
    info["torch_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(info))
"""

# Distribution names whose versions are recorded with every result.
VERSIONS = {
    "torch": "torch",
    "transformers": "transformers",
    "torchvision": "torchvision",
    "PIL": "pillow",
    "numpy": "numpy",
    "qdrant_edge": "qdrant-edge-py",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "httpx": "httpx",
}


# -- the machine -----------------------------------------------------------------------------


@contextmanager
def open_embedder(model: str, device: str, dtype: str) -> Iterator[Any]:
    """The project's embedder, loaded through the runtime as every command loads it (no
    store), and closed when the block ends."""
    from dinoseek.runtime import Runtime
    from dinoseek.settings import Settings

    with tempfile.TemporaryDirectory() as empty:
        settings = Settings(model=model, device=device, dtype=dtype, data_dir=Path(empty))
        with Runtime.open(settings, collection="none") as runtime:
            yield runtime.require_embedder()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity and container CPU sets respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages: other work on a shared machine skews the times."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def nvidia_smi(query: str) -> list[str] | None:
    """Rows of ``nvidia-smi --query-gpu=QUERY`` (None without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None when absent), without importing it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def what_torch_sees() -> dict[str, Any]:
    """What torch sees in a fresh interpreter: default threads, CUDA and the GPU."""
    child = subprocess.run(
        [sys.executable, "-c", _WHAT_TORCH_SEES],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
        check=False,
    )
    try:
        found: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {"torch_error": child.stderr.strip()[-500:] or "the torch check printed nothing"}
    return found


def machine_info(device: str = "auto") -> dict[str, Any]:
    """Platform, CPU, cores, memory, load, library versions and the GPU, as JSON-able data.

    torch is asked in a subprocess (a few seconds) only where a GPU may be: ``device`` is
    cuda, or it is auto and nvidia-smi exists. Elsewhere there is no CUDA to find.
    """
    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "load_average": load_average(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **{key: package_version(name) for key, name in VERSIONS.items()},
    }
    gpu = nvidia_smi("name,memory.total,driver_version")
    if gpu:
        info["nvidia_smi"] = gpu
    if device == "cuda" or (device == "auto" and shutil.which("nvidia-smi")):
        info.update(what_torch_sees())
    else:
        info["cuda_available"] = False
    return info


def describe_machine(info: Mapping[str, Any]) -> str:
    """The machine in a few lines, for the top of a benchmark's output."""
    load = info.get("load_average")
    lines = [
        f"date: {info.get('date_utc')}",
        f"machine: {info.get('platform')}; {info.get('cpu')}; {info.get('usable_cores')} usable "
        f"cores (of {info.get('cpu_count')}); {info.get('memory_gib')} GiB memory"
        + (f"; load average {load[0]} / {load[1]} / {load[2]}" if load else ""),
        f"software: python {info.get('python')}, torch {info.get('torch')}, transformers "
        f"{info.get('transformers')}, torchvision {info.get('torchvision') or 'absent'}, "
        f"pillow {info.get('PIL')}, numpy {info.get('numpy')}, qdrant-edge-py "
        f"{info.get('qdrant_edge')}",
    ]
    if info.get("omp_num_threads"):
        lines.append(f"OMP_NUM_THREADS={info['omp_num_threads']} (set in the environment)")
    if info.get("cuda_available"):
        lines.append(
            f"gpu: {info.get('cuda_device')} ({info.get('cuda_memory_gib')} GiB), CUDA "
            f"{info.get('torch_cuda_build')}, {info.get('cuda_device_count')} device(s)"
            + (f"; nvidia-smi: {'; '.join(info['nvidia_smi'])}" if info.get("nvidia_smi") else "")
        )
    else:
        lines.append("gpu: none visible to torch")
    if info.get("torch_error"):
        lines.append(f"torch failed to import: {info['torch_error']}")
    return "\n".join(lines)


def resolve_device(name: str, info: Mapping[str, Any]) -> str:
    """``auto`` becomes cuda when torch saw a GPU, else cpu."""
    if name == "auto":
        return "cuda" if info.get("cuda_available") else "cpu"
    if name == "cuda" and not info.get("cuda_available"):
        raise SystemExit("--device cuda was asked for but torch sees no CUDA GPU here")
    return name


# -- processes -------------------------------------------------------------------------------


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for subprocesses: this one, with the repository on PYTHONPATH (so
    ``python -m indexer`` works from a source tree) and no hub access for local models."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _busy_seconds() -> float | None:
    """CPU time spent by the whole machine (all processes, and time stolen by the hypervisor)
    since boot, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="utf-8") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a running process (all its threads, and its waited-for children)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3; utime, stime, cutime, cstime are 14 to 17.
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _own_seconds(pids: Sequence[int] = ()) -> float:
    """CPU time of this process, the children it has waited for, and the running ``pids``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = sum(process_cpu_seconds(pid) for pid in pids)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + running


class CpuMeter:
    """How busy the rest of the machine was while something of ours ran.

    ``other_cores`` is the CPU time used by processes that are not this one or its (waited
    for) children, plus time stolen by the hypervisor, divided by the wall time: 0.0 on a quiet
    machine, 1.0 when another process kept a whole core busy. On a shared machine it says
    which numbers to distrust.
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        """``pids``: running processes of ours (a server) whose CPU time is not foreign."""
        self._pids = tuple(pids)
        self._busy = _busy_seconds()
        self._own = _own_seconds(self._pids)
        self._started = time.perf_counter()

    def other_cores(self) -> float | None:
        """Cores' worth of foreign CPU use since this meter started."""
        busy = _busy_seconds()
        wall = time.perf_counter() - self._started
        if busy is None or self._busy is None or wall <= 0:
            return None
        foreign = (busy - self._busy) - (_own_seconds(self._pids) - self._own)
        return round(max(0.0, foreign) / wall, 2)


@dataclass
class ProcessResult:
    """A finished subprocess: its exit code, output, wall time, GPU memory peak, and how busy
    the rest of the machine was meanwhile (``CpuMeter``)."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    gpu_peak_mib: float | None = None
    other_cores: float | None = None

    def last_json(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
        raise RuntimeError(
            f"no JSON result on stdout (exit {self.returncode}); stderr ends with:\n"
            f"{self.stderr.strip()[-2000:]}"
        )


class GpuMemoryPoller:
    """Samples device-wide used memory with nvidia-smi while a subprocess runs.

    A subprocess cannot report ``torch.cuda.max_memory_allocated`` from outside; this gives the
    peak of the whole device (CUDA context included) above what was used before it started.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.enabled = shutil.which("nvidia-smi") is not None
        self.before: float | None = None
        self.peak: float | None = None

    @staticmethod
    def used_mib() -> float | None:
        """Used memory of device 0, in MiB."""
        rows = nvidia_smi("memory.used")
        try:
            return float(rows[0]) if rows else None
        except ValueError:
            return None

    def start(self) -> None:
        """Record the memory in use before the subprocess starts."""
        if self.enabled:
            self.before = self.used_mib()

    def sample(self) -> None:
        """Take one sample."""
        if not self.enabled:
            return
        used = self.used_mib()
        if used is not None and (self.peak is None or used > self.peak):
            self.peak = used

    def result(self) -> float | None:
        """The peak above the starting point, in MiB."""
        if self.peak is None or self.before is None:
            return None
        return round(max(0.0, self.peak - self.before), 1)


def run_process(
    command: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    poll_gpu: bool = False,
) -> ProcessResult:
    """Run ``command`` to the end and time it from spawn to exit (output to temp files, so a
    chatty child never blocks on a full pipe)."""
    poller = GpuMemoryPoller() if poll_gpu else None
    if poller is not None:
        poller.start()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        meter = CpuMeter()
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else child_env(),
            cwd=cwd,
        )
        deadline = started + timeout_s
        while process.poll() is None:
            if time.perf_counter() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"{' '.join(command)} ran past {timeout_s:.0f} s")
            if poller is not None:
                poller.sample()
            time.sleep(0.05 if poller is None else poller.interval_s)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return ProcessResult(
            returncode=process.returncode,
            stdout=out.read(),
            stderr=err.read(),
            wall_s=wall,
            gpu_peak_mib=poller.result() if poller is not None else None,
            other_cores=meter.other_cores(),
        )


def check_process(result: ProcessResult, what: str) -> ProcessResult:
    """Raise with the end of stderr when ``result`` failed."""
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed with exit code {result.returncode}; stderr ends with:\n"
            f"{result.stderr.strip()[-3000:]}"
        )
    return result


# -- data ------------------------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (by extension; hidden entries skipped), sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(directory) / name)
    return found


def _write_part(directory: str, count: int, seed: int) -> int:
    from dinoseek.synthetic import write_image_folder

    return len(write_image_folder(Path(directory), count=count, seed=seed))


def synthetic_images(count: int, cache_dir: Path, *, jobs: int | None = None) -> Path:
    """A folder of ``count`` synthetic 500x375 JPEGs (``dinoseek.synthetic``), made once.

    The images are drawn in parallel parts (one seed per part, so no two are identical) and
    kept in ``cache_dir`` for later runs.
    """
    folder = cache_dir / f"images-{count}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    part_size = 100
    parts = [
        (k, min(part_size, count - k * part_size)) for k in range(math.ceil(count / part_size))
    ]
    jobs = max(1, min(jobs or usable_cores(), len(parts)))
    started = time.perf_counter()
    print(f"writing {count} synthetic images to {folder} ({jobs} processes)", file=sys.stderr)
    if jobs == 1:
        for k, size in parts:
            _write_part(str(folder / f"part{k:03d}"), size, k)
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            list(
                pool.map(
                    _write_part,
                    [str(folder / f"part{k:03d}") for k, _ in parts],
                    [size for _, size in parts],
                    [k for k, _ in parts],
                )
            )
    marker.write_text(f"{count}\n", encoding="utf-8")
    print(f"  done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return folder


def prepare_data(data: Path | None, count: int, cache_dir: Path) -> tuple[Path, list[Path]]:
    """The folder to benchmark on (``data``, or synthetic images) and its image files.

    With ``data`` given, ``count`` is ignored: the whole folder is used.
    """
    if data is not None:
        folder = data.resolve()
        files = list_images(folder)
        if not files:
            raise SystemExit(f"{folder}: no image files found")
        return folder, files
    folder = synthetic_images(count, cache_dir)
    return folder, list_images(folder)


# -- models ----------------------------------------------------------------------------------


def resolve_model(spec: str, cache_dir: Path) -> str:
    """A model for ``--model``: ``random:SIZE`` (a random-weight DINOv2 of a real size, written
    once into ``cache_dir`` by ``dinoseek.synthetic``), a local directory, or a hub id."""
    if spec.startswith(RANDOM_PREFIX):
        size = spec[len(RANDOM_PREFIX) :]
        directory = cache_dir / "models" / f"random-{size}"
        if not (directory / "config.json").exists() or not any(directory.glob("*.safetensors")):
            print(f"writing a random-weight DINOv2-{size} to {directory}", file=sys.stderr)
            partial = directory.with_name(directory.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            done = run_process(
                [sys.executable, "-m", "dinoseek.synthetic", "model", str(partial), "--size", size],
                timeout_s=1800,
            )
            check_process(done, f"writing the random model {spec}")
            shutil.rmtree(directory, ignore_errors=True)
            partial.rename(directory)
        return str(directory.resolve())
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    return spec  # a hub id


def split_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def split_ints(text: str) -> list[int]:
    """``"8,16"`` -> ``[8, 16]``."""
    return [int(part) for part in split_list(text)]


# -- output ----------------------------------------------------------------------------------

Column = tuple[str, str, Callable[[Any], str]]


def fmt_float(digits: int) -> Callable[[Any], str]:
    """A formatter with ``digits`` decimals that shows None as a dash."""

    def format_value(value: Any) -> str:
        if value is None:
            return "-"
        return f"{float(value):,.{digits}f}"

    return format_value


def fmt_ratio(value: Any) -> str:
    """``2.5`` -> ``2.50x``."""
    return "-" if value is None else f"{float(value):.2f}x"


def fmt_percent(value: Any) -> str:
    """``0.93`` -> ``93%``."""
    return "-" if value is None else f"{100 * float(value):.0f}%"


def fmt_text(value: Any) -> str:
    """Anything as text, None as a dash."""
    return "-" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table (readable in a terminal, pasteable into RESULTS.md)."""
    cells = [[formatter(row.get(key)) for key, _, formatter in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    numeric = [
        all(c[i] == "-" or c[i][:1].isdigit() or c[i][:1] == "-" for c in cells) and bool(cells)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if numeric[i] else "-" * (w + 2) for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(c) for c in cells)])


def write_results(out_dir: Path | None, name: str, document: Mapping[str, Any]) -> Path | None:
    """Write ``document`` as ``out_dir/name.json``; return the path (None without out_dir)."""
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def command_line() -> str:
    """The command that is running, as typed (for the record)."""
    script = os.path.relpath(sys.argv[0], os.getcwd()) if sys.argv else "?"
    return " ".join(["python", script, *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/common.py prepare``: make the models and images ahead of a run."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python bench/common.py", description="Prepare benchmark inputs ahead of a run."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="write random models and synthetic images")
    prepare.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    prepare.add_argument("--models", default="", help="comma-separated model specs")
    prepare.add_argument("--images", type=int, default=0, help="synthetic images (0: none)")
    args = parser.parse_args(argv)
    cache: Path = args.cache.resolve()
    for spec in split_list(args.models):
        print(f"{spec} -> {resolve_model(spec, cache)}")
    if args.images:
        folder = synthetic_images(args.images, cache)
        print(f"{len(list_images(folder))} images -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
