"""grpc.health.v1 per model: NOT_SERVING until warm, Watch streams the changes, and
SIGTERM turns everything NOT_SERVING while calls are still served (drain grace)."""
import os
import shutil
import signal
import tempfile
import threading
import time
import unittest

import numpy as np

import replica_models
from replica_fixture import Replica, compute_method, float_request, free_ports, grpc, model_entry, replicas

SERVING, NOT_SERVING, SERVICE_UNKNOWN = replicas.SERVING, replicas.NOT_SERVING, replicas.SERVICE_UNKNOWN


def dedup(statuses):
    out = []
    for s in statuses:
        if not out or out[-1] != s:
            out.append(s)
    return out


class Watcher:
    """Records every status a Health/Watch stream delivers, on a thread of its own."""

    def __init__(self, channel, service):
        self.service = service
        self.statuses = []
        self.changed = threading.Condition()
        self.call = replicas.health_watch(channel, service, wait_for_ready=True)
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for status in self.call:
                with self.changed:
                    self.statuses.append(status)
                    self.changed.notify_all()
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                self.error = e

    def wait_for(self, status, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while status not in self.statuses[-1:]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.service!r}: no {replicas.STATUS_NAMES[status]} within {timeout_s} s; "
                                         f"saw {[replicas.STATUS_NAMES.get(s, s) for s in self.statuses]}")
                self.changed.wait(left)


class HealthTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-health-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        replica_models.write(replica_models.Tiny, os.path.join(self.workdir, "tiny.pt"))
        replica_models.write(replica_models.SlowToWarm, os.path.join(self.workdir, "slow.pt"))
        models = [
            model_entry("tiny", "tiny.pt", [1, replica_models.HIDDEN]),
            # Many heavy warm-up runs (about 160 GFLOP in all, seconds on a 2-core
            # machine): the model stays NOT_SERVING well past the moment the Watch
            # streams connect. With a few runs a fast machine was warm before they
            # connected, and the first status they saw was already SERVING.
            model_entry("slow", "slow.pt", [384, 384], warmup_runs=120),
        ]
        # A long grace so that a call sent after NOT_SERVING surely lands inside it.
        self.replica = Replica("health", self.workdir, free_ports(1)[0], models, drain_grace_s=5)
        self.addCleanup(self.replica.close)

    def test_not_serving_until_warm_then_watch_sees_drain(self):
        channel = grpc.insecure_channel(self.replica.endpoint, options=replicas.channel_options(
            [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
             ("grpc.max_reconnect_backoff_ms", 200)]))
        self.addCleanup(channel.close)
        # Watch streams opened before the daemon exists: wait_for_ready sends them as
        # soon as it listens, which is before its models are warm.
        watchers = {name: Watcher(channel, name)
                    for name in ("", "splitlearn.model/tiny", "splitlearn.model/slow", "splitlearn.model/nope")}
        for w in watchers.values():
            self.addCleanup(w.call.cancel)
        self.replica.start()
        for name in ("", "splitlearn.model/tiny", "splitlearn.model/slow"):
            watchers[name].wait_for(SERVING)
        watchers["splitlearn.model/nope"].wait_for(SERVICE_UNKNOWN)

        seen = {name: dedup(w.statuses) for name, w in watchers.items()}
        print("Watch streams until ready:", {k or '""': [replicas.STATUS_NAMES[s] for s in v] for k, v in seen.items()})
        # The slow model and the daemon as a whole said NOT_SERVING first (or, for a
        # model not registered yet, SERVICE_UNKNOWN) and SERVING only once warm.
        for name in ("", "splitlearn.model/slow"):
            self.assertIn(seen[name][0], (NOT_SERVING, SERVICE_UNKNOWN), f"{name!r}: {seen[name]}")
            self.assertEqual(seen[name][-1], SERVING)
            self.assertNotIn(SERVING, seen[name][:-1], f"{name!r}: {seen[name]}")
        self.assertEqual(replicas.health_check(channel, "splitlearn.model/slow"), SERVING)
        self.assertEqual(replicas.health_check(channel, "splitlearn.model/nope"), SERVICE_UNKNOWN)

        # SIGTERM: every stream turns NOT_SERVING, and calls are still answered in the grace.
        compute = compute_method(channel)
        x = np.ones((1, replica_models.HIDDEN), dtype=np.float32)
        compute(float_request("tiny", x), timeout=10)
        self.replica.proc.send_signal(signal.SIGTERM)
        for name in ("", "splitlearn.model/tiny", "splitlearn.model/slow"):
            watchers[name].wait_for(NOT_SERVING)
        answer = compute(float_request("tiny", x), timeout=10)  # inside the 5 s grace
        self.assertEqual(list(answer.shape), [1, replica_models.HIDDEN])
        self.replica.proc.wait(timeout=60)
        self.assertEqual(self.replica.proc.returncode, 0, self.replica.run_log())
        log = self.replica.run_log()
        self.assertIn("stopped", log)
        for w in watchers.values():
            self.assertIsNone(w.error, w.error)


if __name__ == "__main__":
    unittest.main()
