"""A TorchScript file written by PyTorch 2.x, on the libtorch 1.13 build (registered
only there): the model fails its load with one readable message (the operator this
libtorch lacks, that PyTorch 2.x wrote the file, what to do), nowhere a page of
TorchScript source (status, log, splitlearnctl), and the daemon serves its other
models. The file is tests/torchscript/fixtures/encoder_trunk_torch2.pt (made by
Debian 13's python3-torch with make_encoder_trunk.py beside it)."""
import os
import shutil
import subprocess
import tempfile
import unittest

import grpc
import numpy as np

import torch_models
from splitlearnd_launcher import SOURCE_DIR, Splitlearnd, model_entry, require
from legacy_wire import LegacyClient

FIXTURE = os.path.join(SOURCE_DIR, "tests", "torchscript", "fixtures", "encoder_trunk_torch2.pt")


class PyTorch2FileTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="splitlearnd-pt2file-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_refused_in_a_few_words_while_the_rest_serves(self):
        shutil.copy(FIXTURE, os.path.join(self.dir, "encoder.pt"))
        torch_models.make(torch_models.Identity, os.path.join(self.dir, "identity.pt"))
        daemon = Splitlearnd([model_entry("encoder", "encoder.pt", [1, 5, 32]),
                              model_entry("identity", "identity.pt", [1, 4], default=True)], workdir=self.dir,
                             failed_ok=1)
        try:
            daemon.start()
            client = LegacyClient(daemon.address)
            try:
                x = np.arange(8, dtype=np.float32).reshape(2, 4)
                np.testing.assert_array_equal(client.compute(x)[0], x)
                with self.assertRaises(grpc.RpcError) as ctx:
                    client.compute(np.zeros((1, 5, 32), dtype=np.float32), model_id="encoder")
                details = ctx.exception.details()
            finally:
                client.close()
            info = subprocess.run([require("SPLITLEARNCTL_BIN"), "-a", daemon.address, "info"], capture_output=True,
                                  text=True, timeout=60)
        finally:
            # Under ASan, LeakSanitizer's exit-time pass over the module libtorch 1.13 leaks
            # on this refusal (lsan.supp) takes about a minute on 2 cores.
            daemon.stop(timeout_s=600)
        log = daemon.log()
        for where, text in (("the call's status", details), ("splitlearnctl info", info.stdout + info.stderr),
                            ("the log", log)):
            with self.subTest(where=where):
                self.assertIn("aten::scaled_dot_product_attention", text)
                self.assertIn("written by PyTorch 2.x", text)
                self.assertIn("docs/building.md", text)
                self.assertNotIn("<--- HERE", text)
                self.assertNotIn("multi_head_attention_forward", text)


if __name__ == "__main__":
    unittest.main()
