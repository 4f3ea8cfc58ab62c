"""``patchray bench serve``: the running service under load from wrk, beside its baselines.

Load comes from wrk (one thread, ``-c`` connections, real PNG patches as the body), at each
concurrency: requests/s, p50/p90/p99 latency, and every answer's status class (a Lua
``response`` hook counts 2xx/4xx/5xx and Retry-After headers; ``done`` prints one JSON line
that is parsed here). Targets, each its own Serve application on one Serve instance, deployed
ONE AT A TIME so each has the cores to itself, in this order every round:

* ``raw``: the compiled OpenVINO model in this process, PNG bytes -> Preprocess.decode ->
  predict, at batch 1 and 64 (patches/s; no HTTP, no Ray);
* ``noop``: a Serve deployment that reads the body and returns a constant (the floor of
  Serve's proxy and router; it admits as many requests as patchray's ingress, see
  :data:`NOOP_MAX_ONGOING`);
* ``plain``: a plain Serve deployment at Serve's defaults that decodes the PNG with the
  model's Preprocess and calls PatchPredictor.predict_pixels on it, nothing else;
* ``patchray``: ``patchray.serving.app.build_app`` at its defaults (``POST /v1/classify``
  with one PNG; then ``patchray x64``: 64 base64 patches per JSON request). API keys are
  off (``auth: none``): the figures leave out key checks.

Rounds repeat the whole sequence and rows are medians over rounds, so the ratios come from
neighbouring measurements (this machine is shared). Then an overload check: patchray with a
small ``max_queued_requests`` at 3x the saturating concurrency, where only 503 (with
Retry-After) may come back besides 2xx, replica memory must stay put and the service must
answer normally afterwards.

Serve's logs go to its files as usual but not to this process's console
(``RAY_SERVE_LOG_TO_STDERR=0`` for the benchmark's own local Ray), for every target alike.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import timeit
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    BenchOptions,
    Log,
    finish,
    format_table,
    interleaved_rates,
    say,
    start_ray,
)

NAME = "serve"
WRK = "wrk"
MARK = "PATCHRAY_WRK "  # the Lua done() hook's JSON line starts with this
PNG = "image/png"
JSON = "application/json"
BATCH = 64  # patches per request in the multi-patch case (the service's default cap)
OVERLOAD_QUEUE = 8  # max_queued_requests in the overload check
FLAT_MB = 64.0  # a replica whose RSS grew more than this under overload is not flat
SATURATION = 0.9  # saturating concurrency: the lowest c within 10% of the best req/s
TARGETS = ("noop", "plain", "patchray")
# The floor admits as many requests as patchray's ingress does (ingress_max_ongoing at the
# defaults): with Serve's default of 5, the router rejects and retries the rest at c=16
# (the replica logs "Replica at capacity"), which costs more than the handler and is no floor.
NOOP_MAX_ONGOING = 64
X64 = f"patchray x{BATCH}"
BENCH_ALIAS = "bench"  # the alias the benchmark's own trained model gets
# (ratio, comparison, goal): the goals, beside the measured values.
GOALS = {
    "patchray_vs_plain_req_s": (">=", 2.0),
    "patchray_vs_noop_req_s": (">=", 0.8),
    "patchray_minus_noop_p50_ms": ("<=", 3.0),
    f"patchray{BATCH}_vs_raw{BATCH}_patches_s": (">=", 0.5),
}
COUNTS = ("s2xx", "s4xx", "s5xx", "s503", "other", "retry_after", "retry_after_503",
          "socket_errors")
TIMINGS = ("req_s", "ok_req_s", "patches_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
           "max_ms")


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...]
    seconds: int  # wrk -d per concurrency
    rounds: int
    warmup_seconds: int
    batch_concurrencies: tuple[int, ...]  # the 64-patch case
    overload_seconds: int
    raw_rounds: int  # interleaved_rates rounds of the in-process model
    raw_min_seconds: float
    high_c: int = 16  # where throughput ratios are taken
    low_c: int = 1  # where latency is compared

    def at(self, c: int) -> int:
        """``c`` if measured, else the nearest measured concurrency (smoke runs)."""
        return min(self.concurrencies, key=lambda x: (abs(x - c), -x))


PLANS = {
    "full": Plan((1, 2, 4, 8, 16, 32), 15, 2, 5, (1, 2, 4, 8), 60, 5, 1.0),
    "quick": Plan((1, 16), 4, 1, 2, (1, 4), 8, 3, 0.5),
    "smoke": Plan((1, 4), 2, 1, 1, (2,), 3, 2, 0.2),
}


# ----------------------------------------------------------------------------- wrk

def wrk_script(body_path: Path, content_type: str) -> str:
    """A wrk Lua script: POST ``body_path``'s bytes, count answers by status class and
    Retry-After, and print one JSON line (prefixed :data:`MARK`) when done.

    The counters live in each wrk thread's Lua state; ``done`` (the main state) adds them up
    through the threads kept by ``setup``. A ``response`` hook turns off wrk's pipelining,
    which a benchmark of one-request-per-connection-at-a-time clients does not want anyway."""
    path = str(Path(body_path).resolve())
    if "]==]" in path or "\n" in path:
        raise ValueError(f"{path}: cannot be quoted for Lua")
    counters = ", ".join(c for c in COUNTS if c != "socket_errors")
    zeros = ", ".join("0" for c in COUNTS if c != "socket_errors")
    return f"""-- written by patchray.benchmarks.serve: POST one body, count answers, print JSON
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local f = assert(io.open([==[{path}]==], "rb"))
wrk.body = f:read("*a")
f:close()

