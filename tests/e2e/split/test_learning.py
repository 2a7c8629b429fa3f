"""The split-learning example (examples/python) against the real
splitlearnd, checked against PyTorch in this process.

Each test class writes its shards into a temporary folder and starts its own daemon on
an ephemeral loopback port with tests/support/splitlearnd_launcher.py, which stops
exactly that process with SIGTERM.

  SplitInferenceTest   1. split forward == whole model
                       2. greedy generation: legacy cache, session, Generate stream
                       4. ComputeBackward's input gradient == autograd
                       5. float16 / bfloat16 / int64 round trips
  SplitTrainingTest    3. 20 steps of split training == whole-model training (SGD), then
                          a restart from the checkpoint continues the curve; also Adam
                          and gradient accumulation against the whole model
  SessionLimitsTest    6. session count, byte budget and idle expiry
"""
import copy
import os
import sys
import unittest

import splitlearnd_launcher as launcher
from splitlearnd_launcher import DaemonTestCase, wait_until

sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "examples", "python"))

import grpc  # noqa: E402
import torch  # noqa: E402

import demo  # noqa: E402
import gpt2_split as g  # noqa: E402
from splitlearn_client import SplitLearnClient, status_code  # noqa: E402

# The test shares two CPU cores with the daemon.
torch.set_num_threads(1)

LR = 0.05
NEW_TOKENS = 32
TRAIN_STEPS = 20


def trunk_entry(model_id, **extra):
    return launcher.model_entry(model_id, g.TRUNK_FILE, [1, 4, g.HIDDEN], timeout_ms=60000, **extra)


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DaemonCase(DaemonTestCase):
    """Builds the model, writes trunk.pt, starts one daemon for the class."""

    client = None

    @classmethod
    def models(cls):
        raise NotImplementedError

    @classmethod
    def make_daemon(cls, workdir):
        cls.model = g.build_model()
        cls.trunk_path = os.path.join(workdir, g.TRUNK_FILE)
        g.script_trunk(cls.model).save(cls.trunk_path)
        return launcher.Splitlearnd(cls.models(), workdir=workdir,
                                    devices={"cpu": {"intra_op_threads": 1, "queue_capacity": 64}})

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.client = SplitLearnClient(cls.daemon.address, timeout=60)
        cls.addClassCleanup(lambda: cls.client.close())  # the client of the latest reconnect()

    def reconnect(self):
        type(self).client.close()
        type(self).client = SplitLearnClient(self.daemon.address, timeout=60)

    def assertCode(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kwargs)
        self.assertEqual(status_code(cm.exception), code, f"expected {code}, got: {cm.exception}")
        return cm.exception

    def info(self, model_id, key):
        return self.client.service_info().get(f"model.{model_id}.{key}")

    def wait_info(self, model_id, want, timeout_s=10.0):
        """Polls GetServiceInfo until model.<id>.sessions and .session_bytes are `want`."""
        wait_until(lambda: (self.info(model_id, "sessions"), self.info(model_id, "session_bytes")) == want, timeout_s,
                   lambda: f"GetServiceInfo model.{model_id}.sessions/session_bytes to be {want}, now "
                           f"{(self.info(model_id, 'sessions'), self.info(model_id, 'session_bytes'))}")


# ====================================================================== 1, 2, 4, 5

