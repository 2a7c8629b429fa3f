"""Makes docs/metrics-example.png: the daemon's own /metrics, scraped once a second
while a load generator steps from 1 to 4 to 8 concurrent clients (with a burst of
requests for an unknown model in the middle), turned into rates and quantiles the way
Prometheus would (rate() over a window, histogram_quantile() with linear interpolation
inside a bucket), and plotted with gnuplot.

Not a test: run it by hand after a build.
    SPLITLEARND_BIN=build/daemon/splitlearnd /usr/bin/python3 tests/e2e/metrics/metrics_plot.py docs/metrics-example.png
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from splitlearnd_client import Client, RetryPolicy, SplitlearndError  # noqa: E402
from splitlearnd_launcher import Splitlearnd, model_entry  # noqa: E402

torch.set_num_threads(1)
WIDTH = 512
PHASES = [(1, 20), (4, 20), (8, 20)]  # (clients, seconds)
WINDOW = 5  # seconds of the rate() window


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, 4 * WIDTH)
        self.fc2 = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def quantile(q, buckets):
    """histogram_quantile over [(upper_bound, cumulative_count)], sorted."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_bound, prev_count = bound, count
    return prev_bound


def series(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def bucket_deltas(new, old, family, model):
    out = {}
    for (n, ls), v in new.items():
        d = dict(ls)
        if n == family + "_bucket" and d.get("model") == model:
            out[float(d["le"])] = v - old.get((n, ls), 0.0)
    return sorted(out.items())


def main(out_png):
    workdir = tempfile.mkdtemp(prefix="splitlearnd-plot-")
    try:
        torch.manual_seed(0)
        torch.jit.script(Mlp().eval()).save(os.path.join(workdir, "mlp.pt"))
        daemon = Splitlearnd([model_entry("mlp", "mlp.pt", [1, WIDTH],
                                          batching={"max_batch_size": 8, "max_delay_us": 2000, "wait": "fixed"})],
                             workdir=workdir, server={"metrics_listen": "127.0.0.1:0"},
                             devices={"cpu": {"intra_op_threads": 1, "blas_threads": 1}})
        daemon.start()
        stop = threading.Event()
        active = [0]

        def worker(index):
            with Client(daemon.address, retry=RetryPolicy(max_attempts=1)) as client:
                x = torch.randn(1, WIDTH)
                while not stop.is_set():
                    if index >= active[0]:
                        time.sleep(0.01)
                        continue
                    client.compute(x, model_id="mlp")

        def bad_requests():
            with Client(daemon.address, retry=RetryPolicy(max_attempts=1)) as client:
                while not stop.is_set():
                    if burst.is_set():
                        try:
                            client.compute(torch.randn(1, WIDTH), model_id="missing")
                        except SplitlearndError:
                            pass
                    time.sleep(0.02)

        burst = threading.Event()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(max(c for c, _ in PHASES))]
        threads.append(threading.Thread(target=bad_requests))
        for t in threads:
            t.start()
        scrapes = []
        started = time.monotonic()
        try:
            for clients, seconds in PHASES:
                active[0] = clients
                phase_end = time.monotonic() + seconds
                while time.monotonic() < phase_end:
                    elapsed = time.monotonic() - started
                    if clients == 4:
                        (burst.set if 5 < elapsed - 20 < 12 else burst.clear)()
                    scrapes.append((elapsed, daemon.metrics(timeout_s=10)))
                    time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
            daemon.stop()

        data = os.path.join(workdir, "metrics.dat")
        with open(data, "w") as f:
            f.write("# t ok/s notfound/s p50_total_ms p99_total_ms p99_queue_ms p99_compute_ms mean_batch clients\n")
            for i in range(WINDOW, len(scrapes)):
                (t1, new), (t0, old) = scrapes[i], scrapes[i - WINDOW]
                dt = t1 - t0
                ok = (series(new, "splitlearnd_requests_total", model="mlp", code="OK") -
                      series(old, "splitlearnd_requests_total", model="mlp", code="OK")) / dt
                nf = (series(new, "splitlearnd_requests_total", code="NOT_FOUND") -
                      series(old, "splitlearnd_requests_total", code="NOT_FOUND")) / dt
                total = bucket_deltas(new, old, "splitlearnd_request_duration_seconds", "mlp")
                queue = bucket_deltas(new, old, "splitlearnd_request_queue_seconds", "mlp")
                compute = bucket_deltas(new, old, "splitlearnd_request_compute_seconds", "mlp")
                batches = (series(new, "splitlearnd_batch_size_count", device="cpu") -
                           series(old, "splitlearnd_batch_size_count", device="cpu"))
                jobs = (series(new, "splitlearnd_batch_size_sum", device="cpu") -
                        series(old, "splitlearnd_batch_size_sum", device="cpu"))
                clients = next(c for c, _ in PHASES[min(int(t1 // 20), len(PHASES) - 1):])
                f.write(f"{t1:.1f} {ok:.1f} {nf:.1f} {1e3 * quantile(0.5, total):.3f} "
                        f"{1e3 * quantile(0.99, total):.3f} {1e3 * quantile(0.99, queue):.3f} "
                        f"{1e3 * quantile(0.99, compute):.3f} {jobs / max(batches, 1):.2f} {clients}\n")
        script = f"""
set terminal pngcairo noenhanced size 1100,900 font "DejaVu Sans,10"
set output "{out_png}"
set multiplot layout 3,1 title "splitlearnd /metrics under a stepped load (1, 4, 8 clients; {WINDOW} s rate window)"
set key outside right
set grid
set xrange [{WINDOW}:*]
set ylabel "requests / s"
plot "{data}" using 1:2 with lines lw 2 title "OK (model mlp)", "" using 1:3 with lines lw 2 title "NOT_FOUND"
set ylabel "milliseconds"
set logscale y
plot "{data}" using 1:4 with lines lw 2 title "p50 total", "" using 1:5 with lines lw 2 title "p99 total", \\
     "" using 1:6 with lines lw 1 dt 2 title "p99 queue wait", "" using 1:7 with lines lw 1 dt 3 title "p99 compute"
unset logscale y
set ylabel "requests per forward"
set xlabel "seconds"
plot "{data}" using 1:8 with lines lw 2 title "mean batch size", "" using 1:9 with steps lw 1 title "clients"
unset multiplot
"""
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
        print(f"wrote {out_png}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "metrics-example.png"))