local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  {counters} = {zeros}
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    s2xx = s2xx + 1
  elseif status >= 400 and status < 500 then
    s4xx = s4xx + 1
  elseif status >= 500 and status < 600 then
    s5xx = s5xx + 1
    if status == 503 then s503 = s503 + 1 end
  else
    other = other + 1
  end
  if headers["Retry-After"] ~= nil or headers["retry-after"] ~= nil then
    retry_after = retry_after + 1
    if status == 503 then retry_after_503 = retry_after_503 + 1 end
  end
end

function done(summary, latency, requests)
  local c = {{s2xx = 0, s4xx = 0, s5xx = 0, s503 = 0, other = 0, retry_after = 0,
             retry_after_503 = 0}}
  for _, t in ipairs(threads) do
    for k, _ in pairs(c) do c[k] = c[k] + (t:get(k) or 0) end
  end
  local e = summary.errors
  io.write(string.format("{MARK}" ..
    '{{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"status":{{"2xx":%d,"4xx":%d,"5xx":%d,"503":%d,"other":%d}},' ..
    '"retry_after":%d,"retry_after_503":%d,' ..
    '"latency_us":{{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    c.s2xx, c.s4xx, c.s5xx, c.s503, c.other, c.retry_after, c.retry_after_503,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The JSON line of :func:`wrk_script`'s ``done`` -> one measurement (ms, per second)."""
    line = next((x for x in stdout.splitlines() if x.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no {MARK.strip()} line (is the Lua script ours?):\n"
                           f"{stdout[-2000:]}")
    raw = json.loads(line[len(MARK):])
    seconds = raw["duration_us"] / 1e6
    lat, st, err = raw["latency_us"], raw["status"], raw["errors"]
    per_s = (lambda n: n / seconds) if seconds > 0 else (lambda n: 0.0)
    return {
        "requests": raw["requests"], "seconds": round(seconds, 3),
        "req_s": per_s(raw["requests"]), "ok_req_s": per_s(st["2xx"]),
        "p50_ms": lat["p50"] / 1000.0, "p90_ms": lat["p90"] / 1000.0,
        "p99_ms": lat["p99"] / 1000.0, "mean_ms": lat["mean"] / 1000.0,
        "max_ms": lat["max"] / 1000.0,
        "s2xx": st["2xx"], "s4xx": st["4xx"], "s5xx": st["5xx"], "s503": st["503"],
        "other": st["other"], "retry_after": raw["retry_after"],
        "retry_after_503": raw["retry_after_503"], "non_2xx_3xx": err["status"],
        "socket_errors": err["connect"] + err["read"] + err["write"] + err["timeout"],
        "socket_error_kinds": {k: err[k] for k in ("connect", "read", "write", "timeout")},
    }


def wrk_command(url: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    # --timeout: wrk's 2 s default would count slow answers as socket errors and leave them
    # out of the percentiles; the service's own request timeout is 30 s.
    return [WRK, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "--timeout", "10s",
            "-s", str(script), url]


def run_wrk(url: str, script: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    cmd = wrk_command(url, script, concurrency, seconds)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1000:]}")
    return parse_wrk(proc.stdout)


# ----------------------------------------------------------------------------- figures

def measurement_row(target: str, concurrency: int, m: dict[str, Any], *,
                    patches: int = 1, round_: int = 0) -> dict[str, Any]:
    return {"target": target, "concurrency": concurrency, "patches_per_request": patches,
            "round": round_, **{k: m[k] for k in ("req_s", "ok_req_s", "p50_ms", "p90_ms",
                                                  "p99_ms", "mean_ms", "max_ms")},
            "patches_s": m["ok_req_s"] * patches,
            **{k: m[k] for k in COUNTS},
            "load_1m": round(os.getloadavg()[0], 2)}  # how busy the shared machine was


def median_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, concurrency): timings' median over rounds, counts summed, a 5xx flag."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["concurrency"]), []).append(r)
    out = []
    for (target, c), rs in groups.items():
        row = {"target": target, "concurrency": c,
               "patches_per_request": rs[0]["patches_per_request"], "rounds": len(rs),
               **{k: float(statistics.median(r[k] for r in rs)) for k in TIMINGS},
               **{k: int(sum(r[k] for r in rs)) for k in COUNTS}}
        row["flag"] = "5xx!" if row["s5xx"] else ("4xx" if row["s4xx"] else "")
        out.append(row)
    return out


def saturating_concurrency(rows: Sequence[dict[str, Any]], target: str = "patchray") -> int:
    """The lowest concurrency whose throughput is within 10% of the target's best."""
    mine = [r for r in rows if r["target"] == target]
    if not mine:
        raise ValueError(f"no rows for {target}")
    best = max(r["req_s"] for r in mine)
    return min(r["concurrency"] for r in mine if r["req_s"] >= SATURATION * best)


def overload_concurrency(saturating: int) -> int:
    return 3 * max(saturating, 32)


def _pick(rows: Sequence[dict[str, Any]], target: str, c: int, round_: int) -> dict | None:
    return next((r for r in rows if (r["target"], r["concurrency"], r["round"])
                 == (target, c, round_)), None)


def met(name: str, value: float | None) -> bool | None:
    if value is None:
        return None
    op, goal = GOALS[name]
    return value >= goal if op == ">=" else value <= goal


def ratios(rows: Sequence[dict[str, Any]], raw: Sequence[dict[str, Any]], *, high_c: int,
           low_c: int) -> list[dict[str, Any]]:
    """The issue's ratios, each computed within a round (side by side), then the median over
    rounds, with its goal beside it. ``rows``: per-round measurement rows; ``raw``: per-round
    in-process rates ``{"round", "batch", "patches_s"}``."""
    rounds = sorted({r["round"] for r in rows} | {r["round"] for r in raw})
    per: dict[str, list[float]] = {name: [] for name in GOALS}
    for k in rounds:
        pr, pl, no = (_pick(rows, t, high_c, k) for t in TARGETS[::-1])
        if pr and pl and pl["req_s"] > 0:
            per["patchray_vs_plain_req_s"].append(pr["req_s"] / pl["req_s"])
        if pr and no and no["req_s"] > 0:
            per["patchray_vs_noop_req_s"].append(pr["req_s"] / no["req_s"])
        pr1, no1 = _pick(rows, "patchray", low_c, k), _pick(rows, "noop", low_c, k)
        if pr1 and no1:
            per["patchray_minus_noop_p50_ms"].append(pr1["p50_ms"] - no1["p50_ms"])
        x64 = [r["patches_s"] for r in rows if r["target"] == X64 and r["round"] == k]
        raw64 = next((r["patches_s"] for r in raw if r["round"] == k
                      and r["batch"] == BATCH), None)
        if x64 and raw64:
            per[f"patchray{BATCH}_vs_raw{BATCH}_patches_s"].append(max(x64) / raw64)
    out = []
    for name, values in per.items():
        value = float(statistics.median(values)) if values else None
        op, goal = GOALS[name]
        where = (f"c={low_c}" if name.endswith("_ms") else
                 f"best c, {BATCH}/request" if name.startswith(f"patchray{BATCH}")
                 else f"c={high_c}")
        out.append({"ratio": name, "at": where, "value": value, "goal": f"{op} {goal:g}",
                    "met": met(name, value), "per_round": [round(v, 4) for v in values]})
    return out


def breakdown(medians: Sequence[dict[str, Any]], raw_timing: dict[str, float], *,
              low_c: int, batch_wait_ms: float) -> dict[str, Any]:
    """Where a lone request's time goes, at concurrency ``low_c`` (p50s; in-process medians)."""
    p50 = {r["target"]: r["p50_ms"] for r in medians if r["concurrency"] == low_c}
    noop = p50.get("noop")

    def minus(t: str) -> float | None:
        return p50[t] - noop if t in p50 and noop is not None else None

    return {
        "concurrency": low_c,
        "noop_p50_ms": noop,  # HTTP proxy + router + a replica doing nothing
        "plain_minus_noop_p50_ms": minus("plain"),  # decode + model inside a replica
        "patchray_minus_noop_p50_ms": minus("patchray"),  # ingress + batching + classifier
        **raw_timing,  # in-process decode and predict, one patch
        "patchray_batch_wait_ms_configured": batch_wait_ms,  # paid in full by a lone request
    }


# ----------------------------------------------------------------------------- Serve targets

class NoopModel:
    """The proxy's floor: read the body, answer a constant."""

    async def __call__(self, request: Any) -> dict[str, Any]:
        await request.body()
        return {"ok": True}


class PlainModel:
    """The simplest serving of the model: decode one PNG, predict, answer a small JSON."""

    def __init__(self, model_dir: str, precision: str = "auto"):
        from patchray.inference.predictor import PatchPredictor

        self.predictor = PatchPredictor.from_card(model_dir, precision=precision)

    async def __call__(self, request: Any) -> dict[str, Any]:
        body = await request.body()
        pixels = self.predictor.preprocess.decode(body)
        p = float(self.predictor.predict_pixels(pixels[None])[0])
        return {"probability": p}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, content_type: str, timeout: float = 30.0
         ) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers or {})


