"""splitlearnd_client against the real daemon: compute, dtypes, the legacy KV cache, a
server-side session, training backward, errors, statistics, and retries across a
daemon restart. Every answer is checked against the same TorchScript file run here."""
import os
import sys
import threading
import unittest

import grpc
import torch

from splitlearnd_client import Client, RetryPolicy, SplitlearndError

from .torch_test_models import DIM, CacheTrunk, Echo, LinearGelu, TanhLinear, reference, write_model

# The daemon is started by the source tree's tests/support/splitlearnd_launcher.py.
SOURCE_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "support"))
import splitlearnd_launcher as launcher  # noqa: E402

NO_DAEMON = "SPLITLEARND_BIN is not set (run through ctest)"


def make_models(workdir):
    write_model(LinearGelu, os.path.join(workdir, "trunk.pt"), 1)
    write_model(Echo, os.path.join(workdir, "echo.pt"), 2)
    write_model(CacheTrunk, os.path.join(workdir, "cache.pt"), 3)
    write_model(TanhLinear, os.path.join(workdir, "train.pt"), 4)
    return [
        launcher.model_entry("trunk", "trunk.pt", [1, 4, DIM], default=True),
        launcher.model_entry("echo", "echo.pt"),
        launcher.model_entry("cache", "cache.pt", sessions={"max_sessions": 4, "idle_timeout_s": 60}),
        launcher.model_entry("train", "train.pt", [2, DIM],
                             training={"enabled": True, "optimizer": "sgd", "learning_rate": 0.01}),
    ]


