"""Scrapes the real daemon's /metrics after a known mix of requests and checks the
exact counts: successes, NOT_FOUND, INVALID_ARGUMENT, and four concurrent requests
that the device worker serves as one batch of four. Then a reload and a session."""
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import unittest
import urllib.request

SOURCE_DIR = os.environ.get("SPLITLEARND_SOURCE_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "client", "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "client", "python", "tests"))

import grpc  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from daemon_process import DaemonProcess, daemon_binary, model_entry  # noqa: E402
from splitlearnd_client import Client, SplitlearndError  # noqa: E402
from splitlearnd_client.client import pb  # noqa: E402
from torch_test_models import CacheTrunk  # noqa: E402  (a model with a KV cache)

torch.set_num_threads(1)
DIM = 16

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset of (label, value)): value} of a text exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError(f"not a sample line: {line!r}")
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def key(name, **labels):
    return (name, frozenset(labels.items()))


class LinearGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DIM, DIM)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


def write_models(workdir):
    torch.manual_seed(0)
    for name in ("plain", "batched"):
        torch.jit.script(LinearGelu().eval()).save(os.path.join(workdir, name + ".pt"))
    torch.jit.script(CacheTrunk().eval()).save(os.path.join(workdir, "cache.pt"))


@unittest.skipUnless(daemon_binary(), "SPLITLEARND_BIN is not set (run through ctest)")
class MetricsScrape(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="splitlearnd-metrics-")
        write_models(cls.workdir)
        models = [
            model_entry("plain", "plain.pt", [1, DIM]),
            # The first request waits up to a second for three more: four concurrent
            # requests make one forward.
            model_entry("batched", "batched.pt", [1, DIM], batching={"max_batch_size": 4, "max_delay_us": 1000000}),
            model_entry("cache", "cache.pt"),
        ]
        cls.daemon = DaemonProcess(cls.workdir, models, metrics=True)
        try:
            cls.daemon.start()
        except BaseException:
            cls.daemon.kill()
            shutil.rmtree(cls.workdir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            rc = cls.daemon.stop()
            if rc != 0:
                raise AssertionError(f"splitlearnd exited with {rc}; log:\n{cls.daemon.log()}")
        finally:
            cls.daemon.kill()
            shutil.rmtree(cls.workdir, ignore_errors=True)

    def scrape(self):
        self.assertIsNotNone(self.daemon.metrics_port, f"no metrics line in the log:\n{self.daemon.log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.daemon.metrics_port}/metrics", timeout=30) as r:
            self.assertEqual(r.status, 200)
            return parse(r.read().decode())

    def test_known_mix(self):
        # Nothing but warmups has run: no request series yet.
        before = self.scrape()
        self.assertFalse([k for k in before if k[0] == "splitlearnd_requests_total"])

        with Client(self.daemon.address, timeout=60) as client:
            for _ in range(3):
                client.compute(torch.randn(1, DIM), model_id="plain")
            with self.assertRaises(SplitlearndError) as caught:
                client.compute(torch.randn(1, DIM), model_id="no-such-model")
            self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

            # Byte counts that do not match the shape: refused before the queue.
            compute = client.channel.unary_unary("/splitlearn.comm.ComputeService/Compute",
                                                 request_serializer=pb.ComputeRequest.SerializeToString,
                                                 response_deserializer=pb.ComputeResponse.FromString)
            for size in (10, 4 * DIM + 4):
                with self.assertRaises(grpc.RpcError) as raw:
                    compute(pb.ComputeRequest(model_id="plain", data=b"\0" * size, shape=[1, DIM]), timeout=30)
                self.assertEqual(raw.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

            # Four at once to the batching model.
            request = pb.ComputeRequest(model_id="batched", shape=[1, DIM],
                                        data=torch.randn(1, DIM).numpy().tobytes())
            futures = [compute.future(request, timeout=60) for _ in range(4)]
            for f in futures:
                self.assertEqual(len(f.result().data), 4 * DIM)

        m = self.scrape()
        requests = {k: v for k, v in m.items() if k[0] == "splitlearnd_requests_total"}
        self.assertEqual(requests, {
            key("splitlearnd_requests_total", model="plain", code="OK"): 3,
            key("splitlearnd_requests_total", model="plain", code="INVALID_ARGUMENT"): 2,
            key("splitlearnd_requests_total", model="", code="OK"): 0,
            key("splitlearnd_requests_total", model="", code="NOT_FOUND"): 1,
            key("splitlearnd_requests_total", model="batched", code="OK"): 4,
        })

        # Latency histograms: only requests that reached the queue are in them.
        for family in ("splitlearnd_request_queue_seconds", "splitlearnd_request_compute_seconds",
                       "splitlearnd_request_duration_seconds"):
            self.assertEqual(m[key(family + "_count", model="plain")], 3, family)
            self.assertEqual(m[key(family + "_count", model="batched")], 4, family)
            self.assertEqual(m[key(family + "_bucket", model="batched", le="+Inf")], 4, family)
            self.assertGreater(m[key(family + "_sum", model="plain")], 0, family)
        self.assertGreater(m[key("splitlearnd_request_compute_seconds_sum", model="batched")], 0)

        # Batch sizes on the cpu worker: three forwards of one and one of four.
        cpu = "cpu"
        self.assertEqual(m[key("splitlearnd_batch_size_count", device=cpu)], 4)
        self.assertEqual(m[key("splitlearnd_batch_size_sum", device=cpu)], 7)
        self.assertEqual(m[key("splitlearnd_batch_size_bucket", device=cpu, le="1")], 3)
        self.assertEqual(m[key("splitlearnd_batch_size_bucket", device=cpu, le="3")], 3)
        self.assertEqual(m[key("splitlearnd_batch_size_bucket", device=cpu, le="4")], 4)

        # Live figures.
        self.assertEqual(m[key("splitlearnd_queue_depth", device=cpu)], 0)
        self.assertEqual(m[key("splitlearnd_queue_capacity", device=cpu)], 256)
        self.assertEqual(m[key("splitlearnd_device_worker_alive", device=cpu)], 1)
        for model in ("plain", "batched", "cache"):
            self.assertEqual(m[key("splitlearnd_model_state", model=model, state="READY")], 1)
            self.assertEqual(m[key("splitlearnd_model_state", model=model, state="FAILED")], 0)
            self.assertEqual(m[key("splitlearnd_model_load_duration_seconds_count", model=model)], 1)
            self.assertEqual(m[key("splitlearnd_model_load_failures_total", model=model)], 0)
            self.assertEqual(m[key("splitlearnd_sessions_open", model=model)], 0)
        linear_bytes = (DIM * DIM + DIM) * 4
        self.assertEqual(m[key("splitlearnd_model_parameter_bytes", model="plain")], linear_bytes)
        self.assertEqual(m[key("splitlearnd_model_parameter_bytes", model="cache")], 4 * linear_bytes)
        self.assertGreater(m[key("process_resident_memory_bytes")], 10 * 1024 * 1024)
        self.assertGreater(m[key("process_start_time_seconds")], 1.5e9)

        # A session: counted while open, with the bytes of its cache.
        self.assertEqual(m[key("splitlearnd_sessions_open", model="cache")], 0)
        with Client(self.daemon.address, timeout=60) as client:
            with client.open_session("cache") as session:
                session.compute(torch.randn(1, 3, DIM))
                m = self.scrape()
                self.assertEqual(m[key("splitlearnd_sessions_open", model="cache")], 1)
                # 2 layers x (key + value) x [1, 2, 3, 8] float32
                self.assertEqual(m[key("splitlearnd_session_bytes", model="cache")], 2 * 2 * 1 * 2 * 3 * 8 * 4)
        m = self.scrape()
        self.assertEqual(m[key("splitlearnd_sessions_open", model="cache")], 0)
        self.assertEqual(m[key("splitlearnd_requests_total", model="cache", code="OK")], 3)  # open, step, close

    def test_reload_is_counted(self):
        before = self.scrape()
        os.kill(self.daemon.proc.pid, signal.SIGHUP)  # the daemon this test started
        deadline = time.monotonic() + 60
        while True:
            m = self.scrape()
            if m[key("splitlearnd_reloads_total")] > before[key("splitlearnd_reloads_total")]:
                break
            self.assertLess(time.monotonic(), deadline, f"no reload counted; log:\n{self.daemon.log()}")
            time.sleep(0.1)
        self.assertEqual(m[key("splitlearnd_reloads_total")], before[key("splitlearnd_reloads_total")] + 1)
        self.assertEqual(m[key("splitlearnd_reload_failures_total")],
                         before[key("splitlearnd_reload_failures_total")])


if __name__ == "__main__":
    unittest.main()