def wait_ready(url: str, body: bytes, content_type: str, *, timeout_s: float = 180.0,
               check: Callable[[bytes], None] | None = None) -> float:
    """Until the route answers 200 (the proxy learns new routes a moment after serve.run);
    returns the seconds waited. ``check`` validates the first answer's body."""
    t0 = time.monotonic()
    last = "no answer"
    while time.monotonic() - t0 < timeout_s:
        try:
            status, data, _ = post(url, body, content_type)
        except OSError as e:
            status, data = 0, str(e).encode()
        if status == 200:
            if check is not None:
                check(data)
            return time.monotonic() - t0
        last = f"{status}: {data[:300]!r}"
        time.sleep(0.5)
    raise RuntimeError(f"POST {url} did not answer 200 within {timeout_s:.0f}s (last {last})")


def _answer_check(n: int) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        answer = json.loads(data)
        got = len(answer.get("predictions", ()))
        if got != n:
            raise RuntimeError(f"/v1/classify answered {got} predictions for {n} patches: "
                               f"{data[:300]!r}")
    return check


def replica_rss(app: str) -> dict[str, Any]:
    """RSS of this application's Serve replica processes (``ray::ServeReplica:<app>:...``)."""
    import psutil

    needle = f"ServeReplica:{app}:"
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or ())
            if needle in cmd:
                deployment = cmd.split(needle, 1)[1].split()[0].split(".")[0]
                procs.append({"pid": p.pid, "deployment": deployment,
                              "rss_mb": round(p.memory_info().rss / 2**20, 1)})
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return {"total_mb": round(sum(p["rss_mb"] for p in procs), 1), "processes": procs}


