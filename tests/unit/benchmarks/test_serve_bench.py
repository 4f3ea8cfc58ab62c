"""`patchray bench serve`'s pure parts: the wrk Lua script, parsing its JSON line, the
ratios against their goals, and the saturating concurrency (no Ray, no wrk)."""

import http.server
import itertools
import json
import shutil
import threading

import pytest

from patchray.benchmarks import serve as bench
from patchray.benchmarks.__main__ import BENCHMARKS

# A line as the Lua done() hook prints it (field order as written by wrk_script).
CANNED = bench.MARK + json.dumps({
    "requests": 2000, "duration_us": 4_000_000, "bytes": 512_000,
    "errors": {"connect": 0, "read": 1, "write": 0, "status": 30, "timeout": 2},
    "status": {"2xx": 1970, "4xx": 5, "5xx": 25, "503": 20, "other": 0},
    "retry_after": 20, "retry_after_503": 20,
    "latency_us": {"min": 800, "mean": 2500.5, "max": 90_000, "p50": 2100, "p90": 4000,
                   "p99": 12_500},
})


def test_the_benchmark_is_registered():
    assert BENCHMARKS["serve"] is bench.run


def test_lua_script_posts_the_file_and_counts_statuses(tmp_path):
    body = tmp_path / "patch.png"
    body.write_bytes(b"\x89PNG")
    lua = bench.wrk_script(body, "image/png")
    assert 'wrk.method = "POST"' in lua
    assert 'wrk.headers["Content-Type"] = "image/png"' in lua
    assert f'io.open([==[{body.resolve()}]==], "rb")' in lua and 'read("*a")' in lua
    for hook in ("function setup(thread)", "function init(args)",
                 "function response(status, headers, body)",
                 "function done(summary, latency, requests)"):
        assert hook in lua
    assert 'headers["Retry-After"]' in lua and "status == 503" in lua
    assert "latency:percentile(99)" in lua and bench.MARK in lua
    # Every counter the hooks bump is zeroed per thread and summed in done().
    for counter in ("s2xx", "s4xx", "s5xx", "s503", "other", "retry_after", "retry_after_503"):
        assert f"{counter} = {counter} + 1" in lua and f"{counter} = 0" in lua


