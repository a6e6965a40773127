"""Benchmark of ``refcal serve`` and ``refcal monitor`` (issue 21), in one run.

1. Proxy overhead and throughput. A fake OpenAI-compatible upstream (:mod:`refcal.serve.fake_upstream`, no
   model) and ``refcal serve`` in front of it run as separate processes (uvicorn, one worker each); a load
   generator (asyncio + aiohttp, this process) keeps ``--clients`` requests in flight until ``--requests``
   calibrated multiple-choice requests are answered, first straight to the upstream, then through the proxy
   (and, with ``--before-src DIR``, through the proxy of another source tree, e.g. the main branch's, for a
   before/after in the same run), then all again (the machine is shared: alternating shows the drift). The
   load generator is aiohttp, not httpx: an httpx client with 100 connections spends ~3 ms of CPU per request
   in its pool, which capped the direct path at ~150 req/s on the shared cores. Reported:
   * throughput (answers/s) through the proxy vs direct, and the client-side latency p50 / p99 of each;
   * the proxy's own overhead per request, p50 / p99: the time the proxy's handler spends minus the time it
     waits for the upstream (``refcal_proxy_overhead_seconds``, quantiles interpolated in the histogram's
     buckets as Prometheus' ``histogram_quantile`` does); it excludes the time a request waits for the
     event loop, which the latency difference includes.
   Every answer is checked: status 200, and through a proxy the ``refcal`` probabilities of its own question
   (1e-9); the log must hold one record per calibrated answer, with the request ids the answers carried.
2. ``refcal monitor`` on ``--records`` monitoring records (synthetic, 10 % with a reference sample, window
   10,000) in a child process: wall time and peak RSS (``ru_maxrss`` of the child).

Run: ``PYTHONPATH=src python benchmarks/bench_serve.py [--requests 10000] [--clients 100] [--records 1000000]``
(results: ``benchmarks/results/serve.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _env(src: Path = ROOT / "src") -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), *sys.path])}


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def _load(url: str, n: int, clients: int, logits: np.ndarray, expect: np.ndarray,
                ids: list[str] | None = None) -> dict:
    """``n`` requests from ``clients`` concurrent clients; ``ids`` collects the request ids of proxied answers."""
    import aiohttp

    from refcal.serve.fake_upstream import logits_prompt

    lat = np.zeros(n)
    bad = 0
    transport: list[str] = []
    next_i = 0
    proxied = "refcal" in url

    async def worker(http):
        nonlocal next_i, bad
        while next_i < n:
            i = next_i
            next_i += 1
            body = {"model": "m", "messages": [{"role": "user", "content": logits_prompt(f"q{i}", logits[i])}],
                    "refcal": {"task": "multiple_choice", "n_options": 4}, "max_tokens": 1}
            t = time.perf_counter()
            try:
                async with http.post("/v1/chat/completions", data=json.dumps(body),
                                     headers={"content-type": "application/json"}) as r:
                    status, content = r.status, await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # counted, never hidden
                lat[i] = time.perf_counter() - t
                bad += 1
                transport.append(type(exc).__name__)
                continue
            lat[i] = time.perf_counter() - t
            if status != 200:
                bad += 1
            elif proxied:
                field = json.loads(content)["refcal"]
                got = np.array([field["probabilities"][c] for c in "ABCD"])
                if not np.allclose(got, expect[i], rtol=0, atol=1e-9):  # its own question's answer, not another's
                    bad += 1
                elif ids is not None:
                    ids.append(field["request_id"])

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url.replace("#refcal", ""), connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"n": n, "wall_s": wall, "throughput_rps": n / wall, "latency_p50_ms": float(np.percentile(lat, 50) * 1e3),
            "latency_p99_ms": float(np.percentile(lat, 99) * 1e3), "errors": bad,
            "transport_errors": sorted(set(transport))}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _paired(direct: str, proxy: str, n: int, logits: np.ndarray, ids: list[str]) -> np.ndarray:
    """One client, one request at a time, alternating direct / proxy with the same question: the added latency
    of each pair (proxy - direct), free of queueing behind other clients."""
    import httpx

    from refcal.serve.fake_upstream import logits_prompt

    diffs = np.zeros(n)
    async with httpx.AsyncClient(timeout=60) as http:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": logits_prompt(f"s{i}", logits[i])}],
                    "refcal": {"task": "multiple_choice", "n_options": 4}, "max_tokens": 1}
            took = []
            for url in (direct, proxy):
                t = time.perf_counter()
                r = await http.post(url + "/v1/chat/completions", json=body)
                took.append(time.perf_counter() - t)
                assert r.status_code == 200
                if url == proxy:
                    ids.append(r.json()["refcal"]["request_id"])
            diffs[i] = took[1] - took[0]
    return diffs


def _hist_quantile(text: str, name: str, q: float) -> float:
    """Prometheus histogram_quantile over the cumulative buckets of ``name`` (linear within a bucket)."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def _overhead(text: str) -> dict:
    name = "refcal_proxy_overhead_seconds"
    count = float(next(line for line in text.splitlines() if line.startswith(f"{name}_count")).split()[-1])
    total = float(next(line for line in text.splitlines() if line.startswith(f"{name}_sum")).split()[-1])
    return {"overhead_p50_ms": _hist_quantile(text, name, 0.5) * 1e3, "overhead_p99_ms": _hist_quantile(text, name, 0.99) * 1e3,
            "overhead_mean_ms": total / count * 1e3, "overhead_count": int(count)}


