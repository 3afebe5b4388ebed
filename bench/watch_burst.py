"""A burst into a watched folder: `dinoseek serve --watch` while 10,000 small files are copied in.

Measures the seconds from the start of the copy until the collection holds every file (and a
sample of them is found by its own image through the API), how many passes the watcher made
of the burst, and the server's peak resident memory (VmHWM). The baseline is one
`dinoseek index` of the same files (its own scan-to-summary time), run afterwards.

The server runs as a user would run it, with the stand-in model by default (``--model
fake``: the events, the settling, the scan, decoding, the catalog, the writer and the index
build are real; the forward pass is a numpy stand-in), or a random-weight DINOv2
(``--model random:tiny``).

    python bench/watch_burst.py --files 10000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    child_env,
    command_line,
    describe_machine,
    fmt_float,
    fmt_text,
    format_table,
    free_port,
    load_average,
    machine_info,
    write_results,
)
from rerun import write_files

from dinoseek.synthetic import save_random_dinov2

HANG_S = 1800  # a hang detector for each wait, not a limit on the measurement
SAMPLE = 20
POLL_S = 0.1  # how often /ready is asked


def serve_child(argv: list[str]) -> None:
    """``dinoseek serve ...`` with the stand-in model (this script run with ``--child``)."""
    from dinoseek.fake_embedder import FakeEmbedder
    from dinoseek.runtime import ModelLoader
    from dinoseek_cli.main import main

    loader = ModelLoader(load=lambda model_id, _settings: FakeEmbedder(model_id=model_id, seed=0))
    main(argv, prog_name="dinoseek", obj=loader)


def one_shot_index(folder: Path, data: Path, model: str) -> dict[str, Any]:
    """The baseline: `dinoseek index` of the same files, once, in a process of its own."""
    arguments = ["index", str(folder), "--data-dir", str(data), "--json", "-q"]
    if model == "fake":
        command = [sys.executable, __file__, "--child", *arguments, "--model", "fake/dinov2"]
    else:
        command = [sys.executable, "-m", "dinoseek_cli", *arguments, "--model", model]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=child_env())
    summary = json.loads(done.stdout)
    return {"wall_s": time.perf_counter() - started, "elapsed_s": summary["elapsed_s"]}


def start_server(
    watched: Path, data: Path, model: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    arguments = ["serve", "--watch", str(watched), "--data-dir", str(data), "--port", str(port)]
    if model == "fake":
        command = [sys.executable, __file__, "--child", *arguments, "--model", "fake/dinov2"]
    else:
        command = [sys.executable, "-m", "dinoseek_cli", *arguments, "--model", model]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())


def ready(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/ready", timeout=30)
    response.raise_for_status()
    return dict(response.json())


def wait_for(
    url: str, server: subprocess.Popen[bytes], what: str, condition: Any
) -> dict[str, Any]:
    """Poll /ready every 0.1 s until ``condition(state)``; the last state."""
    deadline = time.monotonic() + HANG_S
    while True:
        try:
            state = ready(url)
            if condition(state):
                return state
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the server ended (rc {server.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {HANG_S} s: {what}")
        time.sleep(POLL_S)


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def found_by_own_image(url: str, path: Path) -> bool:
    response = httpx.post(
        f"{url}/search",
        params={"top_k": 1},
        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
        timeout=60,
    )
    response.raise_for_status()
    hits = response.json()["results"]
    return bool(hits) and hits[0]["path"] == str(path)


def measure(files: int, model: str, workdir: Path) -> dict[str, Any]:
    """One burst: the row of the results table."""
    staging = workdir / "staging"
    write_files(staging, files)
    watched = workdir / "watched"
    watched.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "server.log"
    server = start_server(watched, workdir / "data", model, port, log)
    try:
        wait_for(
            url, server, "the first pass", lambda s: (s.get("watch") or {}).get("passes", 0) >= 1
        )
        rss_before = peak_rss_mib(server.pid)
        load_before = load_average()
        started = time.perf_counter()
        shutil.copytree(staging, watched / "burst")
        copied_s = time.perf_counter() - started
        state = wait_for(
            url,
            server,
            f"{files} points",
            lambda s: s.get("points") == files and s["watch"]["phase"] == "idle",
        )
        searchable_s = time.perf_counter() - started
        sample = random.Random(0).sample(sorted((watched / "burst").rglob("*.jpg")), SAMPLE)
        missing = [p for p in sample if not found_by_own_image(url, p)]
        if missing:
            raise RuntimeError(f"{len(missing)} of {SAMPLE} sampled files not found: {missing[:3]}")
        baseline = one_shot_index(staging, workdir / "baseline-data", model)
        return {
            "files": files,
            "model": model,
            "index_once_s": baseline["elapsed_s"],
            "index_once_wall_s": baseline["wall_s"],
            "copy_s": copied_s,
            "searchable_s": searchable_s,
            "passes": state["watch"]["passes"] - 1,  # the burst's, the first pass left out
            "peak_rss_mib": peak_rss_mib(server.pid),
            "rss_before_mib": rss_before,
            "load_before": load_before,
            "load_after": load_average(),
            "passes_log": [line for line in log.read_text().splitlines() if "watch:" in line],
        }
    except BaseException:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument(
        "--model", default="fake", help="fake (the stand-in, default) or random:tiny"
    )
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--quick", action="store_true", help="200 files, for a test")
    args = parser.parse_args()
    count = 200 if args.quick else args.files
    info = machine_info("cpu")
    print(describe_machine(info))
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-watch-"))
    try:
        model = args.model
        if model == "random:tiny":
            model = str(save_random_dinov2(workdir / "model", size="tiny"))
        row = measure(count, model, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    row["model"] = args.model
    columns = [
        ("model", "model", fmt_text),
        ("files", "files", fmt_float(0)),
        ("index_once_s", "baseline: `index` once, s", fmt_float(1)),
        ("copy_s", "copy s", fmt_float(1)),
        ("searchable_s", "s until all searchable", fmt_float(1)),
        ("passes", "passes", fmt_float(0)),
        ("peak_rss_mib", "server peak RSS MiB", fmt_float(0)),
    ]
    print(format_table([row], columns))
    print("\n".join(row["passes_log"]))
    print(json.dumps({"load_before": row["load_before"], "load_after": row["load_after"]}))
    write_results(
        args.out, "watch_burst", {"command": command_line(), "machine": info, "rows": [row]}
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        serve_child(sys.argv[2:])
    else:
        main()
