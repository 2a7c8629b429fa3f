"""splitlearnd_client against the real daemon: compute, dtypes, the legacy KV cache, a
server-side session, training backward, errors, statistics, and retries across a
daemon restart. Every answer is checked against the same TorchScript file run here."""
import os
import sys
import threading
import unittest

import grpc
import torch

from splitlearnd_client import Client, RetryPolicy, SplitlearndError, SplitTrainer
from splitlearnd_client import tensors

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
        launcher.model_entry("train8", "train.pt", [2, DIM], training={"enabled": True, "optimizer": "none"}),
        launcher.model_entry("split1", "train.pt", [2, DIM], training=dict(SPLIT_TRAINING)),
        # float16 on the wire, float32 inside.
        launcher.model_entry("split4", "train.pt", [2, DIM], training=dict(SPLIT_TRAINING), compute_dtype="float32"),
    ]


SPLIT_TRAINING = {"enabled": True, "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.5}


def split_parts(seed):
    """A head and a tail around the served TanhLinear trunk, and their optimizer."""
    torch.manual_seed(seed)
    head, tail = torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, 1)
    optimizer = torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=0.05, momentum=0.5)
    return head, tail, optimizer


def regression_batches(count, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, 1, generator=g)
    batches = []
    for _ in range(count):
        x = torch.randn(8, DIM, generator=g)
        batches.append((x, torch.tanh(x @ w)))
    return batches


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

    def test_backward_int8_blockwise_both_ways(self):
        model = reference(self.path("train.pt"))
        x = torch.randn(2, DIM)
        grad_y = torch.randn(2, DIM) * 3
        # The daemon differentiates with the gradient as it decodes it.
        codes, shape, scales = tensors.encode_int8_blockwise(grad_y, 8)
        sent = tensors.decode_int8_blockwise(codes, shape, scales, 8)
        x_local = x.clone().requires_grad_(True)
        model(x_local).backward(sent)
        want = x_local.grad

        before = self.client.stats
        r = self.client.compute(x, model_id="train8", training=True)
        b = self.client.backward(grad_y, r.forward_id, model_id="train8", int8_block=8)
        sent_bytes = self.client.stats.bytes_sent - before.bytes_sent
        # Each value within half a quantisation step of its block of 8.
        step = want.reshape(-1, 8).abs().max(dim=1).values / 127
        err = (b.grad_input - want).abs().reshape(-1, 8)
        self.assertTrue(bool((err <= step[:, None] / 2 * (1 + 1e-5) + 1e-7).all()), (err, step))
        self.assertGreater(sent_bytes, 0)

    def test_split_trainer_sequential_is_local_training(self):
        """depth=1, float32: the same arithmetic as the whole model trained here."""
        batches = regression_batches(6, seed=21)
        head, tail, optimizer = split_parts(5)
        local_head, local_tail, local_opt = split_parts(5)
        local_trunk = torch.jit.load(self.path("train.pt"))
        for p in local_trunk.parameters():
            p.requires_grad_(True)
        trunk_opt = torch.optim.SGD(local_trunk.parameters(), lr=SPLIT_TRAINING["learning_rate"],
                                    momentum=SPLIT_TRAINING["momentum"])
        local_losses = []
        for x, y in batches:
            loss = torch.nn.functional.mse_loss(local_tail(local_trunk(local_head(x))), y)
            local_opt.zero_grad()
            trunk_opt.zero_grad()
            loss.backward()
            local_opt.step()
            trunk_opt.step()
            local_losses.append(float(loss))

        trainer = SplitTrainer(self.client, "split1", head, tail, torch.nn.functional.mse_loss, optimizer)
        losses = []
        for x, y in batches:
            got = trainer.step(x, y)
            self.assertEqual(len(got), 1)  # sequential: every step finishes before it returns
            losses += got
        self.assertEqual(trainer.flush(), [])
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(local_losses), rtol=1e-5, atol=1e-6)
        for mine, theirs in ((head, local_head), (tail, local_tail)):
            for p, q in zip(mine.parameters(), theirs.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        # The trunk on the daemon took the same steps as the local one.
        x = batches[0][0]
        torch.testing.assert_close(self.client.compute(x, model_id="split1").output,
                                   local_trunk(x).detach(), rtol=1e-5, atol=1e-6)

    def test_split_trainer_pipelined_keeps_micro_batches_in_flight_and_learns(self):
        batches = regression_batches(40, seed=22)
        head, tail, optimizer = split_parts(6)
        trainer = SplitTrainer(self.client, "split4", head, tail, torch.nn.functional.mse_loss, optimizer,
                               depth=4, wire_dtype=torch.float16)
        losses, most_in_flight = [], 0
        for x, y in batches:
            losses += trainer.step(x, y)
            most_in_flight = max(most_in_flight, trainer.in_flight)
        losses += trainer.flush()
        self.assertEqual(most_in_flight, 3)  # depth - 1 stay in flight between calls
        self.assertEqual(len(losses), len(batches))
        self.assertEqual(trainer.steps, len(batches))
        self.assertEqual(self.client.info().custom_info["model.split4.optimizer_steps"], str(len(batches)))
        self.assertLess(sum(losses[-5:]) / 5, sum(losses[:5]) / 5 * 0.8)  # it learns

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