def bench_proxy(args, tmp: Path) -> dict:
    import httpx

    from refcal import DACA, load_calibrator
    from refcal._math import log_softmax
    from refcal.serve.fake_upstream import free_port
    from refcal.synthetic import make_synthetic

    d = make_synthetic(2000, 4, seed=0)
    DACA().fit(d.base, d.chat).save(tmp / "cal.json")
    cal = load_calibrator(tmp / "cal.json")
    logits = np.random.default_rng(1).normal(0, 2, (args.requests, 4))
    expect = cal.predict_proba(log_softmax(logits))
    up_port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "refcal.serve.fake_upstream:FakeUpstream",
                           "--port", str(up_port), "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "75"],
                          env=_env())
    variants = {"proxy": ROOT / "src"}
    if args.before_src is not None:
        variants["proxy-before"] = args.before_src
    procs, ports = {}, {}
    for name, src in variants.items():
        ports[name] = free_port()
        procs[name] = subprocess.Popen([sys.executable, "-m", "refcal", "serve", "--upstream", f"http://127.0.0.1:{up_port}/v1",
                                        "--calibrator", str(tmp / "cal.json"), "--port", str(ports[name]),
                                        "--log", str(tmp / f"log-{name}")], env=_env(Path(src)))
    ids: dict[str, list[str]] = {name: [] for name in variants}
    if args.pin:  # the proxies on the last core; the upstream and this load generator share the others
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        for p in procs.values():
            os.sched_setaffinity(p.pid, {cores[-1]})
        for pid in (up.pid, 0):
            os.sched_setaffinity(pid, set(cores[:-1]))
    try:
        _wait(f"http://127.0.0.1:{up_port}/v1/models", up)
        for name in variants:
            _wait(f"http://127.0.0.1:{ports[name]}/health", procs[name])
        direct_url = f"http://127.0.0.1:{up_port}"
        urls = {"direct": direct_url, **{n: f"http://127.0.0.1:{ports[n]}#refcal" for n in variants}}
        warm = min(500, args.requests)
        for name, url in urls.items():  # warm-up (connections, imports)
            asyncio.run(_load(url, warm, args.clients, logits, expect, ids.get(name)))
        diffs = asyncio.run(_paired(direct_url, urls["proxy"].replace("#refcal", ""), args.sequential, logits, ids["proxy"]))
        print(f"sequential: added latency p50 {np.percentile(diffs, 50) * 1e3:.2f} ms, "
              f"p99 {np.percentile(diffs, 99) * 1e3:.2f} ms", flush=True)
        runs = []
        for rnd in range(args.rounds):
            for name, url in urls.items():
                cpu0 = {"upstream": _cpu_s(up.pid), **{n: _cpu_s(p.pid) for n, p in procs.items()}}
                r = asyncio.run(_load(url, args.requests, args.clients, logits, expect, ids.get(name)))
                r["cpu_ms_per_request"] = {k: (_cpu_s(p.pid) - cpu0[k]) / args.requests * 1e3
                                           for k, p in (("upstream", up), *procs.items())}
                r["loadavg"] = os.getloadavg()
                runs.append({"round": rnd, "path": name, **r})
                print(f"round {rnd} {name}: {r['throughput_rps']:.0f} req/s, p50 {r['latency_p50_ms']:.1f} ms, "
                      f"p99 {r['latency_p99_ms']:.1f} ms, errors {r['errors']}, "
                      f"CPU ms/request {r['cpu_ms_per_request']}, load {r['loadavg'][0]:.1f}", flush=True)
        texts = {n: httpx.get(f"http://127.0.0.1:{ports[n]}/metrics").text for n in variants}
    finally:
        for p in (*procs.values(), up):
            p.terminate()
            p.wait(timeout=60)
    from refcal.serve import read_log

    out = {"requests_per_run": args.requests, "clients": args.clients, "rounds": args.rounds, "runs": runs,
           "before_src": str(args.before_src) if args.before_src else None,
           "sequential_requests": args.sequential,
           "sequential_added_latency_p50_ms": float(np.percentile(diffs, 50) * 1e3),
           "sequential_added_latency_p99_ms": float(np.percentile(diffs, 99) * 1e3)}
    direct = [r for r in runs if r["path"] == "direct"]
    out["upstream_cpu_ms_per_request"] = float(np.mean([r["cpu_ms_per_request"]["upstream"] for r in direct]))
    for name in variants:
        mine = [r for r in runs if r["path"] == name]
        log_ids = [json.loads(line)["id"] for seg in sorted((tmp / f"log-{name}").glob("segment-*.jsonl"))
                   for line in seg.read_text().splitlines()]
        n_records = len(read_log(tmp / f"log-{name}"))
        out[name] = {
            "throughput_ratio_vs_direct": float(np.mean([p["throughput_rps"] / d["throughput_rps"]
                                                         for p, d in zip(mine, direct, strict=True)])),
            "cpu_ms_per_request": float(np.mean([r["cpu_ms_per_request"][name] for r in mine])),
            "latency_p50_diff_ms": float(np.mean([p["latency_p50_ms"] - d["latency_p50_ms"]
                                                  for p, d in zip(mine, direct, strict=True)])),
            "errors": int(sum(r["errors"] for r in mine)),
            "monitoring_records": n_records, "calibrated_answers": len(ids[name]),
            "records_match_answers": sorted(log_ids) == sorted(ids[name]),
            **_overhead(texts[name]),
        }
    return out


