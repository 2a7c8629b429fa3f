"""Show-it 2: a model removed from one replica's config (SIGHUP) gets no more traffic
from clients that health-check that model's name, once the change has reached them,
while the other replicas keep serving it."""
import os
import shutil
import tempfile
import threading
import time
import unittest

import numpy as np

import replica_models
from replica_fixture import Replica, compute_method, float_request, free_ports, grpc, model_entry, replicas
from splitlearnd_launcher import wait_until

CLIENTS = 4
WINDOW = 200     # calls each other replica serves while the third gets none: the change has spread
MEASURED = 1000  # calls each other replica serves after that, in which the third must get none


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

    def served(self):
        return [r.total_requests() for r in self.replicas]

    def test_unloaded_model_gets_no_traffic_on_that_replica(self):
        stop = threading.Event()
        counts = [0] * CLIENTS
        failures = []
        threads = self.drive(stop, counts, failures)
        gone = self.replicas[2]
        tiny = replicas.model_health_name("tiny")
        try:
            before = wait_until(lambda: (lambda n: n if all(n) else None)(self.served()), 60,
                                lambda: f"every replica to get traffic: {self.served()}")

            gone.set_models([self.other])
            result = gone.reload()
            self.assertTrue(result.ok, result.message)
            wait_until(lambda: replicas.health_check(gone.direct_channel(), tiny) != replicas.SERVING, 60,
                       f"{gone.name} to stop serving tiny")
            status = replicas.health_check(gone.direct_channel(), tiny)

            # The clients' health Watch streams deliver the change: it has spread once
            # the other two replicas serve WINDOW calls each and the third none.
            window = {"start": self.served()}

            def spread():
                now = self.served()
                if now[2] != window["start"][2]:
                    window["start"] = now  # tiny still reaches it: the window starts again
                    return None
                return now if all(n - s >= WINDOW for n, s in zip(now[:2], window["start"][:2])) else None

            served_at_flip = wait_until(spread, 60, lambda: f"no more tiny traffic to {gone.name}: {self.served()}")
            flipped_at = time.monotonic()
            answered_at_flip = sum(counts)
            wait_until(lambda: all(n - s >= MEASURED for n, s in zip(self.served()[:2], served_at_flip[:2])), 120,
                       lambda: f"{MEASURED} more calls on each of the other replicas: {self.served()}")
            served_after = self.served()
            answered_after = sum(counts)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        delta = [b - a for a, b in zip(served_at_flip, served_after)]
        # The daemon drops the model's route in the same step as it turns the model
        # NOT_SERVING, so calls already on their way in that instant get NOT_FOUND (a
        # known gap, see docs/deploy/README.md). Printed, and held to zero after the change spread.
        during = [f for t, f in failures if t < flipped_at]
        after = [f for t, f in failures if t >= flipped_at]
        print(f"\nbefore unload: {before}; after 'tiny' left {gone.name} and the change spread: +{delta} "
              f"({answered_after - answered_at_flip} answered); health of tiny on {gone.name}: "
              f"{replicas.STATUS_NAMES[status]}; failed calls while the change spread: {len(during)} {during[:3]}, "
              f"after: {len(after)}")
        self.assertEqual(delta[2], 0, f"{gone.name} still got tiny traffic: {delta}")
        self.assertGreater(delta[0], 0)
        self.assertGreater(delta[1], 0)
        self.assertEqual(after, [], after[:5])
        self.assertEqual(replicas.health_check(gone.direct_channel(), replicas.model_health_name("other")),
                         replicas.SERVING)


if __name__ == "__main__":
    unittest.main()
