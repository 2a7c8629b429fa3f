"""Scrapes the real daemon's /metrics after a known mix of requests and checks the
exact counts: successes, NOT_FOUND, INVALID_ARGUMENT, and four concurrent requests
that the device worker serves as one batch of four. Then a reload and a session."""
import os
import sys
import unittest

import splitlearnd_launcher as launcher
from splitlearnd_launcher import DaemonTestCase, metric_key as key, model_entry

sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "client", "python"))
sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "client", "python", "tests"))

import grpc  # noqa: E402
import torch  # noqa: E402

from splitlearnd_client import Client, SplitlearndError  # noqa: E402
from splitlearnd_client.client import pb  # noqa: E402
from torch_test_models import DIM, CacheTrunk, LinearGelu  # noqa: E402  (CacheTrunk: a model with a KV cache)

torch.set_num_threads(1)


def write_models(workdir):
    torch.manual_seed(0)
    for name in ("plain", "batched"):
        torch.jit.script(LinearGelu().eval()).save(os.path.join(workdir, name + ".pt"))
    torch.jit.script(CacheTrunk().eval()).save(os.path.join(workdir, "cache.pt"))


class MetricsScrape(DaemonTestCase):
    @classmethod
    def make_daemon(cls, workdir):
        write_models(workdir)
        models = [
            model_entry("plain", "plain.pt", [1, DIM]),
            # The first request waits up to a second for three more (a fixed wait: the
            # adaptive one would not wait for a burst it has never seen): four concurrent
            # requests make one forward.
            model_entry("batched", "batched.pt", [1, DIM],
                        batching={"max_batch_size": 4, "max_delay_us": 1000000, "wait": "fixed"}),
            model_entry("cache", "cache.pt"),
        ]
        return launcher.Splitlearnd(models, workdir=workdir, server={"metrics_listen": "127.0.0.1:0"})

    def scrape(self):
        return self.daemon.metrics()

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
        reloads = key("splitlearnd_reloads_total")
        m = self.daemon.reload(until=lambda: (lambda m: m if m[reloads] > before[reloads] else None)(self.scrape()))
        self.assertEqual(m[reloads], before[reloads] + 1)
        self.assertEqual(m[key("splitlearnd_reload_failures_total")],
                         before[key("splitlearnd_reload_failures_total")])


if __name__ == "__main__":
    unittest.main()
