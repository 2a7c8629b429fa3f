"""examples/python/fashion_mnist_split.py on real data against the real splitlearnd: a
CNN split three ways, trained on the first 640 Fashion-MNIST images (from Debian's
dataset-fashion-mnist), compared with the same training in this process.

  1. float32 on the wire, sequential: every step's loss equals the local run's, and so
     does the test accuracy.
  2. float16 and int8 blockwise: half and about a quarter of float32's bytes per step,
     and loss curves that follow the local one.
  3. int8 with four micro-batches in flight (pipelined training) learns (2,560 images).

The whole two-epoch comparison (60,000 images) is in docs/benchmarks.md.
"""
import os
import sys
import unittest

import splitlearnd_launcher as launcher
from splitlearnd_launcher import DaemonTestCase

sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "examples", "python"))

import torch  # noqa: E402

import fashion_mnist_split as fm  # noqa: E402
from splitlearnd_client import Client  # noqa: E402

torch.set_num_threads(1)  # the test shares two CPU cores with the daemon
IMAGES = 640
PIPELINED_IMAGES = 2560
BATCH = 64
# Per step: the head's output and its gradient (64 x 16 x 14 x 14 each), the trunk's
# output and its gradient (64 x 32 x 7 x 7 each), as float32.
FLOAT32_TENSOR_BYTES = 4 * 2 * BATCH * (16 * 14 * 14 + 32 * 7 * 7)


class FashionMNISTSplitTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        fm.export(workdir)
        models = fm.daemon_config(workdir)["models"]
        pipelined = dict(models[-1], id="fmnist-pipelined")
        return models + [pipelined]

    @classmethod
    def setUpClass(cls):
        data = os.path.join(fm.DATA_DIR, "train-images-idx3-ubyte.gz")
        assert os.path.exists(data), f"{data} is missing: install Debian's dataset-fashion-mnist"
        super().setUpClass()
        cls.train = fm.load(fm.DATA_DIR, "train", IMAGES)
        x, y = fm.load(fm.DATA_DIR, "t10k")
        cls.test = (x[:1000], y[:1000])
        cls.local = fm.train_local(cls.train, cls.test, epochs=1, batch=BATCH)
        cls.client = Client(cls.daemon.address, timeout=120)
        cls.addClassCleanup(cls.client.close)

    def split(self, encoding, depth=1, model_id=None):
        return fm.train_split(self.client, encoding, self.train, self.test, epochs=1, batch=BATCH, depth=depth,
                              model_id=model_id)

    def test_1_float32_sequential_is_local_training(self):
        r = self.split("float32")
        print(f"\n[1] local {self.local['accuracy']:.1f} %, split float32 {r['accuracy']:.1f} %, "
              f"{r['bytes_per_step']:,.0f} bytes per step")
        self.assertEqual(r["steps"], IMAGES // BATCH)
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(self.local["losses"]), rtol=1e-4,
                                   atol=1e-5)
        self.assertAlmostEqual(r["accuracy"], self.local["accuracy"], delta=0.2)
        # The four tensors of a step, and a few hundred bytes of messages around them.
        self.assertGreater(r["bytes_per_step"], FLOAT32_TENSOR_BYTES)
        self.assertLess(r["bytes_per_step"], FLOAT32_TENSOR_BYTES * 1.001)

    def test_2_float16_and_int8_cut_the_bytes_and_follow_the_local_curve(self):
        base = FLOAT32_TENSOR_BYTES
        local = torch.tensor(self.local["losses"])
        for encoding, low, high in (("float16", 0.49, 0.51), ("int8", 0.25, 0.29)):
            r = self.split(encoding)
            ratio = r["bytes_per_step"] / base
            gap = float((torch.tensor(r["losses"]) - local).abs().max())
            print(f"\n[2] {encoding}: {ratio:.3f} of float32's bytes, largest loss gap to local {gap:.4f}")
            self.assertGreaterEqual(ratio, low)
            self.assertLessEqual(ratio, high)
            self.assertLess(gap, 0.05)

    def test_3_pipelined_int8_learns(self):
        train = fm.load(fm.DATA_DIR, "train", PIPELINED_IMAGES)
        r = fm.train_split(self.client, "int8", train, self.test, epochs=1, batch=BATCH, depth=4,
                           model_id="fmnist-pipelined")
        losses = r["losses"]
        print(f"\n[3] depth 4, int8: loss {sum(losses[:5]) / 5:.3f} -> {sum(losses[-5:]) / 5:.3f}, "
              f"accuracy {r['accuracy']:.1f} %")
        self.assertEqual(len(losses), PIPELINED_IMAGES // BATCH)
        # Which backward reaches the daemon first depends on timing, and with three
        # micro-batches of staleness and momentum 0.9 the early curve varies from run
        # to run: these 40 steps ended at 59.4 % and, under ASan, 42.7 and 44.1 %; 80
        # steps at 35.8 to 62.6 % in three runs, and single batches' losses are too
        # noisy to compare. The bound says "it learns", not how fast.
        self.assertGreater(r["accuracy"], 25.0)  # ten classes: chance is 10 %
        self.assertLess(r["bytes_per_step"], FLOAT32_TENSOR_BYTES * 0.29)  # int8 also when pipelined


if __name__ == "__main__":
    unittest.main()
