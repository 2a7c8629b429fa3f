#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into docs/benchmarks.md and gnuplot PNGs.

Inputs (in --work): loadgen.csv, inprocess.csv, server.csv, memory.csv, machine.txt,
commands.txt, splitlearnd-info.txt, mem-info.txt. Only the standard library is used.
"""
import argparse
import csv
import os
import shutil
import subprocess
import sys

TINY = "1x10x768"
BIG = "8x1024x1024"


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_kv(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                k, sep, v = line.rstrip("\n").partition("=")
                if sep:
                    out[k] = v
    return out


class Results:
    def __init__(self, work):
        self.load = read_csv(os.path.join(work, "loadgen.csv"))
        self.inproc = read_csv(os.path.join(work, "inprocess.csv"))
        self.server = read_csv(os.path.join(work, "server.csv"))
        self.mem = read_csv(os.path.join(work, "memory.csv"))

    def point(self, label, model, shape, conc):
        for r in self.load:
            if (r["label"], r["model"], r["shape"], int(r["concurrency"])) == (label, model, shape, conc):
                return r
        return None

    def val(self, label, model, shape, conc, field):
        r = self.point(label, model, shape, conc)
        return float(r[field]) if r and r.get(field) not in (None, "") else None

    def cpu_per_req_us(self, label, model, shape, conc):
        r = self.point(label, model, shape, conc)
        for s in self.server:
            if (s["label"], s["model"], s["shape"], int(s["concurrency"])) == (label, model, shape, conc):
                # loadgen's window excludes warmup; the server's CPU covers warmup + window,
                # so divide by the calls in both (estimated from the measured rate).
                if not r or float(r["rps"]) <= 0:
                    return None
                calls = float(r["rps"]) * (float(r["window_s"]) + WARMUP_S[0])
                return float(s["server_cpu_s"]) * 1e6 / calls
        return None

    def mean_batch(self, label, model, shape, conc):
        for s in self.server:
            if (s["label"], s["model"], s["shape"], int(s["concurrency"])) == (label, model, shape, conc):
                if s.get("jobs_run") and s.get("batches_run") and float(s["batches_run"]) > 0:
                    return float(s["jobs_run"]) / float(s["batches_run"])
        return None

    def load_avg(self, label, model, shape, conc):
        for s in self.server:
            if (s["label"], s["model"], s["shape"], int(s["concurrency"])) == (label, model, shape, conc):
                return float(s["loadavg_before"]) if s.get("loadavg_before") else None
        return None

    def inp(self, label, model, batch, field):
        for r in self.inproc:
            if r["label"] == label and r["model"] == model + ".pt" and int(r["batch"]) == batch:
                return float(r[field])
        return None

    def concurrencies(self, label, model, shape):
        return sorted({int(r["concurrency"]) for r in self.load
                       if r["label"] == label and r["model"] == model and r["shape"] == shape})


WARMUP_S = [2.0]


def fmt(v, digits=0, unit=""):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def signed(v):
    """fmt() with an explicit sign: +12, −6."""
    if v is None:
        return fmt(v)
    return ("+" if v >= 0 else "−") + fmt(abs(v))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def mib(kb):
    return None if kb is None else kb / 1024.0


def yes(ok):
    if ok is None:
        return "n/a"
    return "**yes**" if ok else "**no**"


def gnuplot(work, plots, res, default_label, best_inproc_label):
    if not shutil.which("gnuplot"):
        print("report.py: gnuplot not found; no plots", file=sys.stderr)
        return []
    servers = [(default_label, "splitlearnd"), ("reference", "reference (Python)"), ("echo", "echo (transport limit)")]
    made = []

    def dat(name, rows):
        p = os.path.join(work, name)
        with open(p, "w") as f:
            for row in rows:
                f.write(" ".join(str(x) for x in row) + "\n")
        return p

    def series(label, model, shape, fields):
        rows = []
        for c in res.concurrencies(label, model, shape):
            r = res.point(label, model, shape, c)
            rows.append([c] + [float(r[f]) for f in fields])
        return rows

    script = ['set terminal pngcairo size 900,560 font "DejaVu Sans,11"', "set grid", "set key top left",
              "set logscale x 2", "set xlabel 'requests in flight (closed loop)'"]
    # Throughput, tiny.
    lines = []
    for label, title in servers:
        model = "" if label == "echo" else "tiny"
        rows = series(label, model, TINY, ["rps"])
        if rows:
            p = dat(f"thr_tiny_{label}.dat", rows)
            lines.append(f"'{p}' using 1:2 with linespoints lw 2 title '{title}'")
    if lines:
        out = os.path.join(plots, "throughput-tiny.png")
        script += [f"set output '{out}'", "set ylabel 'requests/s'",
                   "set title 'tiny shard (Linear 768->768 + GELU), 1x10x768 float32'",
                   "plot " + ", ".join(lines)]
        made.append(out)
    # Throughput, trunk, with the in-process limits as flat lines.
    lines = []
    for label, title in servers[:2]:
        rows = series(label, "trunk", TINY, ["rps"])
        if rows:
            p = dat(f"thr_trunk_{label}.dat", rows)
            lines.append(f"'{p}' using 1:2 with linespoints lw 2 title '{title}'")
    b8 = res.inp(best_inproc_label, "trunk", 8, "requests_per_s")
    b1 = res.inp(best_inproc_label, "trunk", 1, "requests_per_s")
    if b8:
        lines.append(f"{b8} with lines dt 2 lw 2 title 'in-process batch 8'")
    if b1:
        lines.append(f"{b1} with lines dt 3 lw 2 title 'in-process batch 1'")
    if lines:
        out = os.path.join(plots, "throughput-trunk.png")
        script += [f"set output '{out}'", "set ylabel 'requests/s'", "set yrange [0:*]",
                   "set title 'trunk shard (4 encoder layers, d=768), 1x10x768 float32; splitlearnd batching 8, delay 0'",
                   "plot " + ", ".join(lines), "set autoscale y"]
        made.append(out)
    # Latency percentiles vs concurrency.
    for model, title in (("tiny", "tiny shard"), ("trunk", "trunk shard")):
        lines = []
        for i, (label, name) in enumerate(servers):
            m = "" if label == "echo" else model
            if label == "echo" and model == "trunk":
                continue
            rows = series(label, m, TINY, ["p50_us", "p90_us", "p99_us"])
            if rows:
                p = dat(f"lat_{model}_{label}.dat", rows)
                lines.append(f"'{p}' using 1:2 with linespoints lw 2 lc {i + 1} dt 1 title '{name} p50'")
                lines.append(f"'{p}' using 1:3 with linespoints lw 1 lc {i + 1} dt 2 title '{name} p90'")
                lines.append(f"'{p}' using 1:4 with linespoints lw 1 lc {i + 1} dt 3 title '{name} p99'")
        if lines:
            out = os.path.join(plots, f"latency-{model}.png")
            script += [f"set output '{out}'", "set logscale y", "set ylabel 'latency (us, log scale)'",
                       "set key outside right top", "set rmargin 30",
                       f"set title '{title}: latency percentiles, 1x10x768 float32'",
                       "plot " + ", ".join(lines), "unset logscale y", "set key top left inside", "unset rmargin"]
            made.append(out)
    gp = os.path.join(work, "plots.gp")
    with open(gp, "w") as f:
        f.write("\n".join(script) + "\n")
    subprocess.run(["gnuplot", gp], check=True)
    return made


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--doc", required=True)
    ap.add_argument("--plots", required=True)
    ap.add_argument("--quick", default="0")
    ap.add_argument("--duration-s", type=float, default=10)
    ap.add_argument("--warmup-s", type=float, default=2)
    ap.add_argument("--mem-requests", type=int, default=100000)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--client-cpus", default="", help="the load generator's CPU list (empty: unpinned)")
    a = ap.parse_args()
    WARMUP_S[0] = a.warmup_s
    res = Results(a.work)
    n = a.nproc
    S = "splitlearnd"
    default_inp = f"intra1-blas{n}"

    # ---------------------------------------------------------------- the checks
    # Every check is judged on the side-by-side block of the run (servers up together;
    # latencies call by call, throughputs in alternating pairs); sections 2 to 5 give the
    # per-server curves.
    def median(xs):
        xs = sorted(x for x in xs if x is not None and x >= 0)
        if not xs:
            return None
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    echo_p50 = res.val("sbs-echo", "", TINY, 1, "p50_us")
    inp_before = res.inp("sbs-before", "tiny", 1, "p50_us")
    inp_after = res.inp("sbs-after", "tiny", 1, "p50_us")
    inp_tiny1 = None if inp_before is None or inp_after is None else (inp_before + inp_after) / 2
    s_tiny1 = res.val("sbs-splitlearnd", "tiny", TINY, 1, "p50_us")
    s_id1 = res.val("sbs-splitlearnd-identity", "identity", TINY, 1, "p50_us")
    # The in-process forward timed call by call among the others (the load generator runs
    # it through the daemon's adapter): the same forward under the same traffic.
    inp_alt = res.val("sbs-inprocess", "", TINY, 1, "p50_us")
    over = None if s_tiny1 is None or inp_alt is None else s_tiny1 - inp_alt
    own = None if over is None or echo_p50 is None else over - echo_p50
    c1_ok = None if own is None else own <= 50
    # Against a tight in-process loop (just before and after the alternation).
    over_tight = None if s_tiny1 is None or inp_tiny1 is None else s_tiny1 - inp_tiny1
    own_tight = None if over_tight is None or echo_p50 is None else over_tight - echo_p50
    # Same question answered inside each call: latency minus the compute time the daemon
    # itself reports for that call.
    s_net1 = res.val("sbs-splitlearnd", "tiny", TINY, 1, "net_p50_us")
    if s_net1 is not None and s_net1 < 0:
        s_net1 = None
    own_net = None if s_net1 is None or echo_p50 is None else s_net1 - echo_p50

    pairs = []  # per pair: tiny sl, tiny ref, trunk sl, trunk ref, trunk-wait sl, in-process b8
    for i in (1, 2, 3):
        sl, ref = f"{S}-pair{i}", f"reference-pair{i}"
        row = dict(i=i, tiny_s=res.val(sl, "tiny", TINY, 8, "rps"), tiny_r=res.val(ref, "tiny", TINY, 8, "rps"),
                   trunk_s=res.val(sl, "trunk", TINY, 8, "rps"), trunk_r=res.val(ref, "trunk", TINY, 8, "rps"),
                   wait_s=res.val(sl, "trunk-wait", TINY, 8, "rps"), inp8=res.inp(f"pair{i}", "trunk", 8, "requests_per_s"),
                   batch_tiny=res.mean_batch(sl, "tiny", TINY, 8), batch_trunk=res.mean_batch(sl, "trunk", TINY, 8),
                   batch_wait=res.mean_batch(sl, "trunk-wait", TINY, 8))
        row["q_tiny"] = ratio(row["tiny_s"], row["tiny_r"])
        row["q_trunk"] = ratio(row["trunk_s"], row["trunk_r"])
        row["q_wait"] = ratio(row["wait_s"], row["inp8"])
        row["q_inp"] = ratio(row["trunk_s"], row["inp8"])
        pairs.append(row)
    q_tiny = median(r["q_tiny"] for r in pairs)
    q_trunk = median(r["q_trunk"] for r in pairs)
    q_inp_wait = median(r["q_wait"] for r in pairs)
    q_inp = median(r["q_inp"] for r in pairs)
    s_tiny8 = median(r["tiny_s"] for r in pairs)
    s_trunk8 = median(r["trunk_s"] for r in pairs)
    # The reference tuned by hand (torch.set_num_threads(1)), from section 2: shown beside.
    t_tiny8 = res.val("reference-1t", "tiny", TINY, 8, "rps")
    t_trunk8 = res.val("reference-1t", "trunk", TINY, 8, "rps")
    # Per-server curves (section 2), for the thread-settings table.
    r_tiny8 = res.val("reference", "tiny", TINY, 8, "rps")
    r_trunk8 = res.val("reference", "trunk", TINY, 8, "rps")
    echo_main = res.val("echo", "", TINY, 1, "p50_us")

    lone_on = res.val("sbs-lone-on", "trunk", TINY, 1, "p50_us")
    lone_off = res.val("sbs-lone-off", "trunk-nobatch", TINY, 1, "p50_us")
    q_lone = ratio(lone_on, lone_off)
    net_on = res.val("sbs-lone-on", "trunk", TINY, 1, "net_p50_us")
    net_off = res.val("sbs-lone-off", "trunk-nobatch", TINY, 1, "net_p50_us")

    s_big = res.val(S, "identity", BIG, 1, "p50_us")
    e_big = res.val("echo", "", BIG, 1, "p50_us")
    r_big = res.val("reference", "identity", BIG, 1, "p50_us")
    q_big_sections = ratio(s_big, e_big)
    # Judged side by side: one load generator, echo and splitlearnd call by call.
    s_big_sbs = res.val("sbs-big-splitlearnd", "identity", BIG, 1, "p50_us")
    e_big_sbs = res.val("sbs-big-echo", "", BIG, 1, "p50_us")
    q_big = ratio(s_big_sbs, e_big_sbs)

    mem = {r["stage"]: r for r in res.mem}
    def rss(stage):
        return float(mem[stage]["rss_kb"]) if stage in mem and mem[stage]["rss_kb"] else None
    idle, warm, after, after2, peak = (rss("idle"), rss("after-trunk-warmup"), rss("after-count"),
                                      rss("after-count-and-trunk"), rss("peak"))
    q_mem = ratio(after, idle)
    q_mem_warm = ratio(after, warm)
    info = read_kv(os.path.join(a.work, "mem-info.txt"))
    pbytes = {k.split(".")[1]: int(v) for k, v in info.items() if k.startswith("model.") and k.endswith(".parameter_bytes")}
    count_row = next((r for r in res.load if r["label"] == "splitlearnd-mem-count"), None)

    # ---------------------------------------------------------------- thread settings
    cc = a.client_cpus
    settings = [(f"intra1-blas{n}", S, f"intra-op 1, BLAS {n}, tiny and trunk prepacked, tiny on 1 thread (the main config)"),
                ("plain", f"{S}-plain", f"intra-op 1, BLAS {n}, every model on it")]
    if cc:
        settings.append(("open", f"{S}-open", "the main config without CPU lists (every daemon thread on any CPU)"))
    settings += [
                (f"intra2-blas{n}", f"splitlearnd-intra2-blas{n}", f"intra-op 2, BLAS {n}"),
                ("intra1-blas1", "splitlearnd-intra1-blas1", "intra-op 1, BLAS 1")]
    if n >= 2:
        dev = "1" if n == 2 else f"1-{n - 1}"
        settings.append(("pinned", "splitlearnd-pinned",
                         f"pinned: intra-op 1, BLAS {n - 1}, `server.cpus: \"0\"`, `devices.cpu.cpus: \"{dev}\"`"))
    thread_rows = []
    for inp_label, d_label, title in settings:
        thread_rows.append(dict(
            title=title,
            inp_tiny1=res.inp(inp_label, "tiny", 1, "p50_us"),
            inp_trunk1=res.inp(inp_label, "trunk", 1, "p50_us"),
            inp_trunk8=res.inp(inp_label, "trunk", 8, "requests_per_s"),
            tiny1=res.val(d_label, "tiny", TINY, 1, "p50_us"),
            tiny8=res.val(d_label, "tiny", TINY, 8, "rps"),
            trunk1=res.val(d_label, "trunk", TINY, 1, "p50_us"),
            trunk8=res.val(d_label, "trunk", TINY, 8, "rps")))

    def best(key, higher):
        vals = [(r[key], r["title"]) for r in thread_rows if r[key] is not None]
        if not vals:
            return None
        return (max if higher else min)(vals)[1]

    plots = gnuplot(a.work, a.plots, res, S, default_inp)

    # ---------------------------------------------------------------- the document
    machine = open(os.path.join(a.work, "machine.txt")).read().strip()
    cmds = open(os.path.join(a.work, "commands.txt")).read().strip()
    sinfo = read_kv(os.path.join(a.work, "splitlearnd-info.txt"))
    L = []
    w = L.append

    def latency_rows(rows):
        """Table rows (p50/p90/p99 and latency − compute) of 1-in-flight tiny points."""
        for label, model, name in rows:
            r = res.point(label, model, TINY, 1)
            if r:
                netv = float(r.get("net_p50_us") or -1)
                w(f"| {name} | {fmt(float(r['p50_us']))} | {fmt(float(r['p90_us']))} | {fmt(float(r['p99_us']))} | "
                  f"{fmt(netv) if netv >= 0 else ''} |")
    w("# Benchmarks")
    w("")
    w("splitlearnd side by side with the limits it is measured against and the Python server it replaces, "
      "all from **one run of `bench/run.sh`** on the machine below. That machine has 2 cores and is shared "
      "with other engineers' compilers, so absolute numbers move from run to run; **the ratios are the point**. "
      "Nothing here is asserted by a test. This file and the plots in `docs/benchmarks/` are written by the "
      "script; rerun it to refresh them.")
    w("")
    if a.quick == "1":
        w("> **QUICK=1 run**: short load points; for a smoke test, not for quoting.")
        w("")
    w("What runs:")
    w("")
    w("- **splitlearnd**: the daemon (Release build), one CPU device queue; `tiny` and `trunk` with batching on "
      "(`max_batch_size: 8`, `max_delay_us: 0`), `trunk-nobatch` (the same file, `max_batch_size: 1`), `trunk-wait` "
      "(the same file, `max_batch_size: 8`, `max_delay_us: 5000`), `identity`. Process thread settings intra-op 1, BLAS = cores (the defaults); `tiny` and the three trunk models have their Linear weights packed at load for the daemon's own kernel (`models[].prepack_linear: true`, see docs/configuration.md); `tiny` runs its forwards on one thread (`models[].blas_threads: 1`, see docs/threading.md), the trunk models on the device's BLAS count, which their packed layers use too. Every model has `optimize: true` (frozen, TorchScript's inference passes)."
      + (f" CPU layout: `server.cpus: \"{cc}\"` (gRPC's threads, the loader and housekeeping on the load generator's CPU), "
         f"`devices.cpu.cpus: \"0-{n - 1}\"` (the device worker and OpenBLAS's helpers on any CPU), so that the scheduler "
         "keeps the worker off the CPU where the network work runs (docs/threading.md)." if cc else ""))
    w("- **in-process** (`bench/inprocess`): `forward()` called directly through libtorch on the same optimized "
      "module, same thread settings (splitlearnd's own `ConfigureTorchThreads`): the compute limit. For check 1 the "
      "load generator also runs the tiny forward in-process itself (`loadgen --alternate LABEL=inprocess:FILE`, "
      "through the daemon's adapter), call by call among its calls to the servers.")
    w("- **echo** (`bench/echo`): a C++ gRPC callback server whose `Compute` returns the request bytes: the "
      "transport limit.")
    w("- **reference** (`bench/reference_server.py`): the Python design splitlearnd replaces (grpc.aio, numpy "
      "codec, forward through `run_in_executor` on a one-thread executor, no batching) with libtorch's thread "
      "settings left as torch sets them, as the replaced server ran; **reference, tuned** is the same server with "
      "`torch.set_num_threads(1)`, what a user who knew about the two thread pools could get from it. The "
      "checks are judged against the first; the ratio against the second is given beside each.")
    w("- **load** (`bench/loadgen`): closed loop, N calls in flight on one channel, gRPC callback client API "
      "(generic stub, the request serialized once, `grpc.minimal_stack` channel); "
      f"{a.warmup_s:g} s warmup then {a.duration_s:g} s measured per point; the client shares the 2 cores with the "
      "server. Requests are legacy `ComputeRequest`s (float32 `data` + `shape`)."
      + (f" The load generator runs on CPU {cc} only (`taskset -c {cc}`), against every server alike: it stands in "
         "for clients on other machines, and one CPU is the share of this machine it takes; the servers may use "
         "every CPU." if cc else ""))
    w("")
    w("Shards (written by `splitlearnd make-demo-shard`, random weights): **tiny** = Linear 768->768 + GELU; "
      "**trunk** = 4 transformer encoder layers, d=768, 12 heads, ffn 3072; **identity** = returns its input. "
      "Inputs are 1x10x768 float32 (30 KiB) unless said otherwise; 32 MiB inputs are 8x1024x1024.")
    w("")
    w("How to read them:")
    w("")
    w("- The machine is a 2-vCPU VM that other engineers compile on; the load average of each point is in the "
      "tables. In sections 2 to 5 the servers run one after the other, minutes apart, so a ratio between them "
      "also carries the change in background load; the checks are therefore taken from a side-by-side block "
      "(the compared servers up together, latencies call by call with `loadgen --alternate`, throughputs in "
      "alternating pairs). Where a check can be answered inside one call it is too (1′: latency minus the "
      "compute time the daemon reports for that call).")
    w("- Thread settings dominate everything on 2 shared cores. With 2 OpenBLAS threads a matrix multiply is "
      "split in two; when the second half's thread is preempted (by the gRPC threads, the load generator or "
      "anything else), the caller waits for it spinning in `sched_yield`, and idle OpenBLAS threads spin the "
      "same way before they sleep. A `perf record` of the daemon under the tiny load (taken while writing this "
      "benchmark, not part of the script) put about 45 % of its CPU samples in `sched_yield` and the "
      "scheduler. The *Thread settings* section measures the alternatives.")
    w("- `loadgen` itself costs CPU on the same 2 cores (about 120–300 µs of CPU per call here, mostly in "
      "gRPC and the kernel), as any client on the same machine would.")
    w("")
    w("## Machine")
    w("")
    w("```")
    w(machine)
    if sinfo.get("torch"):
        w("daemon: " + sinfo["torch"])
    w("```")
    w("")
    w("## The checks")
    w("")
    w("| # | check | measured | target | met |")
    w("|---|---|---|---|---|")
    w(f"| 1 | tiny, 1 in flight: splitlearnd p50 − in-process p50 vs echo p50 + 50 µs (echo, splitlearnd and the "
      f"in-process forward call by call) | "
      f"{fmt(s_tiny1)} − {fmt(inp_alt)} = **{fmt(over)} µs** vs {fmt(echo_p50)} + 50 = {fmt(None if echo_p50 is None else echo_p50 + 50)} µs "
      f"(daemon's own cost {fmt(own)} µs) | ≤ echo + 50 µs | {yes(c1_ok)} |")
    if own_tight is not None:
        w(f"| 1″ | same against a tight in-process loop (just before and after the alternation) | "
          f"{fmt(s_tiny1)} − {fmt(inp_tiny1)} = **{fmt(over_tight)} µs** vs {fmt(echo_p50 + 50)} µs "
          f"(daemon's own cost {fmt(own_tight)} µs) | ≤ echo + 50 µs | {yes(own_tight <= 50)} |")
    if own_net is not None:
        w(f"| 1′ | same, per call: p50 of (latency − compute time the daemon reports) vs echo p50 + 50 µs | "
          f"**{fmt(s_net1)} µs** vs {fmt(echo_p50 + 50)} µs (daemon's own cost {fmt(own_net)} µs) | ≤ echo + 50 µs | "
          f"{yes(own_net <= 50)} |")
    w(f"| 2a | tiny, 8 in flight: splitlearnd / reference req/s, median of 3 alternating pairs | "
      + "; ".join(f"{fmt(r['tiny_s'])} / {fmt(r['tiny_r'])} = {fmt(r['q_tiny'], 2)}×" for r in pairs)
      + f"; **{fmt(q_tiny, 2)}×** (vs reference, tuned, section 2: {fmt(ratio(s_tiny8, t_tiny8), 2)}×) | ≥ 4× | "
      f"{yes(None if q_tiny is None else q_tiny >= 4)} |")
    w(f"| 2b | trunk, 8 in flight, batching on: splitlearnd / reference req/s, median of 3 alternating pairs | "
      + "; ".join(f"{fmt(r['trunk_s'], 1)} / {fmt(r['trunk_r'], 1)} = {fmt(r['q_trunk'], 2)}×" for r in pairs)
      + f"; **{fmt(q_trunk, 2)}×** (vs reference, tuned, section 2: {fmt(ratio(s_trunk8, t_trunk8), 2)}×) | ≥ 2.5× | "
      f"{yes(None if q_trunk is None else q_trunk >= 2.5)} |")
    # 2c is judged on the throughput setting (a delay window of 5 ms, 9 % of one trunk
    # forward); with max_delay_us 0 a batch holds only the calls already waiting when the
    # worker comes free, which is what the lone client (3) needs. Both are shown.
    w(f"| 2c | trunk, 8 in flight, batching on with `max_delay_us: 5000` (model `trunk-wait`): splitlearnd / in-process "
      f"batch-8 req/s, median of 3 alternating pairs | "
      + "; ".join(f"{fmt(r['wait_s'], 1)} / {fmt(r['inp8'], 1)} = {fmt(None if r['q_wait'] is None else 100 * r['q_wait'], 1)} %" for r in pairs)
      + f"; **{fmt(None if q_inp_wait is None else 100 * q_inp_wait, 1)} %** | ≥ 85 % | "
      f"{yes(None if q_inp_wait is None else q_inp_wait >= 0.85)} |")
    w(f"| 2c′ | same with `max_delay_us: 0` (model `trunk`) | "
      + "; ".join(f"{fmt(None if r['q_inp'] is None else 100 * r['q_inp'], 1)} %" for r in pairs)
      + f"; **{fmt(None if q_inp is None else 100 * q_inp, 1)} %** | ≥ 85 % | {yes(None if q_inp is None else q_inp >= 0.85)} |")
    w(f"| 3 | trunk, 1 in flight, p50 batching on (delay 0) / off, call by call in one daemon | "
      f"{fmt(lone_on)} / {fmt(lone_off)} µs = **{fmt(q_lone, 3)}**; outside the forward: {fmt(net_on)} vs {fmt(net_off)} µs | ≤ 1.05 | "
      f"{yes(None if q_lone is None else q_lone <= 1.05)} |")
    w(f"| 4 | identity, 32 MiB in and out, 1 in flight: splitlearnd / echo p50, call by call | {fmt(s_big_sbs)} / {fmt(e_big_sbs)} µs = **{fmt(q_big, 2)}×** "
      f"(sections 4 and 2, minutes apart: {fmt(s_big)} / {fmt(e_big)} µs = {fmt(q_big_sections, 2)}×) | ≤ 1.5× | "
      f"{yes(None if q_big is None else q_big <= 1.5)} |")
    w(f"| 5 | RSS after {a.mem_requests:,} requests / RSS idle with the trunk loaded | {fmt(mib(after), 1)} / {fmt(mib(idle), 1)} MiB = **{fmt(q_mem, 3)}** "
      f"(vs after trunk warm-up {fmt(mib(warm), 1)} MiB: {fmt(q_mem_warm, 3)}); trunk parameters {fmt(None if 'trunk' not in pbytes else pbytes['trunk'] / 2**20, 1)} MiB | ≤ 1.05 | "
      f"{yes(None if q_mem is None else q_mem <= 1.05)} |")
    w("")
    w("Checks 1 to 4 come from the side-by-side block at the end of the run: echo, splitlearnd (the default "
      "config, `$WORK/t1.yaml`) and the reference up at the same time. For 1, 3 and 4 one load generator sends its "
      "calls to the compared endpoints in turn (`loadgen --alternate`), so each sees the same machine; for 2 the "
      "servers get half-length points in turn, three pairs in the order reference/splitlearnd, "
      "splitlearnd/reference, reference/splitlearnd (in-process/splitlearnd likewise for 2c), and the median pair "
      "is quoted. Before the pairs the reference serves one uncounted point of each shard, as splitlearnd already "
      "has in checks 1 and 3, so that both are compared warm (the reference's tiny rate roughly doubles once it has "
      "served the trunk). Check 5 is its own daemon.")
    w("")

    # 1
    w("## 1. Overhead of the daemon (tiny shard, 1 in flight)")
    w("")
    w("Side by side, call by call (one load generator, the four endpoints in turn; the in-process forward is run by "
      "the load generator itself through the daemon's TorchScript adapter, with the daemon's settings for tiny):")
    w("")
    w("| what | p50 µs | p90 µs | p99 µs | p50 of latency − reported compute µs |")
    w("|---|---|---|---|---|")
    w(f"| in-process forward, batch 1, call by call among the others | {fmt(inp_alt)} | "
      f"{fmt(res.val('sbs-inprocess', '', TINY, 1, 'p90_us'))} | {fmt(res.val('sbs-inprocess', '', TINY, 1, 'p99_us'))} | |")
    w(f"| in-process forward, batch 1, tight loop before / after | {fmt(inp_before)} / {fmt(inp_after)} | "
      f"{fmt(res.inp('sbs-before', 'tiny', 1, 'p90_us'))} / {fmt(res.inp('sbs-after', 'tiny', 1, 'p90_us'))} | | |")
    inp_gap = res.inp("sbs-gap", "tiny", 1, "p50_us")
    if inp_gap is not None:
        w(f"| in-process forward, batch 1, 250 µs sleep before each (diagnostic) | {fmt(inp_gap)} | "
          f"{fmt(res.inp('sbs-gap', 'tiny', 1, 'p90_us'))} | | |")
    latency_rows((("sbs-echo", "", "echo round trip (same bytes)"),
                  ("sbs-splitlearnd-identity", "identity", "splitlearnd, identity shard"),
                  ("sbs-splitlearnd", "tiny", "splitlearnd, tiny shard")))
    w("")
    if own is not None:
        w(f"splitlearnd's p50 minus the in-process forward's, both timed call by call in one sequence, is {fmt(over)} µs; "
          f"the echo server's round trip for the same bytes is {fmt(echo_p50)} µs, so the daemon's own share is "
          f"**{fmt(own)} µs** at p50 (target: ≤ 50 µs). Answered inside each call instead (latency minus the compute "
          f"time the daemon reports: decode, queue hand-off to the device worker and back, encode) it is "
          f"{fmt(own_net)} µs, and the identity shard, whose forward is near zero, shows the same: {fmt(s_id1)} µs vs "
          f"echo {fmt(echo_p50)} µs ({signed(None if s_id1 is None or echo_p50 is None else s_id1 - echo_p50)} µs).")
        w("")
        if own_tight is not None:
            w(f"Against a tight in-process loop the share would be {fmt(own_tight)} µs: a forward run back to back "
              f"({fmt(inp_tiny1)} µs at p50) finds the CPU's caches and predictors warm, which no server answering "
              f"one client at a time can, since the network round trip runs between two of its forwards. The "
              f"in-process forward timed among the round trips pays the same as the daemon's"
              + (f", and the diagnostic row shows part of it without any traffic: with a 250 µs sleep before each "
                 f"call the loop's forward takes {fmt(inp_gap)} µs" if inp_gap is not None else "")
              + ". The check is judged on the forward timed call by call; the tight loop is row 1″ of the checks.")
            w("")
    w("Separately, each server alone (section 2's points at 1 in flight):")
    w("")
    w("| what | p50 µs | p90 µs | p99 µs | p50 of latency − reported compute µs |")
    w("|---|---|---|---|---|")
    w(f"| in-process forward, batch 1 | {fmt(res.inp(default_inp, 'tiny', 1, 'p50_us'))} | {fmt(res.inp(default_inp, 'tiny', 1, 'p90_us'))} | | |")
    latency_rows((("echo", "", "echo round trip (same bytes)"), (S, "identity", "splitlearnd, identity shard"),
                  (S, "tiny", "splitlearnd, tiny shard"), ("reference", "tiny", "reference, tiny shard")))
    w("")

    # 2 side by side
    w("## 2′. Throughput side by side (8 in flight, alternating pairs)")
    w("")
    w("| pair | tiny: splitlearnd req/s | tiny: reference req/s | ratio | trunk: splitlearnd req/s | trunk: reference req/s | "
      "ratio | trunk-wait: splitlearnd req/s | in-process batch 8 req/s | ratio | mean batch tiny / trunk / trunk-wait |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in pairs:
        w(f"| {r['i']} | {fmt(r['tiny_s'], 1)} | {fmt(r['tiny_r'], 1)} | {fmt(r['q_tiny'], 2)}× | {fmt(r['trunk_s'], 1)} | "
          f"{fmt(r['trunk_r'], 1)} | {fmt(r['q_trunk'], 2)}× | {fmt(r['wait_s'], 1)} | {fmt(r['inp8'], 1)} | "
          f"{fmt(None if r['q_wait'] is None else 100 * r['q_wait'], 1)} % | {fmt(r['batch_tiny'], 2)} / "
          f"{fmt(r['batch_trunk'], 2)} / {fmt(r['batch_wait'], 2)} |")
    w("")

    # 2
    w("## 2. Throughput and latency vs requests in flight")
    w("")
    for model, title in (("tiny", "tiny shard"), ("trunk", "trunk shard (splitlearnd: batching 8, delay 0)")):
        w(f"**{title}**, 1x10x768 float32")
        w("")
        w("| server | in flight | req/s | p50 µs | p90 µs | p99 µs | max µs | errors | server CPU µs/req | mean batch | load avg |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        rows = [(S, model, "splitlearnd"), ("reference", model, "reference"),
                ("reference-1t", model, "reference, tuned"), ("echo", "", "echo")]
        if model == "trunk":
            rows = [(S, "trunk", "splitlearnd"), (S, "trunk-nobatch", "splitlearnd, batching off"),
                    (S, "trunk-wait", "splitlearnd, max_delay_us 5000"), ("reference", "trunk", "reference"),
                    ("reference-1t", "trunk", "reference, tuned")]
        for label, m, name in rows:
            for c in res.concurrencies(label, m, TINY):
                r = res.point(label, m, TINY, c)
                w(f"| {name} | {c} | {fmt(float(r['rps']), 1)} | {fmt(float(r['p50_us']))} | {fmt(float(r['p90_us']))} | "
                  f"{fmt(float(r['p99_us']))} | {fmt(float(r['max_us']))} | {int(r['errors']) + int(r['bad'])} | "
                  f"{fmt(res.cpu_per_req_us(label, m, TINY, c))} | {fmt(res.mean_batch(label, m, TINY, c), 2) if label == S else ''} | "
                  f"{fmt(res.load_avg(label, m, TINY, c), 1)} |")
        w("")
    w("In-process forward (the compute limit), threads as the daemon's default "
      f"(intra-op 1, BLAS {n}):")
    w("")
    w("| shard | batch | p50 µs per forward | requests/s |")
    w("|---|---|---|---|")
    for m in ("tiny", "trunk"):
        for b in (1, 8):
            w(f"| {m} | {b} | {fmt(res.inp(default_inp, m, b, 'p50_us'))} | {fmt(res.inp(default_inp, m, b, 'requests_per_s'), 1)} |")
    w("")
    w("Load avg is the machine's 1-minute load average when the point started (2 cores: anything above 2 "
      "means other work was queued for the CPUs).")
    w("")
    w("Server CPU µs/req is the server process's user+system CPU time (from `/proc/PID/stat`) over the point, "
      "warmup included, divided by the calls served in it; the rest of the 2 cores goes to the load generator "
      "(and to whatever else the shared machine runs). Mean batch is requests per forward on the daemon's CPU "
      "device over the point (GetServiceInfo `device.cpu.requests_run` / `batches_run`).")
    w("")

    # 3
    w("## 3. Batching and the lone client")
    w("")
    w("The same trunk file loaded twice in one daemon: `trunk` (max_batch_size 8, max_delay_us 0) and "
      "`trunk-nobatch` (max_batch_size 1), 1 call in flight, one load generator sending its calls to the two in "
      "turn, so both see the same machine. With one call in flight and `max_delay_us: 0` both run the same code "
      "path (a batch of one, no wait), so any difference is noise; the last column takes the daemon's reported "
      "compute time out of each call, leaving the time spent around the forward (queue, hand-offs, codec, transport).")
    w("")
    w("| model | p50 µs | p90 µs | p99 µs | latency − compute p50 µs |")
    w("|---|---|---|---|---|")
    for label, model in (("sbs-lone-on", "trunk"), ("sbs-lone-off", "trunk-nobatch")):
        r = res.point(label, model, TINY, 1)
        if r:
            w(f"| {model} | {fmt(float(r['p50_us']))} | {fmt(float(r['p90_us']))} | {fmt(float(r['p99_us']))} | "
              f"{fmt(float(r['net_p50_us']))} |")
    w(f"| on / off | {fmt(q_lone, 3)} | | | |")
    w("")

    # 4
    w("## 4. Large payloads (32 MiB float32 in, 32 MiB out, 1 in flight)")
    w("")
    w("| server | p50 ms | p99 ms | req/s | vs echo (p50) |")
    w("|---|---|---|---|---|")
    for label, model, name in (("echo", "", "echo"), (S, "identity", "splitlearnd, identity shard"),
                               ("reference", "identity", "reference, identity shard")):
        r = res.point(label, model, BIG, 1)
        if r:
            w(f"| {name} | {fmt(float(r['p50_us']) / 1000, 1)} | {fmt(float(r['p99_us']) / 1000, 1)} | "
              f"{fmt(float(r['rps']), 2)} | {fmt(ratio(float(r['p50_us']), e_big), 2)}× |")
    w("")

    # 5
    w("## 5. Memory")
    w("")
    w("A fresh daemon with two models, `trunk` (batching on) and `tiny`. RSS is `VmRSS` from `/proc/PID/status`.")
    w("")
    w("| stage | RSS MiB | requests served so far |")
    w("|---|---|---|")
    names = {"idle": "idle, models loaded and warmed up, no request yet",
             "after-trunk-warmup": "after one load point on the trunk (8 in flight)",
             "after-count": f"after {a.mem_requests:,} more requests (tiny shard, 8 in flight)",
             "after-count-and-trunk": "after another load point on the trunk",
             "peak": "peak (VmHWM)"}
    for r in res.mem:
        w(f"| {names.get(r['stage'], r['stage'])} | {fmt(mib(float(r['rss_kb'])), 1)} | {r['requests_total'] or ''} |")
    w("")
    if pbytes:
        w("Parameter bytes (GetServiceInfo `custom_info` `model.<id>.parameter_bytes`): " +
          ", ".join(f"{k} {v:,} B ({v / 2**20:.1f} MiB)" for k, v in sorted(pbytes.items())) + ".")
        w("")
    if count_row:
        w(f"The {a.mem_requests:,} requests were sent to the **tiny** shard (the trunk serves about "
          f"{fmt(s_trunk8)} req/s here, so {a.mem_requests:,} trunk requests would take "
          f"{fmt(None if not s_trunk8 else a.mem_requests / s_trunk8 / 60, 0)} minutes); they ran at "
          f"{fmt(float(count_row['rps']))} req/s with {int(count_row['errors']) + int(count_row['bad'])} errors. "
          "The trunk got load points before and after them.")
        w("")

    # threads
    w("## Thread settings")
    w("")
    w("`devices.cpu.intra_op_threads` (libtorch's OpenMP pool) and `devices.cpu.blas_threads` (OpenBLAS's own pool), "
      "same shards, in-process and through the daemon:")
    w("")
    w("| setting | in-process tiny b1 p50 µs | in-process trunk b1 p50 µs | in-process trunk b8 req/s | "
      "daemon tiny 1 in flight p50 µs | daemon tiny 8 in flight req/s | daemon trunk 1 in flight p50 µs | "
      "daemon trunk 8 in flight req/s |")
    w("|---|---|---|---|---|---|---|---|")
    for r in thread_rows:
        w(f"| {r['title']} | {fmt(r['inp_tiny1'])} | {fmt(r['inp_trunk1'])} | {fmt(r['inp_trunk8'], 1)} | {fmt(r['tiny1'])} | "
          f"{fmt(r['tiny8'])} | {fmt(r['trunk1'])} | {fmt(r['trunk8'], 1)} |")
    w("")
    w("The checks that depend on the thread settings, per setting (each daemon run is compared with the "
      "in-process run of the same setting, timed just before it; the reference and echo numbers are the ones above):")
    w("")
    w("| setting | 1′ daemon's own cost µs (tiny, latency − compute − echo, p50) | 2a tiny 8 in flight / reference | "
      "2b trunk 8 in flight / reference | 2c trunk 8 in flight / in-process batch 8 | trunk 1 in flight p50 / in-process batch 1 p50 |")
    w("|---|---|---|---|---|---|")
    for inp_label, d_label, title in settings:
        net = res.val(d_label, "tiny", TINY, 1, "net_p50_us")
        own_s = None if net is None or net < 0 or echo_main is None else net - echo_main
        t8 = res.val(d_label, "tiny", TINY, 8, "rps")
        k8 = res.val(d_label, "trunk", TINY, 8, "rps")
        k1 = res.val(d_label, "trunk", TINY, 1, "p50_us")
        i8 = res.inp(inp_label, "trunk", 8, "requests_per_s")
        i1 = res.inp(inp_label, "trunk", 1, "p50_us")
        q2c = ratio(k8, i8)
        w(f"| {title} | {fmt(own_s)} | {fmt(ratio(t8, r_tiny8), 2)}× | {fmt(ratio(k8, r_trunk8), 2)}× | "
          f"{fmt(None if q2c is None else 100 * q2c, 1)} % | {fmt(ratio(k1, i1), 2)}× |")
    w("")
    w(f"Best per column: trunk 8 in flight → {best('trunk8', True)}; tiny 8 in flight → {best('tiny8', True)}; "
      f"trunk 1 in flight → {best('trunk1', False)}; tiny 1 in flight → {best('tiny1', False)}.")
    w("")

    # plots
    if plots:
        w("## Plots")
        w("")
        doc_dir = os.path.dirname(os.path.abspath(a.doc))
        for p in plots:
            rel = os.path.relpath(p, doc_dir)
            w(f"![{os.path.basename(p)}]({rel})")
            w("")

    # closing note
    w("## Closing note: the ratios")
    w("")
    notes = []
    if own is not None:
        notes.append(f"1. Overhead: splitlearnd adds {fmt(over)} µs to a {fmt(inp_alt)} µs forward (in-process, timed call "
                     f"by call among the round trips); the bare gRPC round "
                     f"trip is {fmt(echo_p50)} µs, leaving {fmt(own)} µs for the daemon itself "
                     f"({'within' if c1_ok else 'over'} the 50 µs budget; against a tight in-process loop "
                     f"{fmt(own_tight)} µs)"
                     + (f"; measured per call against the compute time the daemon reports, its own cost is "
                        f"{fmt(own_net)} µs." if own_net is not None else "."))
    refs = [r["tiny_r"] for r in pairs if r["tiny_r"]]
    ref_spread = (f" The reference's own rate for tiny moved between {fmt(min(refs))} and {fmt(max(refs))} req/s "
                  f"from pair to pair (splitlearnd's between "
                  f"{fmt(min(r['tiny_s'] for r in pairs if r['tiny_s']))} and {fmt(max(r['tiny_s'] for r in pairs if r['tiny_s']))}); "
                  f"the reference tuned by hand did {fmt(t_tiny8)} req/s alone in section 2."
                  if refs and max(refs) > 1.5 * min(refs) else "")
    if q_tiny is not None:
        notes.append(f"2. Throughput: tiny at 8 in flight {fmt(q_tiny, 2)}× the reference (target 4×; "
                     f"{fmt(ratio(s_tiny8, t_tiny8), 2)}× the reference tuned by hand); trunk at 8 in "
                     f"flight {fmt(q_trunk, 2)}× the reference (target 2.5×; {fmt(ratio(s_trunk8, t_trunk8), 2)}× tuned); with "
                     f"`max_delay_us: 5000` it reaches {fmt(None if q_inp_wait is None else 100 * q_inp_wait, 1)} % of the in-process "
                     f"batch-8 forward (target 85 %), with `max_delay_us: 0` {fmt(None if q_inp is None else 100 * q_inp, 1)} %."
                     + ref_spread)
    if q_lone is not None:
        notes.append(f"3. Lone client: trunk p50 with batching on (delay 0) is {fmt(q_lone, 3)}× batching off (target ≤ 1.05); "
                     f"the time outside the forward is {fmt(net_on)} vs {fmt(net_off)} µs.")
    if q_big is not None:
        notes.append(f"4. Large payloads: 32 MiB round trip {fmt(q_big, 2)}× the echo server's, call by call (target ≤ 1.5×; "
                     f"{fmt(q_big_sections, 2)}× between the separate points of sections 4 and 2)"
                     + (f"; the reference takes {fmt(ratio(r_big, e_big), 2)}× there." if r_big else "."))
    if q_mem is not None:
        notes.append(f"5. Memory: RSS after {a.mem_requests:,} requests is {fmt(q_mem, 3)}× the idle RSS with the trunk "
                     f"loaded ({fmt(q_mem_warm, 3)}× the RSS after the first trunk load point); the trunk's parameters are "
                     f"{fmt(None if 'trunk' not in pbytes else pbytes['trunk'] / 2**20, 1)} MiB.")
    for line in notes:
        w(line)
    w("")
    w("Numbers come from a single run on a shared 2-core virtual machine; rerun `bench/run.sh` to check them.")
    w("")

    # commands
    w("## How to run, and the exact commands of this run")
    w("")
    w("```sh")
    w("cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2")
    w("bench/run.sh build            # full run, about 20 minutes on 2 cores")
    w("QUICK=1 bench/run.sh build    # about 9 minutes, smoke test only")
    w("```")
    w("")
    w("`$BUILD` is the build folder and `$WORK` the scratch folder of the run (configs, shards, logs, raw CSVs; "
      "the CSVs are also copied to `docs/benchmarks/`). Each server runs on `127.0.0.1` on a free port; "
      "`ADDR` below stands for the port it printed. The daemon configs are `$WORK/t1.yaml` (intra-op 1, "
      f"BLAS {n}, `tiny` and the trunk models with prepacked Linear weights, `tiny` on one BLAS thread), `t1-plain.yaml` (the same without the per-model settings), "
      + ("`t1-open.yaml` (the same as `t1.yaml` without CPU lists), " if cc else "")
      + f"`t2.yaml` (intra-op 2, BLAS {n}), `t3.yaml` (intra-op 1, BLAS 1), `t4.yaml` (pinned) and `mem.yaml`; "
      + ("all but `t1-open.yaml` and `t4.yaml` with the main CPU layout; " if cc else "")
      + "each listens on `127.0.0.1:0` with `max_message_bytes` 256 MiB.")
    w("")
    t1 = os.path.join(a.work, "t1.yaml")
    if os.path.exists(t1):
        w("`$WORK/t1.yaml`, the daemon config of the main measurements (the others differ only in the thread "
          "counts, or list only `trunk` and `tiny`):")
        w("")
        w("```yaml")
        w(open(t1).read().strip())
        w("```")
        w("")
    w("```sh")
    import re
    w(re.sub(r"127\.0\.0\.1:[1-9][0-9]*", "ADDR", cmds))
    w("```")
    w("")
    # Sections measured by other scripts (bench/torch_versions.sh) follow a marker line
    # in the document; a new report keeps them.
    kept = ""
    if os.path.exists(a.doc):
        old = open(a.doc).read()
        at = old.find(KEPT_MARKER)
        if at >= 0:
            kept = old[at:]
    with open(a.doc, "w") as f:
        f.write("\n".join(L))
        if kept:
            f.write("\n" + kept)
    for name in ("loadgen.csv", "inprocess.csv", "server.csv", "memory.csv"):
        src = os.path.join(a.work, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.plots, name))
    print(f"report.py: wrote {a.doc} and {len(plots)} plot(s)")


KEPT_MARKER = "<!-- Sections below are measured by other scripts; bench/run.sh keeps them. -->"


if __name__ == "__main__":
    main()