MONITOR_CHILD = """
import sys, time, resource, json
t = time.perf_counter()
from refcal.cli import main
rc = main(["monitor", sys.argv[1], "--calibrator", sys.argv[2], "--window", "10000", "-o", sys.argv[3],
           "--baseline", sys.argv[4], "--baseline-base", sys.argv[5]])
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_monitor(args, tmp: Path) -> dict:
    from refcal import DACA, load_calibrator
    from refcal.scores import ScoreSet
    from refcal.synthetic import make_synthetic

    d = make_synthetic(4000, 4, seed=0, n_mc=16)  # the served records below come from the same distribution
    DACA().fit(d.base, d.chat).save(tmp / "mcal.json")
    ids = [f"c{i}" for i in range(len(d.chat))]
    ScoreSet.from_rows(ids, d.chat.tolist()).save(tmp / "calib_chat.jsonl")
    ScoreSet.from_rows(ids, d.base.tolist()).save(tmp / "calib_base.jsonl")
    cal = load_calibrator(tmp / "mcal.json")
    log = tmp / "big-log"
    log.mkdir()
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    block = 100_000
    with open(log / "segment-00000000T000000000000000-0-0001.jsonl", "w") as fh:
        for s in range(0, args.records, block):
            m = min(block, args.records - s)
            data = make_synthetic(m, 4, seed=int(rng.integers(1 << 30)), n_mc=16)
            g = data.chat - np.log(np.exp(data.chat).sum(1, keepdims=True))
            conf = np.exp(cal.predict_log_proba(g)).max(1)
            ref = rng.random(m) < 0.1
            for i in range(m):
                rec = {"t": 1.7e9 + s + i, "id": f"r{s + i}", "task": "multiple_choice",
                       "chat": [round(v, 6) for v in g[i].tolist()], "confidence": round(float(conf[i]), 6),
                       "answer": "ABCD"[int(g[i].argmax())]}
                if ref[i]:
                    rec["base"] = [round(v, 6) for v in data.base[i].tolist()]
                fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    size_mb = (log / "segment-00000000T000000000000000-0-0001.jsonl").stat().st_size / 1e6
    print(f"wrote {args.records} records ({size_mb:.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)
    out = subprocess.run([sys.executable, "-c", MONITOR_CHILD, str(log), str(tmp / "mcal.json"), str(tmp / "mon"),
                          str(tmp / "calib_chat.jsonl"), str(tmp / "calib_base.jsonl")],
                         env=_env(), capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads((tmp / "mon" / "monitor.json").read_text())["summary"]
    return {"records": args.records, "log_mb": size_mb, "window": 10000, **res, "children_max_rss_mb": child_rss,
            "n_windows": summary["n_windows"], "n_flagged": summary["n_flagged"], "max_psi": summary["max_psi"]}


def _proxy_md(p: dict) -> str:
    names = [n for n in ("proxy", "proxy-before") if n in p]
    label = {"proxy": "this tree", "proxy-before": f"before ({p['before_src']})"}
    rows = "\n".join(
        f"| {label[n]} | **{p[n]['throughput_ratio_vs_direct']:.2f}** | {p[n]['cpu_ms_per_request']:.2f} | "
        f"{p[n]['overhead_p50_ms']:.2f} / {p[n]['overhead_p99_ms']:.2f} | {p[n]['latency_p50_diff_ms']:.1f} | {p[n]['errors']} | "
        f"{p[n]['monitoring_records']} = {p[n]['calibrated_answers']} ({'ids match' if p[n]['records_match_answers'] else 'IDS DIFFER'}) |"
        for n in names)
    return f"""| proxy | throughput / direct (goal >= 0.5) | proxy CPU ms / request | overhead p50 / p99 (ms) | client p50 − direct p50 (ms) | errors | log records = calibrated answers |
