"""Models made by PyTorch 2.x, on the libtorch 2.x build (registered only there).

  EncoderTrunkTest   a trunk of nn.TransformerEncoderLayer scripted by this PyTorch
                     (its attention calls aten::scaled_dot_product_attention) serves a
                     legacy client, alone and in merged batches, equal to PyTorch's
                     own forward
  AotiPackageTest    the same trunk as an AOTInductor package (.pt2): batch 1 and
                     merged batches equal to eager PyTorch; a wrong shape is
                     INVALID_ARGUMENT and changes nothing; a package that does not
                     describe its inputs is refused at load
  AotiConfigTest     --check-config refuses training and sessions on a .pt2 model

The GPT-style split (generation with KV caches and sessions, training with backward
and optimizer steps) runs on this build through tests/e2e/split, whose trunk uses
scaled_dot_product_attention wherever PyTorch has it.
"""
import os
import subprocess
import sys
import tempfile
import threading
import unittest
import zipfile

import grpc
import numpy as np
import torch

from splitlearnd_launcher import SOURCE_DIR, DaemonTestCase, Splitlearnd, model_entry, require
from legacy_wire import LegacyClient

sys.path.insert(0, os.path.join(SOURCE_DIR, "examples", "python"))
import export_trunk  # noqa: E402

torch.set_num_threads(1)

LAYERS, HIDDEN, HEADS = 4, 768, 12
SEQ = 10
MAX_BATCH = 8  # rows of a merged batch


def reference(trunk, x):
    with torch.no_grad():
        return trunk(torch.from_numpy(x)).numpy()


def concurrent_compute(address, inputs, model_id):
    """Each input from its own legacy client, all at once; returns the answers in order."""
    answers = [None] * len(inputs)
    errors = []
    start = threading.Barrier(len(inputs))

    def call(i):
        client = LegacyClient(address)
        try:
            start.wait()
            answers[i] = client.compute(inputs[i], model_id=model_id)[0]
        except Exception as e:  # reported below, with the others
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return answers


def batches_run(address):
    client = LegacyClient(address)
    try:
        return int(client.info().custom_info["device.cpu.batches_run"])
    finally:
        client.close()


def assert_alone(test, row_counts, seed, tolerance):
    """One request at a time from a legacy client: each answer has the shape and values
    of PyTorch's eager forward of the trunk."""
    rng = np.random.default_rng(seed)
    client = LegacyClient(test.daemon.address)
    try:
        for rows in row_counts:
            x = rng.standard_normal((rows, SEQ, HIDDEN), dtype=np.float32)
            got, want = client.compute(x)[0], reference(test.trunk, x)
            test.assertEqual(got.shape, want.shape)
            test.assertLess(float(np.abs(got - want).max()), tolerance)
    finally:
        client.close()


def assert_merged(test, inputs, model_id, reference_fn, tolerance):
    """The inputs at once: each answer equals `reference_fn` of its input, and the
    device ran fewer batches than requests (some were merged)."""
    before = batches_run(test.daemon.address)
    answers = concurrent_compute(test.daemon.address, inputs, model_id)
    ran = batches_run(test.daemon.address) - before
    for x, resp in zip(inputs, answers):
        test.assertLess(float(np.abs(resp - reference_fn(x)).max()), tolerance)
    test.assertLess(ran, len(inputs), "no two requests were merged")


class EncoderTrunkTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        cls.trunk = export_trunk.encoder_trunk(LAYERS, HIDDEN, HEADS)
        path = os.path.join(workdir, "trunk.pt")
        export_trunk.save_torchscript(cls.trunk, path)
        with zipfile.ZipFile(path) as z:
            cls.code = "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py"))
        return [model_entry("trunk", "trunk.pt", [1, SEQ, HIDDEN], default=True,
                            batching={"max_batch_size": MAX_BATCH, "max_delay_us": 100000, "wait": "fixed"})]

    def test_the_file_is_one_only_pytorch_2_writes(self):
        self.assertTrue(torch.__version__.startswith("2."), torch.__version__)
        self.assertIn("scaled_dot_product_attention", self.code)

    def test_legacy_client_gets_pytorchs_own_forward(self):
        assert_alone(self, (1, 3), seed=1, tolerance=1e-5)

    def test_merged_batches_equal_pytorch(self):
        rng = np.random.default_rng(2)
        inputs = [rng.standard_normal((1, SEQ, HIDDEN), dtype=np.float32) for _ in range(6)]
        assert_merged(self, inputs, "trunk", lambda x: reference(self.trunk, x), 1e-5)


class AotiPackageTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        cls.trunk = export_trunk.encoder_trunk(LAYERS, HIDDEN, HEADS)
        example = {"src": torch.randn(2, SEQ, HIDDEN)}
        export_trunk.save_aoti_package(cls.trunk, example, {"src": {0: ("B", 1, MAX_BATCH)}},
                                       os.path.join(workdir, "trunk.pt2"))
        entry = model_entry("trunk-aoti", "trunk.pt2", [1, SEQ, HIDDEN], default=True,
                            batching={"max_batch_size": MAX_BATCH, "max_delay_us": 100000, "wait": "fixed"})
        return [entry]

    def test_batch_one_equals_eager(self):
        assert_alone(self, (1, 2, 5), seed=3, tolerance=1e-4)

    def test_merged_batches_equal_eager(self):
        rng = np.random.default_rng(4)
        inputs = [rng.standard_normal((1, SEQ, HIDDEN), dtype=np.float32) for _ in range(6)]
        assert_merged(self, inputs, "trunk-aoti", lambda x: reference(self.trunk, x), 1e-4)

    def test_wrong_shapes_are_invalid_argument(self):
        client = LegacyClient(self.daemon.address)
        try:
            for shape in [(1, SEQ, HIDDEN - 1), (1, SEQ + 1, HIDDEN), (MAX_BATCH + 1, SEQ, HIDDEN), (SEQ, HIDDEN)]:
                with self.assertRaises(grpc.RpcError) as ctx:
                    client.compute(np.zeros(shape, dtype=np.float32))
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, shape)
                self.assertIn("rejected the input", ctx.exception.details())
            x = np.ones((1, SEQ, HIDDEN), dtype=np.float32)
            self.assertLess(float(np.abs(client.compute(x)[0] - reference(self.trunk, x)).max()), 1e-4)
        finally:
            client.close()
        self.assertDaemonAlive()


class GptSplitTrunkTest(unittest.TestCase):
    def test_the_split_learning_trunk_uses_fused_attention_here(self):
        """tests/e2e/split serves this trunk: on this build it is a PyTorch 2.x file."""
        import gpt2_split
        trunk = torch.jit.script(gpt2_split.GPT2().trunk)
        with tempfile.TemporaryDirectory() as d:
            trunk.save(os.path.join(d, "trunk.pt"))
            with zipfile.ZipFile(os.path.join(d, "trunk.pt")) as z:
                code = "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py"))
        self.assertIn("scaled_dot_product_attention", code)


class AotiRefusalTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="splitlearnd-aoti-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", self.dir]))

    def check_config(self, model):
        path = os.path.join(self.dir, "c.yaml")
        with open(path, "w") as f:
            f.write(f"model_root: {self.dir}\nmodels:\n" + "".join(f"  {line}\n" for line in model))
        return subprocess.run([require("SPLITLEARND_BIN"), "--check-config", path], capture_output=True, text=True,
                              timeout=60)

    def test_check_config_refuses_training_and_sessions(self):
        open(os.path.join(self.dir, "t.pt2"), "wb").close()  # --check-config wants the file to exist
        r = self.check_config(["- id: t", "  path: t.pt2", "  training: {enabled: true}"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("holds no backward", r.stderr)
        r = self.check_config(["- id: t", "  path: t.pt2", "  sessions: {max_sessions: 4}"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no sessions", r.stderr)
        r = self.check_config(["- id: t", "  path: t.pt2"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_package_without_input_description_is_refused(self):
        small = torch.nn.Linear(4, 4).eval()
        program = torch.export.export(small, (torch.randn(2, 4),))
        torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(self.dir, "bare.pt2"))
        good = os.path.join(self.dir, "good.pt2")
        export_trunk.save_aoti_package(small, {"x": torch.randn(2, 4)}, {"x": {0: ("B", 1, 16)}}, good)
        daemon = Splitlearnd([model_entry("bare", "bare.pt2", [2, 4]),
                              model_entry("good", "good.pt2", [2, 4], default=True)], workdir=self.dir, failed_ok=1)
        try:
            daemon.start()
            client = LegacyClient(daemon.address)
            try:
                x = np.ones((3, 4), dtype=np.float32)
                with torch.no_grad():
                    want = small(torch.from_numpy(x)).numpy()
                self.assertLess(float(np.abs(client.compute(x, model_id="good")[0] - want).max()), 1e-5)
                with self.assertRaises(grpc.RpcError) as ctx:
                    client.compute(x, model_id="bare")
                self.assertIn("splitlearnd.inputs", ctx.exception.details())
            finally:
                client.close()
        finally:
            daemon.stop()


if __name__ == "__main__":
    unittest.main()