class SplitInferenceTest(DaemonCase):
    INFER = g.INFER_MODEL
    GRAD = "gpt2-trunk-grad"
    IDENTITY = "identity"

    @classmethod
    def models(cls):
        torch.jit.script(Identity()).save(os.path.join(cls.workdir, "identity.pt"))
        identity = launcher.model_entry(cls.IDENTITY, "identity.pt", [1, 4])
        return [
            trunk_entry(cls.INFER, default=True),
            # Trainable, but with learning rate 0 its parameters stay where they are.
            trunk_entry(cls.GRAD, training={"enabled": True, "optimizer": "sgd", "learning_rate": 0.0}),
            identity,
        ]

    # ---- 1
    def test_1_split_forward_matches_whole_model(self):
        ids = torch.randint(0, g.VOCAB, (2, 24), generator=torch.Generator().manual_seed(11))
        with torch.no_grad():
            whole, _ = self.model(ids)
        split = demo.split_logits(self.client, self.model, ids, self.INFER)
        diff = float((split - whole).abs().max())
        print(f"\n[1] split forward: logits {list(split.shape)}, max |split - whole| = {diff:.3g}")
        self.assertEqual(split.shape, whole.shape)
        self.assertLessEqual(diff, 1e-4)

    # ---- 2
    def test_2_greedy_generation_three_ways(self):
        prompt = torch.randint(0, g.VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
        want = g.greedy_generate(self.model, prompt, NEW_TOKENS)
        self.assertEqual(want, g.greedy_generate_no_cache(self.model, prompt, NEW_TOKENS),
                         "the reference model's own cache is not exact")
        expected_held = [prompt.size(1) + i for i in range(NEW_TOKENS)]
        print(f"\n[2] whole model: {want}")
        results = {}
        for fn in (demo.generate_legacy, demo.generate_session, demo.generate_stream):
            with self.subTest(mode=fn.__name__):
                gen = fn(self.client, self.model, prompt, NEW_TOKENS, self.INFER)
                results[gen.mode] = gen
                print(f"[2] ({gen.mode}) {gen.bytes_per_token:.0f} bytes sent per token "
                      f"({gen.bytes_sent} in {gen.trunk_calls} calls), "
                      f"{gen.bytes_received / NEW_TOKENS:.0f} received per token, {gen.seconds:.2f} s")
                self.assertEqual(gen.tokens, want, f"{gen.mode} generation differs from the whole model")
                self.assertEqual(gen.session_tokens, expected_held,
                                 f"{gen.mode}: cache length the server reports after each step")
        with self.subTest(mode="legacy, the first step with an empty cache"):
            gen = demo.generate_legacy(self.client, self.model, prompt, NEW_TOKENS, self.INFER, empty_first_cache=True)
            self.assertEqual(gen.tokens, want, "legacy generation from an empty cache differs from the whole model")
            self.assertEqual(gen.session_tokens, expected_held)
        if "legacy" in results and "session" in results:
            a, b = results["legacy"].bytes_per_token, results["session"].bytes_per_token
            print(f"[2] bytes sent per generated token: (a) legacy {a:.0f}, (b) session {b:.0f}, ratio {a / b:.1f}x")
            # The session sends one token's hidden state (1 KiB) plus framing per step.
            self.assertLess(b, 2 * g.HIDDEN * 4)
            self.assertGreater(a, 10 * b)
        # Closing the session and ending the stream released everything.
        self.wait_info(self.INFER, ("0", "0"))

    def test_2_session_bookkeeping(self):
        h = torch.randn(1, 5, g.HIDDEN)
        with self.client.open_session(self.INFER) as s:
            self.assertTrue(s.id)
            r = s.step(h)
            self.assertEqual(r.session_tokens, 5)
            self.assertEqual(r.session_id, s.id)
            self.assertEqual(self.info(self.INFER, "sessions"), "1")
            # 4 layers x (key + value) x 5 tokens x 256 floats x 4 bytes
            self.assertGreaterEqual(int(self.info(self.INFER, "session_bytes")), 4 * 2 * 5 * g.HIDDEN * 4)
        self.wait_info(self.INFER, ("0", "0"))
        # A step on a closed session is NOT_FOUND; so is closing it again.
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.client.compute, h, model_id=self.INFER, session_id=s.id)
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.client.close_session, s.id, self.INFER)

    # ---- 4
    def test_4_backward_returns_the_true_input_gradient(self):
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(2, 6, g.HIDDEN, generator=gen)
        grad_out = torch.randn(2, 6, g.HIDDEN, generator=gen)
        r = self.client.compute(x, model_id=self.GRAD, training=True)
        self.assertTrue(r.forward_id)
        grad_in = self.client.backward(grad_out, r.forward_id, model_id=self.GRAD)

        ref = torch.jit.load(self.trunk_path)
        xr = x.clone().requires_grad_(True)
        out, _ = ref(xr)
        self.assertLessEqual(float((out.detach() - r.output).abs().max()), 1e-5)
        out.backward(grad_out)
        diff = float((grad_in - xr.grad).abs().max())
        unchanged = float((grad_in - grad_out).abs().max())
        print(f"\n[4] |grad_in - autograd| max {diff:.3g}; |grad_in - grad_output| max {unchanged:.3g}")
        self.assertEqual(list(grad_in.shape), list(x.shape))
        self.assertLessEqual(diff, 1e-5)
        self.assertGreater(unchanged, 1e-2, "the daemon returned the incoming gradient (the old server's bug)")

    def test_4_training_errors(self):
        x = torch.randn(1, 3, g.HIDDEN)
        # Training asked of a model without training enabled.
        self.assertCode(grpc.StatusCode.FAILED_PRECONDITION, self.client.compute, x, model_id=self.INFER,
                        training=True)
        # A forward_id nobody made.
        self.assertCode(grpc.StatusCode.NOT_FOUND, self.client.backward, torch.zeros(1, 3, g.HIDDEN),
                        "no-such-forward", model_id=self.GRAD)
        # The client's own forward_id is kept.
        r = self.client.compute(x, model_id=self.GRAD, training=True, forward_id="client-chosen-id-1")
        self.assertEqual(r.forward_id, "client-chosen-id-1")
        grad = self.client.backward(torch.ones(1, 3, g.HIDDEN), "client-chosen-id-1", model_id=self.GRAD)
        self.assertEqual(list(grad.shape), [1, 3, g.HIDDEN])

    # ---- 5
    def special_floats(self):
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(4, 64, generator=gen) * torch.logspace(-9, 6, 64)
        x[0, :8] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-8, -3e-6, 65504.0, 70000.0])
        x[1, :5] = torch.tensor([1.0 + 2 ** -9, 1.0 + 3 * 2 ** -9, 3.0e38, -1.0e-40, float("nan")])  # ties, extremes
        return x

    def test_5_float32_to_half_and_bfloat16_is_bit_exact(self):
        x = self.special_floats()
        for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
            with self.subTest(dtype=name):
                r = self.client.compute(x, model_id=self.IDENTITY, output_dtype=name)
                self.assertEqual(r.dtype, dt)
                self.assertEqual(r.response.dtype, self.client_dtype(name))
                want = x.to(dt)
                self.assertEqual(list(r.output.shape), list(x.shape))
                self.assertEqual(r.response.data, want.view(torch.int16).numpy().tobytes(),
                                 f"{name} bits differ from PyTorch's conversion")

    def test_5_half_and_bfloat16_round_trip_unchanged(self):
        x = self.special_floats()
        for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
            with self.subTest(dtype=name):
                xh = x.to(dt)
                raw = xh.view(torch.int16).numpy().tobytes()
                r = self.client.compute(xh, model_id=self.IDENTITY)
                self.assertEqual(r.response.dtype, self.client_dtype(name), "answer dtype follows the request's")
                self.assertEqual(r.response.data, raw)
                # And back up to float32 on request.
                r32 = self.client.compute(xh, model_id=self.IDENTITY, output_dtype="float32")
                self.assertEqual(r32.dtype, torch.float32)
                self.assertEqual(r32.response.data, xh.to(torch.float32).numpy().tobytes())

    def test_5_integer_and_bool_pass_unchanged(self):
        ids = torch.tensor([[0, 1, 511, 50256, -1, 2 ** 40, -(2 ** 62), 2 ** 63 - 1]], dtype=torch.int64)
        r = self.client.compute(ids, model_id=self.IDENTITY)
        self.assertEqual(r.dtype, torch.int64)
        self.assertEqual(r.response.data, ids.numpy().tobytes())
        self.assertTrue(torch.equal(r.output, ids))
        i32 = torch.tensor([[7, -7, 2 ** 31 - 1]], dtype=torch.int32)
        r = self.client.compute(i32, model_id=self.IDENTITY)
        self.assertEqual(r.dtype, torch.int32)
        self.assertTrue(torch.equal(r.output, i32))
        mask = torch.tensor([[True, False, True, True]])
        r = self.client.compute(mask, model_id=self.IDENTITY)
        self.assertEqual(r.dtype, torch.bool)
        self.assertTrue(torch.equal(r.output, mask))

    def test_5_legacy_float32_has_no_dtype_surprises(self):
        x = torch.randn(3, 5)
        r = self.client.compute(x, model_id=self.IDENTITY)
        self.assertIn(r.response.dtype, (0, self.client_dtype("float32")))
        self.assertEqual(r.response.data, x.numpy().tobytes())

    @staticmethod
    def client_dtype(name):
        from splitlearn_client import DTYPES
        return DTYPES[name][0]