def replica_growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """RSS growth of each replica alive before and after (a replica the autoscaler added
    meanwhile is new memory, not growth): the largest, and whether it stayed under
    :data:`FLAT_MB`."""
    was = {p["pid"]: p["rss_mb"] for p in before["processes"]}
    growth = {p["pid"]: round(p["rss_mb"] - was[p["pid"]], 1) for p in after["processes"]
              if p["pid"] in was}
    worst = max(growth.values(), default=0.0)
    return {"rss_growth_mb_per_replica": growth, "max_replica_growth_mb": worst,
            "replicas_added": len(after["processes"]) - len(growth),
            "memory_flat": worst <= FLAT_MB}


@dataclass(frozen=True)
class Bodies:
    """What the load sends: files wrk reads, and their bytes for readiness checks."""

    png: Path
    x64: Path
    png_bytes: bytes
    pngs: list[bytes]  # BATCH distinct patches (the raw batch-64 case decodes these)


def write_bodies(work: Path, pngs: list[bytes]) -> Bodies:
    work.mkdir(parents=True, exist_ok=True)
    chosen = [pngs[i % len(pngs)] for i in range(BATCH)]
    png, x64 = work / "patch.png", work / f"patches-{BATCH}.json"
    png.write_bytes(chosen[0])
    x64.write_text(json.dumps({"instances": [
        {"image_b64": base64.b64encode(b).decode("ascii")} for b in chosen]}))
    return Bodies(png, x64, chosen[0], chosen)


def scripts(work: Path, bodies: Bodies) -> dict[str, Path]:
    out = {}
    for key, body, ctype in (("png", bodies.png, PNG), ("x64", bodies.x64, JSON)):
        path = work / f"wrk-{key}.lua"
        path.write_text(wrk_script(body, ctype))
        out[key] = path
    return out


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class Model:
    ref: str  # what patchray serves (a version folder or NAME@ALIAS)
    registry: str
    folder: Path  # the version folder the plain deployment and the raw model load
    card: Any
    pngs: list[bytes]  # patches the load sends
    patches_from: str