|---|---|---|---|---|---|---|
{rows}
"""


PLACEMENT = {
    False: "upstream, proxy and load generator all share these cores (the issue's setting: the proxy's CPU competes "
           "with the upstream's and the client's, so the ratio is about (client + upstream CPU) / (client + "
           "upstream + proxy CPU))",
    True: "`--pin`: the proxy on a core of its own, the fake upstream and the load generator on the other (as when the "
          "proxy runs on its own machine; direct runs have one core less than in the shared setting)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--sequential", type=int, default=500, help="paired one-client requests (added latency)")
    ap.add_argument("--before-src", type=Path, default=None,
                    help="also run the proxy of this source folder (e.g. the main branch's src/) in the same run")
    ap.add_argument("--pin", action="store_true",
                    help="run the proxy on a core of its own (the upstream and the load generator on the others), "
                         "as when the proxy has its own machine; without it all share every core")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve")
    args = ap.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        proxy = bench_proxy(args, Path(tmp))
        mon = bench_monitor(args, Path(tmp)) if args.records else None
    load = os.getloadavg()
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"  # uvicorn's "auto" choice
    loop_impl = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "loadavg_at_start": load_start, "loadavg_at_end": load, "uvicorn_http": http_impl,
                       "uvicorn_loop": loop_impl, "pinned": args.pin,
                       "note": "loadavg_at_start shows other jobs on the machine; the proxy/direct ratio is measured in "
                       "the same run, alternating"},
           "proxy": proxy, "monitor": mon}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    p, m = proxy, mon
    md = f"""# refcal serve / refcal monitor benchmark

Machine: {os.cpu_count()} CPU cores; load average before the run {load_start[0]:.1f}, {load_start[1]:.1f}, {load_start[2]:.1f}
(other jobs), at the end {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} (this run's own processes included);
{PLACEMENT[args.pin]}; uvicorn with {http_impl} and {loop_impl} (proxy and fake upstream alike). The ratios are from
the same run, alternating direct and proxy.

## Proxy ({p['clients']} concurrent clients, {p['requests_per_run']:,} calibrated requests per run, fake upstream)

| round | path | throughput (req/s) | latency p50 (ms) | latency p99 (ms) | errors | load (1 min) |
|---|---|---|---|---|---|---|
""" + "\n".join(f"| {r['round']} | {r['path']} | {r['throughput_rps']:.0f} | {r['latency_p50_ms']:.1f} | "
                 f"{r['latency_p99_ms']:.1f} | {r['errors']} | {r['loadavg'][0]:.1f} |" for r in p["runs"]) + f"""

{_proxy_md(p)}
- added latency per request, one client, {p['sequential_requests']} pairs (proxy − direct, same question,
  alternating): p50 **{p['sequential_added_latency_p50_ms']:.2f} ms**, p99 **{p['sequential_added_latency_p99_ms']:.2f} ms**
  (goal p50 <= 2 ms, p99 <= 10 ms)
- CPU per request (user + system from /proc, during the 100-client runs): fake upstream
  {p['upstream_cpu_ms_per_request']:.2f} ms; the proxy's is in the table.
- overhead = handler time minus upstream wait (`refcal_proxy_overhead_seconds`, at 100 clients, so it includes
  waiting for the proxy's event loop behind the other 99 requests).
- every answer checked against its own question's calibrated probabilities (1e-9); the log's request ids are
  those of the calibrated answers.

""" + ("" if m is None else f"""
## refcal monitor on {m['records']:,} records ({m['log_mb']:.0f} MB JSONL, window {m['window']:,}, 10 % reference samples)

- wall time **{m['wall_s']:.1f} s** (goal < 60 s), peak RSS **{m['peak_rss_mb']:.0f} MB** (goal < 500 MB), exit code {m['rc']}
- the records come from the calibration set's distribution (with `--baseline` / `--baseline-base`): {m['n_flagged']}
  of {m['n_windows']} windows flagged, max PSI {m['max_psi']:.3f}
""")
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
