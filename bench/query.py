"""Benchmark: ``dinoseek serve`` against a plain one-request-at-a-time server, in one run.

Both answer ``POST /search`` (multipart field ``image``) with the 10 nearest neighbours from
the same collection:

- **dinoseek**: ``python -m search_api`` (the ``dinoseek serve`` command) on a data
  directory indexed first by ``dinoseek index`` with the same model;
- **baseline** (``bench/baseline_server.py``): the server a user writes around the model
  card's snippet: a FastAPI app served by uvicorn whose ``async`` handler does everything
  inline, so requests are answered one at a time: ``Image.open(...).convert("RGB")``,
  ``AutoImageProcessor``, an fp32 ``AutoModel`` forward under ``torch.no_grad()``,
  ``last_hidden_state[:, 0]`` normalised, and a query of the Qdrant Edge shard
  (``qdrant_edge`` directly) of its own copy of the same data directory (an embedded shard
  opens in one process only).

One server runs at a time. An async load generator (httpx) in this process sends the images of
the folder at each concurrency (1, 8, 64 by default) until ``--requests`` are answered or
``--duration`` seconds pass, after a short warm-up. It reports queries/s, p50/p95/p99 latency
of the successful requests, and errors by kind (503 overload apart). The load generator shares
the machine with the server; on a small CPU it takes some of its time, for both servers alike.

Run ``python bench/query.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

COLUMNS: list[common.Column] = [
    ("server", "server", common.fmt_text),
    ("model", "model", common.fmt_text),
    ("concurrency", "concurrency", common.fmt_text),
    ("requests", "requests", common.fmt_text),
    ("ok", "ok", common.fmt_text),
    ("errors", "errors", common.fmt_text),
    ("seconds", "seconds", common.fmt_float(1)),
    ("qps", "queries/s", common.fmt_float(1)),
    ("p50_ms", "p50 ms", common.fmt_float(1)),
    ("p95_ms", "p95 ms", common.fmt_float(1)),
    ("p99_ms", "p99 ms", common.fmt_float(1)),
    ("x_qps", "queries/s vs baseline", common.fmt_ratio),
    ("x_p50", "p50 / baseline p50", common.fmt_ratio),
    ("other_cores", "other CPU", common.fmt_float(2)),
]


# -- the load generator -----------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one load run saw."""

    concurrency: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    stage_ms: dict[str, float] = field(default_factory=dict)  # sums of the server's timings_ms
    timed: int = 0  # answers that carried timings_ms

    def stage_means(self) -> dict[str, float]:
        """Mean server-side milliseconds per stage (dinoseek reports ``timings_ms``)."""
        if not self.timed:
            return {}
        return {stage: round(total / self.timed, 2) for stage, total in self.stage_ms.items()}

    @property
    def requests(self) -> int:
        """Requests sent and finished (any outcome)."""
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        """2xx answers."""
        return len(self.latencies_s)

    def percentile_ms(self, q: float) -> float | None:
        """Latency percentile of the successful requests (nearest rank), in ms."""
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return round(1000 * ordered[rank], 2)

    def errors(self) -> dict[str, int]:
        """Non-2xx outcomes by kind: HTTP status codes, ``timeout``, or exception names."""
        return {k: v for k, v in sorted(self.outcomes.items()) if not k.startswith("2")}