def train_model(work: Path, mode: str, log: Log) -> Model:
    """A model trained, exported and registered by ``patchray train`` itself (a child
    process with its own local Ray, finished before the benchmark starts its own), on a small
    synthetic dataset under ``work``; rerunning with the same ``--out`` reuses it.

    Through the CLI rather than ``patchray.workflows``: benchmarks sit below the workflows."""
    from patchray.data.manifest import PatchDataset

    if mode == "smoke":
        size, model, settings = 32, "tiny", ["data.synthetic.num_patients=3",
                                             "data.synthetic.patches_per_patient=24",
                                             "train.epochs=1", "train.batch_size=8",
                                             "export.precisions=[f32]"]
    else:  # the demo's model and settings (jobs/demo.yaml), fewer patients and epochs
        size, model, settings = 50, "cnn6", ["data.synthetic.num_patients=6",
                                             "data.synthetic.patches_per_patient=150",
                                             "train.epochs=3", "train.batch_size=32"]
    name = f"serve-bench-{model}-{size}px"
    registry, data_root = work / "registry", work / "data" / name
    overrides = [f"name={name}", f"runs_root={work / 'runs'}", f"data.root={data_root}",
                 f"registry.root={registry}", f"registry.alias={BENCH_ALIAS}",
                 f"export.name={name}", f"train.model={model}", f"train.input_size={size}",
                 f"data.synthetic.patch_size={size}", "data.augment=false", *settings]
    log(f"training {model} at {size}x{size} for the benchmark with `patchray train`, or "
        f"reusing the one an earlier run under {work} registered")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "patchray.cli", "train"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"patchray train exited {proc.returncode}:\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    found = existing_model(f"{name}@{BENCH_ALIAS}", str(registry), log, quiet=True)
    rows = PatchDataset.open(str(data_root)).sample_rows("test", BATCH, as_png=True)
    log(f"registered {found.card.ref} ({time.perf_counter() - t0:.0f}s); load: "
        f"{len(rows)} test-split PNG patches")
    return Model(found.ref, found.registry, found.folder, found.card,
                 [r["image"] for r in rows], "test split of the training dataset")


def existing_model(ref: str, registry: str, log: Log, *, quiet: bool = False) -> Model:
    """A registered model (NAME@ALIAS or a version folder); synthetic patches at its size."""
    from patchray.benchmarks.common import sample_patches
    from patchray.data.records import encode_png
    from patchray.serving.model_source import ModelSource

    source = ModelSource(ref, registry=registry)
    card = source.card()
    folder = source.folder or source.registry.local_dir(card)  # type: ignore[union-attr]
    size = card.input.size
    pngs = [encode_png(p) for p in sample_patches(size, BATCH)]
    if not quiet:
        log(f"benchmarking {card.ref} ({folder}); load: synthetic {size}x{size} PNG "
            "patches")
    registry = registry if registry or source.folder else str(source.registry.root)
    return Model(ref, registry, Path(folder), card, pngs,
                 f"synthetic H&E-like patches ({size}x{size})")


# ----------------------------------------------------------------------------- raw model

def raw_rates(predictor: Any, bodies: Bodies, plan: Plan, round_: int) -> list[dict]:
    """The compiled model in this process, decode included, at batch 1 and 64: patches/s."""
    pre = predictor.preprocess

    def b1() -> Any:
        return predictor.predict_pixels(pre.decode(bodies.png_bytes)[None])

    def b64() -> Any:
        return predictor.predict_pixels(np.stack([pre.decode(b) for b in bodies.pngs]))

    out = []
    for batch, fn in ((1, b1), (BATCH, b64)):
        r = interleaved_rates({"raw": fn}, batch, rounds=plan.raw_rounds,
                              min_seconds=plan.raw_min_seconds)["raw"]
        out.append({"round": round_, "batch": batch, "patches_s": r["median"],
                    "best_patches_s": r["best"]})
    return out


def raw_timing(predictor: Any, png: bytes, *, repeats: int = 7) -> dict[str, float]:
    """Per-patch decode and batch-1 predict, timeit-style (median of repeats), in ms."""
    pre = predictor.preprocess
    pixels = pre.decode(png)[None]

    def ms(fn: Callable[[], Any]) -> float:
        number = max(1, int(0.05 / max(1e-6, min(timeit.repeat(fn, number=1, repeat=3)))))
        return 1000.0 * statistics.median(
            t / number for t in timeit.repeat(fn, number=number, repeat=repeats))

    decode = ms(lambda: pre.decode(png))
    predict = ms(lambda: predictor.predict_pixels(pixels))
    return {"raw_decode_ms_per_patch": decode, "raw_predict_ms_batch1": predict,
            "raw_decode_plus_predict_ms_batch1": decode + predict}


# ----------------------------------------------------------------------------- the run

