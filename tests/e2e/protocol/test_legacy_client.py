"""An unmodified legacy client gets the same numbers from
splitlearnd as running the same TorchScript file in-process with PyTorch."""
import os
import time
import unittest

import numpy as np

import torch_models
from splitlearnd_launcher import MIB, DaemonTestCase, model_entry
from legacy_wire import LegacyClient

TOLERANCE = 1e-5


class LegacyClientTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        cls.paths = {
            "linear": torch_models.make(torch_models.LinearGelu, os.path.join(workdir, "linear.pt"), seed=11),
            "block": torch_models.make(torch_models.TinyBlock, os.path.join(workdir, "block.pt"), seed=12),
            "identity": torch_models.make(torch_models.Identity, os.path.join(workdir, "identity.pt")),
        }
        return [
            model_entry("linear-gelu", "linear.pt", [1, 768], default=True, batching={"max_batch_size": 8}),
            model_entry("tiny-block", "block.pt", [1, 10, 128]),
            model_entry("identity", "identity.pt", [1, 4]),
        ]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ref = {name: torch_models.Reference(path) for name, path in cls.paths.items()}
        cls.client = LegacyClient(cls.daemon.address)
        cls.rng = np.random.default_rng(2024)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        super().tearDownClass()

    def assertMatches(self, got, want):
        self.assertEqual(got.dtype, np.float32)
        self.assertEqual(got.shape, want.shape)
        self.assertTrue(np.all(np.isfinite(got)))
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        self.assertLessEqual(diff, TOLERANCE, f"max abs difference {diff} between daemon and in-process PyTorch")

    def test_linear_gelu_with_model_id(self):
        for shape in ([1, 768], [4, 768], [2, 10, 768]):
            x = self.rng.standard_normal(shape, dtype=np.float32)
            got, _ = self.client.compute(x, model_id="linear-gelu")
            self.assertMatches(got, self.ref["linear"](x))

    def test_linear_gelu_without_model_id_uses_default(self):
        x = self.rng.standard_normal([3, 768], dtype=np.float32)
        got, _ = self.client.compute(x)
        self.assertMatches(got, self.ref["linear"](x))
        # The answer really depends on the input (not a cached or constant answer).
        x2 = self.rng.standard_normal([3, 768], dtype=np.float32)
        got2, _ = self.client.compute(x2)
        self.assertMatches(got2, self.ref["linear"](x2))
        self.assertGreater(float(np.max(np.abs(got2 - got))), 1e-3)

    def test_transformer_block(self):
        for shape in ([1, 10, 128], [2, 7, 128]):
            x = self.rng.standard_normal(shape, dtype=np.float32)
            got, _ = self.client.compute(x, model_id="tiny-block")
            self.assertMatches(got, self.ref["block"](x))

    def test_request_id_is_echoed(self):
        x = self.rng.standard_normal([1, 768], dtype=np.float32)
        _, resp = self.client.compute(x, model_id="linear-gelu", request_id=424242)
        self.assertTrue(resp.HasField("request_id"))
        self.assertEqual(resp.request_id, 424242)
        _, resp = self.client.compute(x, model_id="linear-gelu", request_id=-7)
        self.assertEqual(resp.request_id, -7)
        _, resp = self.client.compute(x, model_id="linear-gelu")
        self.assertFalse(resp.HasField("request_id"), "request_id echoed although none was sent")

    def test_health_check(self):
        h = self.client.health()
        self.assertEqual(h.status, "ok")  # what the reference client compares with
        self.assertTrue(h.message.startswith("healthy: "), h.message)
        self.assertNotEqual(h.version, "")
        self.assertTrue(h.HasField("uptime_seconds"))
        self.assertGreater(h.uptime_seconds, 0.0)

    def test_service_info_counts_requests_and_uptime(self):
        before = self.client.info()
        x = self.rng.standard_normal([2, 768], dtype=np.float32)
        for _ in range(5):
            self.client.compute(x, model_id="linear-gelu")
        after = self.client.info()
        self.assertEqual(after.total_requests - before.total_requests, 5)
        self.assertEqual(after.service_name, "splitlearnd")
        self.assertIn("cpu", after.device.split(","))
        for model_id in ("linear-gelu", "tiny-block", "identity"):
            self.assertEqual(after.custom_info.get(f"model.{model_id}.state"), "READY")
        # The uptime is the process's real one: the service existed before we saw its
        # ready file and did not exist before we spawned the process.
        now = time.monotonic()
        after = self.client.info()
        later = time.monotonic()
        self.assertGreaterEqual(after.uptime_seconds, now - self.daemon.ready_seen_at - 0.01)
        self.assertLessEqual(after.uptime_seconds, later - self.daemon.spawned_at + 0.01)
        self.assertGreater(after.uptime_seconds, before.uptime_seconds)

    def test_64_mib_activation_round_trip(self):
        x = self.rng.standard_normal([16, 1024, 1024], dtype=np.float32)
        self.assertEqual(x.nbytes, 64 * MIB)
        resp = self.client.compute_raw(x, model_id="identity", timeout=120)
        self.assertEqual(list(resp.shape), [16, 1024, 1024])
        self.assertEqual(len(resp.data), x.nbytes)
        self.assertTrue(resp.data == x.tobytes(), "identity model changed the bytes of a 64 MiB activation")
        self.assertDaemonAlive()


if __name__ == "__main__":
    unittest.main()