class _Answers(http.server.BaseHTTPRequestHandler):
    """Every 4th POST: 503 with Retry-After; every 4th + 1: 422; else 200 echoing the size."""

    protocol_version = "HTTP/1.1"
    seen = itertools.count()

    def do_POST(self):
        size = len(self.rfile.read(int(self.headers["Content-Length"])))
        i = next(self.seen)
        status = (503, 422, 200, 200)[i % 4]
        body = json.dumps({"bytes": size}).encode()
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_script_drives_real_wrk_and_counts_every_answer(tmp_path):
    body = tmp_path / "patch.png"
    body.write_bytes(b"\x89PNG" + bytes(1000))
    script = tmp_path / "load.lua"
    script.write_text(bench.wrk_script(body, "image/png"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        m = bench.run_wrk(f"http://127.0.0.1:{server.server_port}/x", script, 2, 1)
    finally:
        server.shutdown()
        server.server_close()
    assert m["requests"] > 0 and m["requests"] == m["s2xx"] + m["s4xx"] + m["s5xx"] + m["other"]
    assert m["s503"] == m["s5xx"] == m["retry_after_503"] == m["retry_after"] > 0
    assert m["s4xx"] > 0 and m["s2xx"] > 0 and m["p50_ms"] > 0
    assert m["non_2xx_3xx"] == m["s4xx"] + m["s5xx"]


def test_lua_script_refuses_an_unquotable_path(tmp_path):
    with pytest.raises(ValueError):
        bench.wrk_script(tmp_path / "a]==]b", "image/png")


def test_wrk_json_line_is_parsed_not_the_human_text():
    out = "Running 4s test @ http://127.0.0.1:1/x\n  1 threads and 16 connections\n" \
          f"{CANNED}\nRequests/sec: 499.00\n"
    m = bench.parse_wrk(out)
    assert m["requests"] == 2000 and m["seconds"] == 4.0
    assert m["req_s"] == 500.0 and m["ok_req_s"] == 1970 / 4
    assert (m["p50_ms"], m["p90_ms"], m["p99_ms"]) == (2.1, 4.0, 12.5)
    assert m["mean_ms"] == pytest.approx(2.5005) and m["max_ms"] == 90.0
    assert (m["s2xx"], m["s4xx"], m["s5xx"], m["s503"], m["other"]) == (1970, 5, 25, 20, 0)
    assert m["retry_after_503"] == 20 and m["non_2xx_3xx"] == 30
    assert m["socket_errors"] == 3 and m["socket_error_kinds"]["timeout"] == 2


def test_wrk_output_without_our_line_is_an_error():
    with pytest.raises(RuntimeError, match="PATCHRAY_WRK"):
        bench.parse_wrk("Requests/sec: 100\n")


def test_wrk_command_is_one_thread_with_latency_and_script(tmp_path):
    cmd = bench.wrk_command("http://h/x", tmp_path / "s.lua", 16, 4)
    assert cmd[:5] == ["wrk", "-t1", "-c16", "-d4s", "--latency"]
    assert cmd[-3:] == ["-s", str(tmp_path / "s.lua"), "http://h/x"]


def _row(target, c, req_s, p50, round_=0, patches=1, **counts):
    m = {"req_s": req_s, "ok_req_s": req_s, "p50_ms": p50, "p90_ms": p50 * 1.5,
         "p99_ms": p50 * 3, "mean_ms": p50, "max_ms": p50 * 5, "s2xx": int(req_s),
         "s4xx": 0, "s5xx": 0, "s503": 0, "other": 0, "retry_after": 0, "retry_after_503": 0,
         "socket_errors": 0, **counts}
    return bench.measurement_row(target, c, m, patches=patches, round_=round_)


def _rows():
    rows, raw = [], []
    for k, scale in enumerate((1.0, 0.5)):  # round 2 ran on a busier machine
        rows += [_row("noop", 1, 800 * scale, 1.0 / scale, k), _row("noop", 16, 3000 * scale, 5, k),
                 _row("plain", 1, 300 * scale, 3.0 / scale, k),
                 _row("plain", 16, 400 * scale, 40, k),
                 _row("patchray", 1, 250 * scale, 3.5 / scale, k),
                 _row("patchray", 16, 2400 * scale, 7, k),
                 _row(bench.X64, 1, 20 * scale, 50, k, patches=64),
                 _row(bench.X64, 4, 40 * scale, 90, k, patches=64)]
        raw += [{"round": k, "batch": 1, "patches_s": 900 * scale, "best_patches_s": 1},
                {"round": k, "batch": 64, "patches_s": 4000 * scale, "best_patches_s": 1}]
    return rows, raw


def test_ratios_are_taken_within_each_round_and_set_beside_their_goals():
    rows, raw = _rows()
    out = {r["ratio"]: r for r in bench.ratios(rows, raw, high_c=16, low_c=1)}
    assert set(out) == set(bench.GOALS)
    vs_plain = out["patchray_vs_plain_req_s"]
    assert vs_plain["value"] == pytest.approx(6.0) and vs_plain["per_round"] == [6.0, 6.0]
    assert vs_plain["goal"] == ">= 2" and vs_plain["met"] is True and vs_plain["at"] == "c=16"
    assert out["patchray_vs_noop_req_s"]["value"] == pytest.approx(0.8)
    assert out["patchray_vs_noop_req_s"]["met"] is True  # the goal is inclusive
    latency = out["patchray_minus_noop_p50_ms"]
    assert latency["per_round"] == [2.5, 5.0] and latency["value"] == pytest.approx(3.75)
    assert latency["goal"] == "<= 3" and latency["met"] is False and latency["at"] == "c=1"
    x64 = out["patchray64_vs_raw64_patches_s"]  # the best concurrency's 64 x 40 / 4000
    assert x64["value"] == pytest.approx(0.64) and x64["met"] is True


def test_a_missing_target_leaves_its_ratios_empty_not_wrong():
    rows, raw = _rows()
    rows = [r for r in rows if not r["target"].startswith("patchray")]
    out = bench.ratios(rows, raw, high_c=16, low_c=1)
    assert all(r["value"] is None and r["met"] is None for r in out)


def test_median_rows_sum_counts_and_flag_5xx():
    rows = [_row("plain", 4, 100, 2.0, 0), _row("plain", 4, 300, 4.0, 1, s5xx=2, s503=1)]
    (m,) = bench.median_rows(rows)
    assert m["req_s"] == 200 and m["p50_ms"] == 3.0 and m["rounds"] == 2
    assert m["s5xx"] == 2 and m["s503"] == 1 and m["flag"] == "5xx!"
    (clean,) = bench.median_rows(rows[:1])
    assert clean["flag"] == ""


def test_saturating_concurrency_is_the_lowest_within_ten_percent_of_the_best():
    rows = [_row("patchray", c, r, 1.0) for c, r in
            ((1, 200), (2, 500), (4, 905), (8, 1000), (16, 990), (32, 700))]
    assert bench.saturating_concurrency(rows) == 4
    rows[2]["req_s"] = 899  # just outside 10%
    assert bench.saturating_concurrency(rows) == 8
    assert bench.saturating_concurrency([_row("patchray", 1, 100, 1.0)]) == 1
    with pytest.raises(ValueError):
        bench.saturating_concurrency(rows, target="plain")


def test_overload_runs_at_three_times_the_saturating_concurrency_at_least_32():
    assert bench.overload_concurrency(1) == 96
    assert bench.overload_concurrency(32) == 96
    assert bench.overload_concurrency(64) == 192


def test_plans_take_ratios_where_they_were_measured():
    assert bench.PLANS["quick"].concurrencies == (1, 16)
    assert bench.PLANS["full"].concurrencies == (1, 2, 4, 8, 16, 32)
    smoke = bench.PLANS["smoke"]
    assert smoke.at(16) == 4 and smoke.at(1) == 1  # the nearest measured concurrency


def test_breakdown_subtracts_the_proxy_floor():
    rows, _ = _rows()
    where = bench.breakdown(bench.median_rows(rows), {"raw_decode_ms_per_patch": 0.2},
                            low_c=1, batch_wait_ms=2.0)
    assert where["noop_p50_ms"] == pytest.approx(1.5)  # median of 1.0 and 2.0
    assert where["plain_minus_noop_p50_ms"] == pytest.approx(4.5 - 1.5)
    assert where["patchray_minus_noop_p50_ms"] == pytest.approx(5.25 - 1.5)
    assert where["raw_decode_ms_per_patch"] == 0.2
    assert where["patchray_batch_wait_ms_configured"] == 2.0


def test_bodies_hold_one_png_and_a_64_patch_json(tmp_path):
    pngs = [b"\x89PNG-a", b"\x89PNG-b", b"\x89PNG-c"]
    bodies = bench.write_bodies(tmp_path, pngs)
    assert bodies.png.read_bytes() == pngs[0] and len(bodies.pngs) == bench.BATCH
    doc = json.loads(bodies.x64.read_text())
    assert list(doc) == ["instances"] and len(doc["instances"]) == bench.BATCH
    assert set(doc["instances"][0]) == {"image_b64"}
    lua = bench.scripts(tmp_path, bodies)
    assert '"application/json"' in lua["x64"].read_text()
    assert '"image/png"' in lua["png"].read_text()


def test_chart_draws_latency_and_throughput(tmp_path):
    rows, raw = _rows()
    medians = bench.median_rows(rows)
    path = bench.chart(tmp_path / "serve.png", medians,
                       [{"batch": 1, "patches_s": 900.0}, {"batch": 64, "patches_s": 4000.0}],
                       title="t")
    assert path.is_file() and path.stat().st_size > 1000


def test_the_noop_floor_admits_what_patchray_ingress_admits():
    from patchray.config import ServeAppArgs
    from patchray.serving.app import ingress_max_ongoing

    assert ingress_max_ongoing(ServeAppArgs()) == bench.NOOP_MAX_ONGOING
    assert bench.target_settings()["plain"]["max_ongoing_requests"].startswith("Serve default")


def test_replica_growth_leaves_out_replicas_the_autoscaler_added():
    before = {"total_mb": 500.0, "processes": [{"pid": 1, "rss_mb": 300.0},
                                               {"pid": 2, "rss_mb": 200.0}]}
    after = {"total_mb": 760.0, "processes": [{"pid": 1, "rss_mb": 310.0},
                                              {"pid": 2, "rss_mb": 210.0},
                                              {"pid": 3, "rss_mb": 240.0}]}
    got = bench.replica_growth(before, after)
    assert got["rss_growth_mb_per_replica"] == {1: 10.0, 2: 10.0}
    assert got["max_replica_growth_mb"] == 10.0 and got["replicas_added"] == 1
    assert got["memory_flat"]
    after["processes"][0]["rss_mb"] = 300.0 + bench.FLAT_MB + 1
    assert not bench.replica_growth(before, after)["memory_flat"]