# ====================================================================== 3

class SplitTrainingTest(DaemonCase):
    TRAIN = g.TRAIN_MODEL
    ADAM = "gpt2-trunk-adam"
    ACCUM = "gpt2-trunk-accum"
    ADAM_LR = 1e-3

    @classmethod
    def models(cls):
        return [
            trunk_entry(cls.TRAIN, training={"enabled": True, "optimizer": "sgd", "learning_rate": LR,
                                             "checkpoint_path": g.CHECKPOINT_FILE}),
            trunk_entry(cls.ADAM, training={"enabled": True, "optimizer": "adam", "learning_rate": cls.ADAM_LR}),
            trunk_entry(cls.ACCUM, training={"enabled": True, "optimizer": "sgd", "learning_rate": LR}),
        ]

    def test_3_adam_follows_whole_model(self):
        initial = copy.deepcopy(self.model)
        whole = demo.WholeTrainer(initial, self.ADAM_LR, "adam")
        split = demo.SplitTrainer(initial, self.ADAM_LR, self.ADAM, "adam")
        want = [whole.step(i) for i in range(6)]
        got = [split.step(self.client, i) for i in range(6)]
        print(f"\n[3] Adam: whole {[round(x, 5) for x in want]}\n[3] Adam: split {[round(x, 5) for x in got]}")
        self.assertLessEqual(max(abs(w - s) for w, s in zip(want, got)), 1e-3)

    def test_3_gradient_accumulation(self):
        initial = copy.deepcopy(self.model)
        whole = demo.WholeTrainer(initial, LR)
        split = demo.SplitTrainer(initial, LR, self.ACCUM)
        want, got = [], []
        for step in range(3):
            indices = [2 * step, 2 * step + 1]
            want += whole.accumulated_step(indices)
            got += split.accumulated_step(self.client, indices)
        print(f"\n[3] accumulation 2: whole {[round(x, 5) for x in want]}\n"
              f"[3] accumulation 2: split {[round(x, 5) for x in got]}")
        self.assertLessEqual(max(abs(w - s) for w, s in zip(want, got)), 1e-3)
        self.assertEqual(self.info(self.ACCUM, "optimizer_steps"), "3")

    def test_3_split_training_follows_whole_model_and_survives_restart(self):
        initial = copy.deepcopy(self.model)
        whole = demo.WholeTrainer(initial, LR)
        split = demo.SplitTrainer(initial, LR, self.TRAIN)
        want = [whole.step(i) for i in range(TRAIN_STEPS + 1)]

        got = []
        for i in range(TRAIN_STEPS):
            # Half the steps name their own forward_id and send the learning rate; the
            # others let the daemon pick the id and use the configured rate.
            own = i % 2 == 1
            got.append(split.step(self.client, i, forward_id=f"step-{i}" if own else None, send_learning_rate=own))
        print("\n[3] step  whole      split      |diff|")
        for i, (w, s) in enumerate(zip(want, got)):
            print(f"[3] {i + 1:4d}  {w:.6f}  {s:.6f}  {abs(w - s):.2e}")
        diffs = [abs(w - s) for w, s in zip(want, got)]
        self.assertLessEqual(max(diffs), 1e-3, f"loss curves differ: whole {want[:TRAIN_STEPS]}, split {got}")
        self.assertLess(got[-1], got[0] - 0.05, "the loss did not go down: nothing was learnt")

        # Restart: SIGTERM makes the daemon write its checkpoint; the next start loads it.
        ckpt = os.path.join(self.workdir, g.CHECKPOINT_FILE)
        self.daemon.shutdown()
        self.assertTrue(os.path.isfile(ckpt), f"no checkpoint at {ckpt} after SIGTERM; log:\n{self.daemon.log()}")
        self.daemon.start()
        self.reconnect()
        # What step 21 would give if the daemon had started over from trunk.pt instead.
        with torch.no_grad():
            batch = g.language_batch(TRAIN_STEPS)
            h, _ = split.bottom(batch[:, :-1])
            h, _ = initial.trunk(h)
            untrained = float(g.next_token_loss(split.top(h)[0], batch[:, 1:]))
        after = split.step(self.client, TRAIN_STEPS)
        print(f"[3] after restart, step {TRAIN_STEPS + 1}: whole {want[-1]:.6f}, split {after:.6f}, "
              f"|diff| {abs(want[-1] - after):.2e} (an untrained trunk would give {untrained:.6f})")
        self.assertLessEqual(abs(want[-1] - after), 1e-3, "the curve does not continue after the restart")

        path, steps = self.client.save_checkpoint(self.TRAIN)
        self.assertTrue(path.endswith(g.CHECKPOINT_FILE), path)
        self.assertTrue(os.path.isfile(path) or os.path.isfile(ckpt))
        self.assertGreaterEqual(steps, 1)