class Bench:
    """One Serve instance on a free port; targets deployed one at a time."""

    def __init__(self, model: Model, bodies: Bodies, lua: dict[str, Path], plan: Plan,
                 work: Path, log: Log):
        self.model, self.bodies, self.lua, self.plan, self.work = model, bodies, lua, plan, work
        self.log = log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from ray import serve

        from patchray.config import ServeAppArgs

        serve.start(http_options={"host": "127.0.0.1", "port": self.port,
                                  "request_timeout_s": ServeAppArgs().request_timeout_s})

    def patchray_args(self, **overrides: Any) -> Any:
        from patchray.config import ServeAppArgs

        audit = self.work / "audit"
        audit.mkdir(parents=True, exist_ok=True)
        return ServeAppArgs(model=self.model.ref, registry=self.model.registry, auth="none",
                            audit_dir=str(audit), **overrides)

    def application(self, target: str, **overrides: Any) -> tuple[Any, str]:
        """(bound application, the path wrk posts to under its route prefix)."""
        from ray import serve

        if target == "noop":
            return serve.deployment(name="Noop", max_ongoing_requests=NOOP_MAX_ONGOING
                                    )(NoopModel).bind(), ""
        if target == "plain":
            return serve.deployment(name="Plain")(PlainModel).bind(str(self.model.folder)), ""
        from patchray.serving.app import build_app

        return build_app(self.patchray_args(**overrides)), "/v1/classify"

    def deploy(self, app: str, target: str, **overrides: Any) -> str:
        from ray import serve

        bound, path = self.application(target, **overrides)
        t0 = time.perf_counter()
        serve.run(bound, name=app, route_prefix=f"/{app}")
        url = f"{self.base}/{app}{path}"
        wait_ready(url, self.bodies.png_bytes, PNG,
                   check=_answer_check(1) if target == "patchray" else None)
        self.log(f"  {app}: deployed and answering in {time.perf_counter() - t0:.1f}s")
        return url

    def load(self, url: str, key: str, concurrency: int, seconds: int) -> dict[str, Any]:
        return run_wrk(url, self.lua[key], concurrency, seconds)

    def measure(self, target: str, round_: int) -> list[dict[str, Any]]:
        from ray import serve

        p = self.plan
        app = f"bench-{target}"
        rows = []
        try:
            url = self.deploy(app, target)
            self.load(url, "png", max(p.concurrencies), p.warmup_seconds)
            for c in p.concurrencies:
                m = self.load(url, "png", c, p.seconds)
                rows.append(measurement_row(target, c, m, round_=round_))
                self.log(f"  {target:8s} c={c:<3d} {m['req_s']:8.1f} req/s  p50 "
                         f"{m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
                         f"2xx {m['s2xx']} 4xx {m['s4xx']} 5xx {m['s5xx']}"
                         + (f" socket errors {m['socket_errors']}" if m["socket_errors"]
                            else ""))
            if target == "patchray":
                wait_ready(url, self.bodies.x64.read_bytes(), JSON,
                           check=_answer_check(BATCH))
                self.load(url, "x64", max(p.batch_concurrencies), p.warmup_seconds)
                for c in p.batch_concurrencies:
                    m = self.load(url, "x64", c, p.seconds)
                    rows.append(measurement_row(X64, c, m, patches=BATCH, round_=round_))
                    self.log(f"  {X64} c={c:<3d} {m['req_s'] * BATCH:8.1f} patches/s  "
                             f"p50 {m['p50_ms']:7.2f} ms  2xx {m['s2xx']} 4xx {m['s4xx']} "
                             f"5xx {m['s5xx']}")
        finally:
            _delete(serve, app)
        return rows

    def overload(self, saturating: int) -> dict[str, Any]:
        """patchray with a small queue at 3x the saturating concurrency."""
        from ray import serve

        from patchray.serving.app import ingress_max_ongoing

        p = self.plan
        c = overload_concurrency(saturating)
        args = self.patchray_args(max_queued_requests=OVERLOAD_QUEUE)
        app = "bench-overload"
        try:
            url = self.deploy(app, "patchray", max_queued_requests=OVERLOAD_QUEUE)
            self.load(url, "png", max(p.concurrencies), p.warmup_seconds)
            before = replica_rss(app)
            m = self.load(url, "png", c, p.overload_seconds)
            after = replica_rss(app)
            status, attempts = 0, 0
            while attempts < 5 and status != 200:  # the queue drains within a Retry-After
                if attempts:
                    time.sleep(max(1.0, args.retry_after_s))
                attempts += 1
                try:
                    status, _, _ = post(url, self.bodies.png_bytes, PNG)
                except OSError:
                    status = 0
        finally:
            _delete(serve, app)
        other_5xx = m["s5xx"] - m["s503"]
        result = {
            "concurrency": c, "saturating_concurrency": saturating,
            "seconds": p.overload_seconds, "max_queued_requests": OVERLOAD_QUEUE,
            "ingress_max_ongoing_requests": ingress_max_ongoing(args),
            "ingress_max_replicas": args.ingress_max_replicas,
            "req_s": m["req_s"], "ok_req_s": m["ok_req_s"], "p50_ms": m["p50_ms"],
            "p99_ms": m["p99_ms"], "s2xx": m["s2xx"], "s4xx": m["s4xx"], "s503": m["s503"],
            "other_5xx": other_5xx, "other": m["other"], "socket_errors": m["socket_errors"],
            "socket_error_kinds": m["socket_error_kinds"],
            "retry_after_on_503": m["retry_after_503"],
            "every_503_had_retry_after": m["retry_after_503"] == m["s503"],
            "shed": m["s503"] > 0,
            "rss_mb_before": before, "rss_mb_after": after,
            "rss_growth_mb": round(after["total_mb"] - before["total_mb"], 1),
            **replica_growth(before, after),
            "after_status": status, "after_attempts": attempts,
        }
        result["ok"] = (other_5xx == 0 and m["s4xx"] == 0 and m["other"] == 0
                        and result["every_503_had_retry_after"] and status == 200
                        and result["memory_flat"])
        return result


