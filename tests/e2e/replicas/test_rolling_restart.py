"""Show-it 1: three replicas, sixteen clients on round_robin with health checking, each
replica restarted in turn (SIGTERM, wait for exit, start again on the same port) while
the clients keep calling. No request may fail, every answer must be right, and every
replica serves calls before its restart and again after it."""
import os
import shutil
import tempfile
import threading
import time
import unittest

import numpy as np
import torch

import replica_models
from replica_fixture import Replica, compute_method, float_request, free_ports, grpc, model_entry, replicas
from splitlearnd_launcher import wait_until

CLIENTS = 16
STEP_CALLS = 2000  # calls answered between two restarts, and after the last one


class RollingRestartTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-rolling-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        path = replica_models.write(replica_models.Tiny, os.path.join(self.workdir, "tiny.pt"), seed=3)
        models = [model_entry("tiny", "tiny.pt", [1, replica_models.HIDDEN])]
        self.replicas = [Replica(f"r{i}", self.workdir, port, models, drain_grace_s=1.5)
                         for i, port in enumerate(free_ports(3))]
        for r in self.replicas:
            self.addCleanup(r.close)
            r.start()
        x = np.random.default_rng(0).standard_normal((1, replica_models.HIDDEN)).astype(np.float32)
        self.request = float_request("tiny", x)
        with torch.no_grad():
            self.expected = torch.jit.load(path)(torch.from_numpy(x)).numpy()

    def test_rolling_restart_loses_no_request(self):
        endpoints = [r.endpoint for r in self.replicas]
        stop = threading.Event()
        lock = threading.Lock()
        failures = []
        wrong = []
        ok = [0] * CLIENTS

        def client(i):
            # Each client has its own channel and subchannels, as separate processes would.
            channel = replicas.balanced_channel(endpoints, "", options=[("grpc.use_local_subchannel_pool", 1)])
            compute = compute_method(channel)
            try:
                while not stop.is_set():
                    try:
                        answer = compute(self.request, timeout=20)
                    except grpc.RpcError as e:
                        with lock:
                            failures.append(f"client {i}: {e.code().name}: {e.details()}")
                        continue
                    y = np.frombuffer(answer.data, dtype="<f4").reshape(list(answer.shape))
                    if not np.allclose(y, self.expected, rtol=1e-5, atol=1e-6):
                        with lock:
                            wrong.append(i)
                    ok[i] += 1
            finally:
                channel.close()

        def load_and_traffic(since, replica):
            """STEP_CALLS more calls answered since `since`, and some of them by `replica`."""
            return sum(ok) >= since + STEP_CALLS and replica.total_requests() > 0

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        served_before_restart = {}
        try:
            for r in self.replicas:
                since = sum(ok)
                wait_until(lambda: load_and_traffic(since, r), 120,
                           lambda: f"{STEP_CALLS} calls and some on {r.name} ({sum(ok) - since} answered, "
                                   f"failures: {failures[:3]})")
                r.restart()
                served_before_restart[r.name] = sum(r.finished_counts)
            since = sum(ok)
            for r in self.replicas:
                wait_until(lambda: load_and_traffic(since, r), 120,
                           lambda: f"{STEP_CALLS} calls after the last restart and some on {r.name}")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        elapsed = time.monotonic() - started

        served = {r.name: r.served() for r in self.replicas}
        after_restart = {r.name: r.total_requests() for r in self.replicas}
        total_ok = sum(ok)
        print(f"\n{CLIENTS} clients, {elapsed:.1f} s, {len(self.replicas)} restarts: {total_ok} requests answered, "
              f"{len(failures)} failed, {len(wrong)} wrong")
        for r in self.replicas:
            print(f"  {r.name} ({r.endpoint}): served {served[r.name]} in all "
                  f"({served_before_restart[r.name]} before its restart, {after_restart[r.name]} after)")
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread did not stop")
        self.assertEqual(failures, [], f"{len(failures)} failed request(s), first: {failures[:5]}")
        self.assertEqual(wrong, [], "wrong answers")
        for r in self.replicas:
            self.assertGreater(served_before_restart[r.name], 0, f"{r.name} served nothing before its restart")
            self.assertGreater(after_restart[r.name], 0, f"{r.name} got no traffic after its restart")


if __name__ == "__main__":
    unittest.main()