# ====================================================================== 6

TOKEN_BYTES = 4 * 2 * g.HIDDEN * 4  # trunk cache per token: 4 layers x (key + value) x 256 float32


class SessionLimitsTest(DaemonCase):
    LIMITS = "trunk-limits"
    IDLE = "trunk-idle"

    @classmethod
    def models(cls):
        return [
            trunk_entry(cls.LIMITS, sessions={"max_sessions": 2, "idle_timeout_s": 300,
                                              "max_bytes": 8 * TOKEN_BYTES}),
            trunk_entry(cls.IDLE, sessions={"max_sessions": 4, "idle_timeout_s": 1, "max_bytes": 64 * TOKEN_BYTES}),
        ]

    def test_6_max_sessions(self):
        s1 = self.client.open_session(self.LIMITS)
        s2 = self.client.open_session(self.LIMITS)
        try:
            self.assertNotEqual(s1.id, s2.id)
            self.assertCode(grpc.StatusCode.RESOURCE_EXHAUSTED, self.client.open_session, self.LIMITS)
            self.assertEqual(self.info(self.LIMITS, "sessions"), "2")
        finally:
            s1.close()
            s2.close()
        self.wait_info(self.LIMITS, ("0", "0"))
        # Closed sessions free their places.
        self.client.open_session(self.LIMITS).close()

    def close_quietly(self, session):
        """Closes a session that a refused step may have ended already."""
        try:
            session.close()
        except grpc.RpcError as e:
            if status_code(e) != grpc.StatusCode.NOT_FOUND:
                raise

    def test_6_byte_budget(self):
        # The budget holds 8 tokens of cache for the whole model, over all its sessions.
        a = self.client.open_session(self.LIMITS)
        b = self.client.open_session(self.LIMITS)
        try:
            a.step(torch.randn(1, 4, g.HIDDEN))
            b.step(torch.randn(1, 2, g.HIDDEN))
            used = int(self.info(self.LIMITS, "session_bytes"))
            print(f"\n[6] two sessions holding 6 tokens: session_bytes = {used}")
            self.assertGreaterEqual(used, 6 * TOKEN_BYTES)
            self.assertLessEqual(used, 8 * TOKEN_BYTES)
            # Three more tokens would make 9: over the budget.
            self.assertCode(grpc.StatusCode.RESOURCE_EXHAUSTED, b.step, torch.randn(1, 3, g.HIDDEN))
            # And more than the whole budget in one step.
            self.assertCode(grpc.StatusCode.RESOURCE_EXHAUSTED, a.step, torch.randn(1, 9, g.HIDDEN))
        finally:
            self.close_quietly(a)
            self.close_quietly(b)
        self.wait_info(self.LIMITS, ("0", "0"))
        # Everything returned: a fresh session may use the whole budget.
        with self.client.open_session(self.LIMITS) as c:
            r = c.step(torch.randn(1, 8, g.HIDDEN))
            self.assertEqual(r.session_tokens, 8)

    def test_6_idle_sessions_expire_and_return_memory(self):
        s = self.client.open_session(self.IDLE)
        self.assertAlmostEqual(s.idle_timeout_s, 1.0, places=3)
        r = s.step(torch.randn(1, 6, g.HIDDEN))
        self.assertEqual(r.session_tokens, 6)
        # It may already be gone on a slow machine; if it is still there, it holds memory.
        sessions = self.info(self.IDLE, "sessions")
        if sessions == "1":
            self.assertGreaterEqual(int(self.info(self.IDLE, "session_bytes")), 6 * TOKEN_BYTES)
        self.wait_info(self.IDLE, ("0", "0"), timeout_s=15)
        self.assertCode(grpc.StatusCode.NOT_FOUND, s.step, torch.randn(1, 1, g.HIDDEN))
        print(f"\n[6] idle session {s.id} expired, model.{self.IDLE}.sessions/session_bytes back to 0")


if __name__ == "__main__":
    unittest.main()