def target_settings() -> dict[str, Any]:
    """How each target was deployed (in the results, beside the figures)."""
    from patchray.config import ServeAppArgs
    from patchray.serving.app import ingress_max_ongoing

    args = ServeAppArgs()
    return {
        "noop": {"replicas": 1, "max_ongoing_requests": NOOP_MAX_ONGOING,
                 "note": "patchray ingress's admission limit, so the floor is not throttled"},
        "plain": {"replicas": 1, "max_ongoing_requests": "Serve default (5)",
                  "note": "Serve defaults throughout: at c > 5 the router rejects and "
                          "retries, part of this baseline's cost"},
        "patchray": {"args": "ServeAppArgs defaults, auth none",
                     "ingress_max_ongoing_requests": ingress_max_ongoing(args),
                     "ingress_replicas": [args.ingress_min_replicas, args.ingress_max_replicas],
                     "classifier_replicas": [args.min_replicas, args.max_replicas],
                     "max_batch_size": args.max_batch_size,
                     "batch_wait_timeout_s": args.batch_wait_timeout_s},
    }


def _delete(serve: Any, app: str) -> None:
    try:
        serve.delete(app)
    except Exception as e:  # already gone, or never deployed
        say(f"  (serve.delete({app}): {type(e).__name__}: {e})")