@unittest.skipUnless(launcher.SPLITLEARND_BIN, NO_DAEMON)
class ClientAgainstDaemon(launcher.DaemonTestCase):
    @classmethod
    def make_daemon(cls, workdir):
        return launcher.Splitlearnd(make_models(workdir), workdir=workdir)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.client = Client(cls.daemon.address, timeout=60, retry=RetryPolicy(max_attempts=3))
        cls.addClassCleanup(cls.client.close)

    def path(self, name):
        return os.path.join(self.workdir, name)

    def test_compute_matches_torch(self):
        x = torch.randn(2, 5, DIM)
        r = self.client.compute(x, model_id="trunk", request_id=7)
        with torch.no_grad():
            expected = reference(self.path("trunk.pt"))(x)
        self.assertEqual(r.output.dtype, torch.float32)
        self.assertEqual(tuple(r.output.shape), (2, 5, DIM))
        torch.testing.assert_close(r.output, expected, rtol=1e-5, atol=1e-5)
        self.assertEqual(r.request_id, 7)
        # The default model answers an empty model_id.
        torch.testing.assert_close(self.client.compute(x).output, expected, rtol=1e-5, atol=1e-5)

    def test_output_dtype(self):
        x = torch.randn(3, DIM)
        with torch.no_grad():
            expected = reference(self.path("trunk.pt"))(x)
        for dtype in (torch.float16, torch.bfloat16):
            r = self.client.compute(x, model_id="trunk", output_dtype=dtype)
            self.assertEqual(r.output.dtype, dtype)
            torch.testing.assert_close(r.output, expected.to(dtype))

    def test_every_dtype_round_trips(self):
        samples = {
            torch.float32: torch.randn(2, 3),
            torch.float16: torch.randn(2, 3).half(),
            torch.bfloat16: torch.randn(2, 3).bfloat16(),
            torch.int64: torch.tensor([[1, -2, 3], [2**40, 5, -6]]),
            torch.int32: torch.tensor([[7, -8, 9]], dtype=torch.int32),
            torch.bool: torch.tensor([[True, False, True]]),
        }
        for dtype, x in samples.items():
            with self.subTest(dtype=dtype):
                r = self.client.compute(x, model_id="echo")
                self.assertEqual(r.output.dtype, dtype)
                self.assertTrue(torch.equal(r.output, x))

    def test_legacy_cache(self):
        model = reference(self.path("cache.pt"))
        x1, x2 = torch.randn(1, 3, DIM), torch.randn(1, 1, DIM)
        with torch.no_grad():
            y1, present1 = model(x1, [], True)
            y2, present2 = model(x2, present1, True)
        r1 = self.client.compute(x1, model_id="cache", use_cache=True)
        self.assertEqual(len(r1.present_key_values), 2)
        torch.testing.assert_close(r1.output, y1)
        r2 = self.client.compute(x2, model_id="cache", past_key_values=r1.present_key_values, use_cache=True)
        torch.testing.assert_close(r2.output, y2)
        self.assertEqual(len(r2.present_key_values), 2)
        for (k, v), (ek, ev) in zip(r2.present_key_values, present2):
            self.assertEqual(tuple(k.shape), (1, 2, 4, DIM // 2))  # 3 + 1 positions cached
            torch.testing.assert_close(k, ek)
            torch.testing.assert_close(v, ev)

    def test_session(self):
        model = reference(self.path("cache.pt"))
        steps = [torch.randn(1, 3, DIM), torch.randn(1, 1, DIM), torch.randn(1, 1, DIM)]
        with torch.no_grad():
            expected, past = [], []
            for x in steps:
                y, past = model(x, past, True)
                expected.append(y)
        with self.client.open_session("cache") as session:
            self.assertTrue(session.session_id)
            self.assertEqual(session.model_id, "cache")
            tokens = []
            for x, y in zip(steps, expected):
                r = session.compute(x)
                torch.testing.assert_close(r.output, y)
                self.assertEqual(r.session_id, session.session_id)
                tokens.append(r.session_tokens)
            self.assertEqual(tokens, [3, 4, 5])
            session_id = session.session_id
        self.assertTrue(session.closed)
        with self.assertRaises(SplitlearndError) as caught:
            self.client.compute(steps[1], model_id="cache", session_id=session_id)
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_backward_returns_the_true_input_gradient(self):
        model = reference(self.path("train.pt"))  # the weights before any optimizer step
        x = torch.randn(2, DIM)
        grad_y = torch.randn(2, DIM)
        x_local = x.clone().requires_grad_(True)
        model(x_local).backward(grad_y)

        r = self.client.compute(x, model_id="train", training=True)
        self.assertTrue(r.forward_id)
        b = self.client.backward(grad_y, r.forward_id, model_id="train")
        self.assertEqual(b.forward_id, r.forward_id)
        torch.testing.assert_close(b.grad_input, x_local.grad, rtol=1e-5, atol=1e-6)
        self.assertFalse(torch.allclose(b.grad_input, grad_y))  # not the gradient passed through
        # The graph is used up: a second backward with the same id is NOT_FOUND.
        with self.assertRaises(SplitlearndError) as caught:
            self.client.backward(grad_y, r.forward_id, model_id="train")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_errors_are_not_retried_and_are_counted(self):
        client = Client(self.daemon.address, retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.01))
        with client:
            with self.assertRaises(SplitlearndError) as caught:
                client.compute(torch.randn(1, DIM), model_id="no-such-model")
            self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
            self.assertEqual(caught.exception.attempts, 1)
            with self.assertRaises(SplitlearndError) as caught:
                client.compute(torch.randn(1, DIM + 1), model_id="trunk")  # wrong width for the Linear
            self.assertIn(caught.exception.code, (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL))
            client.compute(torch.randn(1, DIM), model_id="trunk")
            self.assertEqual(client.health().status, "ok")
            stats = client.stats
            self.assertEqual((stats.calls, stats.retries, stats.failures), (4, 0, 2))
            self.assertGreater(stats.latency_sum_s, 0)
            client.reset_stats()
            self.assertEqual(client.stats.calls, 0)


@unittest.skipUnless(launcher.SPLITLEARND_BIN, NO_DAEMON)
class RetryAcrossRestart(unittest.TestCase):
    def setUp(self):
        self.daemon = launcher.Splitlearnd([launcher.model_entry("trunk", "trunk.pt", [1, DIM])],
                                           prefix="pyclient-restart")
        self.addCleanup(self.daemon.close)
        self.workdir = self.daemon.workdir
        write_model(LinearGelu, os.path.join(self.workdir, "trunk.pt"), 1)
        self.daemon.start()
        self.addCleanup(self.daemon.stop)

    def test_a_call_made_while_the_daemon_is_down_succeeds_once_it_is_back(self):
        port = self.daemon.port
        policy = RetryPolicy(max_attempts=200, initial_backoff_s=0.05, max_backoff_s=0.5)
        x = torch.randn(2, DIM)
        with torch.no_grad():
            expected = reference(os.path.join(self.workdir, "trunk.pt"))(x)
        with Client(self.daemon.address, timeout=120, retry=policy, reconnect_backoff_s=(0.1, 0.5)) as client:
            client.compute(x, model_id="trunk")  # connected once
            self.assertEqual(self.daemon.stop(), 0)

            outcome = {}

            def call():
                try:
                    outcome["result"] = client.compute(x, model_id="trunk")
                except Exception as e:  # reported by the assertions below
                    outcome["error"] = e

            caller = threading.Thread(target=call)
            caller.start()
            # The daemon is down: the call can only be failing and retrying now.
            launcher.wait_until(lambda: client.stats.retries >= 2 or not caller.is_alive(), 60,
                                "two retries of the call")
            self.assertTrue(caller.is_alive(), f"the call ended while the daemon was down: {outcome}")
            self.assertGreaterEqual(client.stats.retries, 2)

            self.daemon.start(listen=f"127.0.0.1:{port}")  # the same port
            caller.join(timeout=120)
            self.assertFalse(caller.is_alive())
            self.assertNotIn("error", outcome)
            torch.testing.assert_close(outcome["result"].output, expected, rtol=1e-5, atol=1e-5)
            stats = client.stats
            self.assertEqual(stats.calls, 2)
            self.assertEqual(stats.failures, 0)
            self.assertGreaterEqual(stats.retries, 2)


if __name__ == "__main__":
    unittest.main()