async def drive(
    url: str,
    payloads: list[tuple[str, bytes]],
    *,
    concurrency: int,
    requests: int,
    duration_s: float,
    timeout_s: float,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight until ``requests`` are sent or time is up."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = LoadResult(concurrency=concurrency, seconds=0.0)
    counter = itertools.count()
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        started = time.perf_counter()
        deadline = started + duration_s

        async def user() -> None:
            while time.perf_counter() < deadline:
                index = next(counter)
                if index >= requests:
                    return
                name, data = payloads[index % len(payloads)]
                sent = time.perf_counter()
                try:
                    response = await client.post(url, files={"image": (name, data, "image/jpeg")})
                    outcome = str(response.status_code)
                except httpx.TimeoutException:
                    outcome = "timeout"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if outcome.startswith("2"):
                    result.latencies_s.append(time.perf_counter() - sent)
                    _add_timings(result, response)
                result.outcomes[outcome] += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def _add_timings(result: LoadResult, response: Any) -> None:
    try:
        timings = response.json().get("timings_ms")
    except ValueError:
        return
    if isinstance(timings, dict):
        result.timed += 1
        for stage, value in timings.items():
            result.stage_ms[stage] = result.stage_ms.get(stage, 0.0) + float(value)


# -- servers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(
    command: list[str], *, ready_url: str, log_path: Path, timeout_s: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until ``ready_url`` answers 200, stop it (SIGINT) on exit."""
    import httpx

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=common.child_env(),
        )  # fmt: skip
        try:
            deadline = time.perf_counter() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with code {process.returncode} before it was "
                        f"ready; its log ends with:\n{_tail(log_path)}"
                    )
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the server was not ready in {timeout_s:.0f} s")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_bytes()[-size:].decode(errors="replace")


def measure_server(
    label: str,
    spec: str,
    command: list[str],
    *,
    port: int,
    ready_path: str,
    payloads: list[tuple[str, bytes]],
    args: argparse.Namespace,
    log_path: Path,
) -> list[dict[str, Any]]:
    """Start one server, warm it up, run every concurrency, stop it."""
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    print(f"[{spec}] {label}: starting ...", flush=True)
    with running_server(
        command, ready_url=base + ready_path, log_path=log_path, timeout_s=args.start_timeout
    ) as process:
        warm = asyncio.run(
            drive(
                base + "/search", payloads, concurrency=1, requests=args.warmup,
                duration_s=args.duration, timeout_s=args.request_timeout,
            )
        )  # fmt: skip
        if warm.ok < warm.requests:
            raise RuntimeError(f"{label}: warm-up requests failed: {warm.errors()}")
        for concurrency in args.concurrency:
            meter = common.CpuMeter([process.pid])
            result = asyncio.run(
                drive(
                    base + "/search", payloads, concurrency=concurrency,
                    requests=args.requests, duration_s=args.duration,
                    timeout_s=args.request_timeout,
                )
            )  # fmt: skip
            errors = result.errors()
            row = {
                "server": label,
                "model": spec,
                "concurrency": concurrency,
                "requests": result.requests,
                "ok": result.ok,
                "errors": _errors_text(errors),
                "errors_by_kind": errors,
                "overloaded_503": errors.get("503", 0),
                "seconds": round(result.seconds, 2),
                "qps": round(result.ok / result.seconds, 2) if result.seconds else None,
                "p50_ms": result.percentile_ms(50),
                "p95_ms": result.percentile_ms(95),
                "p99_ms": result.percentile_ms(99),
                "other_cores": meter.other_cores(),
                "server_ms": result.stage_means(),
            }
            rows.append(row)
            print(
                f"  concurrency {concurrency:>3}: {row['qps'] or 0:.1f} queries/s, p50 "
                f"{row['p50_ms'] or 0:.1f} ms, p99 {row['p99_ms'] or 0:.1f} ms, "
                f"errors {row['errors']}",
                flush=True,
            )
            if row["server_ms"]:
                stages = ", ".join(f"{k} {v:.1f}" for k, v in row["server_ms"].items())
                print(f"      server-side mean ms (timings_ms): {stages}", flush=True)
        if process.poll() is not None:
            raise RuntimeError(f"{label} died during the run; its log:\n{_tail(log_path)}")
    return rows


def _errors_text(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{count} x {kind}" for kind, count in errors.items())


def load_payloads(files: list[Path], limit: int = 64) -> list[tuple[str, bytes]]:
    """The query images: up to ``limit`` files of the folder, spread over it."""
    step = max(1, len(files) // limit)
    chosen = files[::step][:limit]
    return [(path.name, path.read_bytes()) for path in chosen]


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options."""
    parser = argparse.ArgumentParser(
        prog="python bench/query.py",
        description="dinoseek serve against a plain one-request-at-a-time server, in one run.",
    )
    parser.add_argument(
        "--model",
        help="random:SIZE, a local model directory or a hub id "
        "[random:small on cpu, random:base on cuda]; several, comma-separated, run one by one",
    )
    parser.add_argument("--images", type=int, help="synthetic images to index [200; 2000 on cuda]")
    parser.add_argument("--data", type=Path, help="a folder of images to index and query instead")
    parser.add_argument("--requests", type=int, help="requests per concurrency level [200]")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="at most this many seconds per level [60]"
    )
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated [1,8,64]")
    parser.add_argument("--warmup", type=int, default=4, help="sequential warm-up requests [4]")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dinoseek's dtype [auto]; the baseline is always float32",
    )
    parser.add_argument("--no-baseline", action="store_true", help="measure dinoseek only")
    parser.add_argument("--out", type=Path, help="write query.json (results + machine) here")
    parser.add_argument(
        "--cache", type=Path, default=common.DEFAULT_CACHE, help="generated models and images"
    )
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds [120]")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds [600]")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: random:tiny, 16 images, 24 requests at concurrency 1 and 8",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model = args.model or "random:tiny"
        args.images = args.images or 16
        args.requests = args.requests or 24
        args.warmup = min(args.warmup, 2)
        if args.concurrency == "1,8,64":
            args.concurrency = "1,8"
    args.requests = args.requests or 200
    args.concurrency = common.split_ints(args.concurrency)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the machine, the table and the ratios."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    info = common.machine_info(args.device)
    print(common.describe_machine(info))
    device = common.resolve_device(args.device, info)
    cuda = device == "cuda"
    cache: Path = args.cache.resolve()
    folder, files = common.prepare_data(args.data, args.images or (2000 if cuda else 200), cache)
    payloads = load_payloads(files)
    print(
        f"data: {len(files)} images in {folder}, {len(payloads)} of them sent as queries; "
        f"device {device}; {args.requests} requests or {args.duration:.0f} s per level, "
        f"concurrency {', '.join(map(str, args.concurrency))}"
    )
    print(f"command: {common.command_line()}\n")

    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="dinoseek-bench-query-"))
    try:
        for spec in common.split_list(args.model or ("random:base" if cuda else "random:small")):
            rows.extend(run_model(args, spec, cache, folder, payloads, device, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(common.format_table(rows, COLUMNS))
    print(
        "\nLatencies are of the successful (2xx) requests, measured by the client. errors: "
        "non-2xx answers by status (503: overloaded), timeouts and connection errors. other "
        "CPU: cores' worth of CPU used by other processes (and the hypervisor) during the "
        "level, near 0 on a quiet machine."
    )
    path = common.write_results(
        args.out,
        "query",
        {
            "benchmark": "query",
            "command": common.command_line(),
            "machine": info,
            "device": device,
            "data": {"folder": str(folder), "images": len(files), "queries": len(payloads)},
            "rows": rows,
        },
    )
    if path is not None:
        print(f"results written to {path}")
    return 0


def run_model(
    args: argparse.Namespace,
    spec: str,
    cache: Path,
    folder: Path,
    payloads: list[tuple[str, bytes]],
    device: str,
    work: Path,
) -> list[dict[str, Any]]:
    """Index with dinoseek, copy the store, measure both servers, compare."""
    model = common.resolve_model(spec, cache)
    data_dir = work / f"{spec.replace(':', '-')}-dinoseek"
    baseline_dir = work / f"{spec.replace(':', '-')}-baseline"
    extra = ["--dtype", args.dtype] if args.dtype != "auto" else []
    print(f"[{spec}] indexing {folder} with dinoseek ...", flush=True)
    indexed = common.run_process(
        [
            sys.executable, "-m", "indexer", str(folder), "--model", model,
            "--data-dir", str(data_dir), "--device", device, "--json", "--quiet", *extra,
        ],
        timeout_s=3600,
        env=common.child_env({"HF_HUB_OFFLINE": "1"} if os.path.isdir(model) else None),
    )  # fmt: skip
    summary = common.check_process(indexed, "dinoseek index").last_json()
    print(f"  {summary['points']} points in {indexed.wall_s:.1f} s", flush=True)
    shutil.copytree(data_dir, baseline_dir)

    port = common.free_port()
    dinoseek_rows = measure_server(
        "dinoseek serve",
        spec,
        [
            sys.executable, "-m", "search_api", "--host", "127.0.0.1", "--port", str(port),
            "--model", model, "--data-dir", str(data_dir), "--device", device, "--quiet", *extra,
        ],
        port=port,
        ready_path="/ready",
        payloads=payloads,
        args=args,
        log_path=work / "dinoseek-serve.log",
    )  # fmt: skip
    if args.no_baseline:
        return dinoseek_rows
    port = common.free_port()
    baseline_rows = measure_server(
        "baseline: plain server",
        spec,
        [
            sys.executable, str(common.BENCH_DIR / "baseline_server.py"), "--model", model,
            "--shard", str(baseline_dir / "images" / "shard"), "--device", device,
            "--port", str(port),
        ],
        port=port,
        ready_path="/health",
        payloads=payloads,
        args=args,
        log_path=work / "baseline-serve.log",
    )  # fmt: skip
    by_level = {row["concurrency"]: row for row in baseline_rows}
    for row in dinoseek_rows:
        reference = by_level.get(row["concurrency"])
        if reference and reference["qps"] and row["qps"] is not None:
            row["x_qps"] = round(row["qps"] / reference["qps"], 3)
        if reference and reference["p50_ms"] and row["p50_ms"] is not None:
            row["x_p50"] = round(row["p50_ms"] / reference["p50_ms"], 3)
    for row in baseline_rows:
        row["x_qps"] = row["x_p50"] = 1.0
    return baseline_rows + dinoseek_rows


if __name__ == "__main__":
    sys.exit(main())
