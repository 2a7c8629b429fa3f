"""Show-it 2: a model removed from one replica's config (SIGHUP) gets no more traffic
from clients that health-check that model's name, while the other replicas keep
serving it."""
import os
import shutil
import tempfile
import threading
import time
import unittest

import numpy as np

import replica_models
from replica_fixture import Replica, compute_method, float_request, free_ports, grpc, model_entry, replicas

CLIENTS = 4


class ModelUnloadTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-unload-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        replica_models.write(replica_models.Tiny, os.path.join(self.workdir, "tiny.pt"), seed=1)
        replica_models.write(replica_models.Tiny, os.path.join(self.workdir, "other.pt"), seed=2)
        self.tiny = model_entry("tiny", "tiny.pt", [1, replica_models.HIDDEN])
        self.other = model_entry("other", "other.pt", [1, replica_models.HIDDEN])
        self.replicas = [Replica(f"u{i}", self.workdir, port, [self.tiny, self.other])
                         for i, port in enumerate(free_ports(3))]
        for r in self.replicas:
            self.addCleanup(r.close)
            r.start()

    def drive(self, stop, counts, failures):
        endpoints = [r.endpoint for r in self.replicas]
        x = np.ones((1, replica_models.HIDDEN), dtype=np.float32)

        def client(i):
            channel = replicas.balanced_channel(endpoints, replicas.model_health_name("tiny"),
                                                options=[("grpc.use_local_subchannel_pool", 1)])
            compute = compute_method(channel)
            try:
                while not stop.is_set():
                    try:
                        compute(float_request("tiny", x), timeout=20)
                        counts[i] += 1
                    except grpc.RpcError as e:
                        failures.append((time.monotonic(), f"{e.code().name}: {e.details()}"))
            finally:
                channel.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        return threads

    def test_unloaded_model_gets_no_traffic_on_that_replica(self):
        stop = threading.Event()
        counts = [0] * CLIENTS
        failures = []
        threads = self.drive(stop, counts, failures)
        try:
            time.sleep(3)
            before = [r.total_requests() for r in self.replicas]
            self.assertTrue(all(n > 0 for n in before), f"not every replica got traffic: {before}")

            gone = self.replicas[2]
            gone.write_config([self.other])
            gone.reload()
            for _ in range(600):  # until its health for "tiny" is no longer SERVING (at most 60 s)
                if replicas.health_check(gone.channel(), replicas.model_health_name("tiny")) != replicas.SERVING:
                    break
                time.sleep(0.1)
            status = replicas.health_check(gone.channel(), replicas.model_health_name("tiny"))
            self.assertNotEqual(status, replicas.SERVING)
            # Give the clients' Watch streams a moment to deliver the change, then measure.
            time.sleep(1)
            flipped_at = time.monotonic()
            served_at_flip = [r.total_requests() for r in self.replicas]
            answered_at_flip = sum(counts)
            time.sleep(5)
            served_after = [r.total_requests() for r in self.replicas]
            answered_after = sum(counts)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        delta = [b - a for a, b in zip(served_at_flip, served_after)]
        # The daemon drops the model's route in the same step as it turns the model
        # NOT_SERVING, so calls already on their way in that instant get NOT_FOUND (a
        # known gap, see docs/deploy/README.md). Printed, and held to zero after the flip.
        during = [f for t, f in failures if t < flipped_at]
        after = [f for t, f in failures if t >= flipped_at]
        print(f"\nbefore unload (3 s): {before}; after 'tiny' left {gone.name}: +{delta} in 5 s "
              f"({answered_after - answered_at_flip} answered); health of tiny on {gone.name}: "
              f"{replicas.STATUS_NAMES[status]}; failed calls while the change spread: {len(during)} {during[:3]}, "
              f"after: {len(after)}")
        self.assertEqual(delta[2], 0, f"{gone.name} still got tiny traffic: {delta}")
        self.assertGreater(delta[0], 0)
        self.assertGreater(delta[1], 0)
        self.assertEqual(after, [], after[:5])
        self.assertEqual(replicas.health_check(gone.channel(), replicas.model_health_name("other")), replicas.SERVING)


if __name__ == "__main__":
    unittest.main()