def chart(path: Path, rows: Sequence[dict[str, Any]], raw: Sequence[dict[str, Any]],
          *, title: str) -> Path:
    """Latency (p50 solid, p99 dashed, log y) and throughput (patches/s) vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.6))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, t in enumerate(targets):
        rs = sorted((r for r in rows if r["target"] == t), key=lambda r: r["concurrency"])
        cs = [r["concurrency"] for r in rs]
        colour = colours[i % len(colours)]
        lat.plot(cs, [r["p50_ms"] for r in rs], "o-", color=colour, label=f"{t} p50")
        lat.plot(cs, [r["p99_ms"] for r in rs], "s--", color=colour, label=f"{t} p99")
        thr.plot(cs, [r["patches_s"] for r in rs], "o-", color=colour, label=t)
    for j, r in enumerate(sorted({(r["batch"], r["patches_s"]) for r in raw})):
        thr.axhline(r[1], color=colours[(len(targets) + j) % len(colours)], ls=":",
                    label=f"raw OpenVINO b{r[0]} (in-process)")
    ticks = sorted({r["concurrency"] for r in rows})
    for ax, ylabel in ((lat, "latency (ms, log)"), (thr, "patches/s (2xx, log)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_one_two_five))
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    lat.set_title("latency vs concurrency")
    thr.set_title("throughput vs concurrency")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _one_two_five(v: float, _: Any) -> str:
    """Minor log-axis labels at 2 and 5 times a power of ten only (the rest crowd)."""
    lead = f"{v:.0e}"[0]
    return f"{v:g}" if lead in "25" else ""


def _median_raw(raw: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for batch in sorted({r["batch"] for r in raw}):
        rs = [r for r in raw if r["batch"] == batch]
        out.append({"target": f"raw openvino b{batch}", "batch": batch,
                    "patches_s": float(statistics.median(r["patches_s"] for r in rs)),
                    "best_patches_s": float(max(r["best_patches_s"] for r in rs)),
                    "rounds": len(rs)})
    return out


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    from ray import serve

    if shutil.which(WRK) is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    mode = "smoke" if opts.extra.get("smoke") else "quick" if opts.quick else "full"
    plan = PLANS[mode]
    out = opts.out
    work = out / "work"
    load_dir = work / "load"
    # Replica logs go to Serve's files, not through this process's console (every target).
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    start_ray(num_cpus=4)
    errors: dict[str, str] = {}
    try:
        model = (existing_model(opts.extra["model"], opts.extra.get("registry") or "", log)
                 if opts.extra.get("model") else train_model(work, mode, log))
        from patchray.inference.predictor import PatchPredictor

        predictor = PatchPredictor.from_card(model.folder, precision="auto")
        bodies = write_bodies(load_dir, model.pngs)
        lua = scripts(load_dir, bodies)
        log(f"{mode}: concurrency {list(plan.concurrencies)} x {plan.seconds}s, "
            f"{plan.rounds} round(s), targets {', '.join(TARGETS)} one at a time; model "
            f"{model.card.ref} ({predictor.precision}); API keys OFF (auth: none)")
        bench = Bench(model, bodies, lua, plan, work, log)
        bench.start()
        measured: list[dict[str, Any]] = []
        raw: list[dict[str, Any]] = []
        timings: list[dict[str, float]] = []
        for k in range(plan.rounds):
            log(f"round {k + 1}/{plan.rounds}")
            raw += raw_rates(predictor, bodies, plan, k)
            timings.append(raw_timing(predictor, bodies.png_bytes))
            log("  raw openvino in-process: " + ", ".join(
                f"b{r['batch']} {r['patches_s']:,.0f} patches/s" for r in raw if r["round"] == k))
            for target in TARGETS:
                try:
                    measured += bench.measure(target, k)
                except Exception as e:
                    errors[target] = f"{type(e).__name__}: {e}"
                    log(f"  {target} FAILED: {errors[target]}")
        rows = median_rows(measured)
        overload: dict[str, Any] | None = None
        if any(r["target"] == "patchray" for r in rows):
            try:
                overload = bench.overload(saturating_concurrency(rows))
                log(f"overload c={overload['concurrency']} {overload['seconds']}s queue "
                    f"{OVERLOAD_QUEUE}: 2xx {overload['s2xx']} 503 {overload['s503']} "
                    f"(Retry-After on {overload['retry_after_on_503']}) other 5xx "
                    f"{overload['other_5xx']} 4xx {overload['s4xx']}; replica RSS "
                    f"{overload['rss_mb_before']['total_mb']} -> "
                    f"{overload['rss_mb_after']['total_mb']} MB; afterwards "
                    f"{overload['after_status']}: {'ok' if overload['ok'] else 'NOT OK'}")
            except Exception as e:
                errors["overload"] = f"{type(e).__name__}: {e}"
                log(f"overload FAILED: {errors['overload']}")
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()

    from patchray.config import ServeAppArgs

    high_c, low_c = plan.at(plan.high_c), plan.at(plan.low_c)
    summary = ratios(measured, raw, high_c=high_c, low_c=low_c)
    timing = {k: float(statistics.median(t[k] for t in timings)) for k in timings[0]}
    where = breakdown(rows, timing, low_c=low_c,
                      batch_wait_ms=ServeAppArgs().batch_wait_timeout_s * 1000.0)
    raw_rows = _median_raw(raw)
    flags = sorted({r["target"] for r in rows if r["s5xx"]})
    print(format_table(rows, ["target", "concurrency", "req_s", "patches_s", "p50_ms",
                              "p99_ms", "s2xx", "s4xx", "s5xx", "socket_errors", "flag"]),
          flush=True)
    print(format_table(raw_rows, ["target", "patches_s", "best_patches_s"]), flush=True)
    print(format_table(summary, ["ratio", "at", "value", "goal", "met"]), flush=True)
    print("breakdown at c=%d (ms): " % low_c + ", ".join(
        f"{k} {v:.3g}" for k, v in where.items() if isinstance(v, float)), flush=True)
    if flags:
        log(f"5xx under normal load: {', '.join(flags)}")
    threads = os.cpu_count() or 1
    path = chart(out / f"{NAME}.png", rows, raw_rows,
                 title=f"{model.card.ref} ({predictor.precision}) on {threads} cores, wrk "
                 f"-t1, {plan.seconds}s per point, median of {plan.rounds} round(s); "
                 "API keys off")
    return finish(
        opts, NAME, rows, path, log, mode=mode,
        model={"ref": model.card.ref, "served_as": model.ref, "folder": str(model.folder),
               "precision": predictor.precision, "input_size": model.card.input.size,
               "patches": model.patches_from},
        auth="none (benchmarks skip API keys)",
        load={"tool": " ".join(wrk_command("<url>", Path("<lua>"), 0, plan.seconds)
                               ).replace("-c0", "-c<concurrency>"),
              "concurrencies": list(plan.concurrencies), "seconds": plan.seconds,
              "rounds": plan.rounds, "png_bytes": len(bodies.png_bytes),
              f"x{BATCH}_json_bytes": bodies.x64.stat().st_size,
              "batch_concurrencies": list(plan.batch_concurrencies)},
        targets=target_settings(),
        notes=["API keys off (auth: none): key checks are not in these figures",
               "Serve replica logs go to Serve's log files, not to this console "
               "(RAY_SERVE_LOG_TO_STDERR=0), for every target",
               "wrk runs on the same cores as the service (-t1)",
               "raw: one process, decode then predict in turn; the service decodes in the "
               "ingress while the classifier predicts, in other processes"],
        ratios=summary, breakdown=where, raw=raw_rows, overload=overload,
        flags_5xx=flags, errors=errors, rows_by_round=measured, raw_by_round=raw)
