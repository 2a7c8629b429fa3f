"""Training through the real splitlearnd for trunks whose forward() returns more than
a tensor, checked against PyTorch in this process.

The trunk users meet is GPT-2-style: `forward(hidden_states, past_key_values=None)`
returns `(hidden, presents)` with the presents list of per-layer (key, value) pairs on
every call, as Hugging Face blocks do with use_cache on. Beside it a trunk returning a
dict and one returning a plain tensor. For each: a training forward answers what
inference answers, ComputeBackward's input gradient equals autograd's, and after the
daemon's SGD step the served trunk computes what the same file stepped here computes.
Both Python clients are used: the splitlearnd_client package and examples/python's.
"""
import os
import sys
import unittest
from typing import Dict, List, Optional, Tuple

import splitlearnd_launcher as launcher
from splitlearnd_launcher import DaemonTestCase, model_entry

sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "client", "python"))
sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "examples", "python"))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import gpt2_split as g  # noqa: E402
from splitlearn_client import SplitLearnClient  # noqa: E402
from splitlearnd_client import Client  # noqa: E402

# The test shares two CPU cores with the daemon.
torch.set_num_threads(1)

HIDDEN = 64
LR = 0.1
SHAPE = (2, 5, HIDDEN)


class PresentsTrunk(nn.Module):
    """Hugging Face's GPT-2 blocks with use_cache on: the cache comes back on every call."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([g.Block(HIDDEN, 4, 2 * HIDDEN) for _ in range(2)])

    def forward(self, hidden_states: Tensor, past_key_values: Optional[List[Tuple[Tensor, Tensor]]] = None
                ) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        presents: List[Tuple[Tensor, Tensor]] = []
        x = hidden_states
        i = 0
        for block in self.blocks:
            past: Optional[Tuple[Tensor, Tensor]] = None
            if past_key_values is not None and len(past_key_values) > 0:
                past = past_key_values[i]
            x, present = block(x, past)
            presents.append(present)
            i += 1
        return x, presents


class DictTrunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = g.Block(HIDDEN, 4, 2 * HIDDEN)

    def forward(self, hidden_states: Tensor) -> Dict[str, Tensor]:
        x, _ = self.block(hidden_states, None)
        return {"last_hidden_state": x, "pooled": x.mean(1)}


class TensorTrunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = g.Block(HIDDEN, 4, 2 * HIDDEN)

    def forward(self, hidden_states: Tensor) -> Tensor:
        x, _ = self.block(hidden_states, None)
        return x


FILES = {"presents.pt": PresentsTrunk, "dict.pt": DictTrunk, "tensor.pt": TensorTrunk}


def primary(out):
    """The output the client's gradient belongs to: the tuple's first, the dict's first."""
    if isinstance(out, tuple):
        return out[0]
    if isinstance(out, dict):
        return out["last_hidden_state"]
    return out


class PackageClient:
    """splitlearnd_client.Client, as the steps below call it."""

    def __init__(self, address):
        self.client = Client(address, timeout=60)

    def compute(self, x, model_id, **kwargs):
        return self.client.compute(x, model_id=model_id, **kwargs)

    def backward(self, grad, forward_id, model_id):
        return self.client.backward(grad, forward_id, model_id=model_id).grad_input

    def close(self):
        self.client.close()


class ExampleClient:
    """examples/python's SplitLearnClient, as the steps below call it."""

    def __init__(self, address):
        self.client = SplitLearnClient(address, timeout=60)

    def compute(self, x, model_id, **kwargs):
        return self.client.compute(x, model_id=model_id, **kwargs)

    def backward(self, grad, forward_id, model_id):
        return self.client.backward(grad, forward_id, model_id=model_id)

    def close(self):
        self.client.close()


class TrainingOutputsTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        for i, (name, cls_) in enumerate(FILES.items()):
            torch.manual_seed(100 + i)
            torch.jit.script(cls_().eval()).save(os.path.join(workdir, name))
        training = {"enabled": True, "optimizer": "sgd", "learning_rate": LR}

        def entry(model_id, path, **extra):
            return model_entry(model_id, path, [1, 4, HIDDEN], timeout_ms=60000, **extra)
        return [
            entry("presents", "presents.pt", training=dict(training, checkpoint_path="presents.ckpt.pt")),
            entry("presents-example", "presents.pt", training=training),
            entry("presents-infer", "presents.pt"),
            entry("dict", "dict.pt", training=training),
            entry("tensor", "tensor.pt", training=training),
        ]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.package = PackageClient(cls.daemon.address)
        cls.addClassCleanup(cls.package.close)
        cls.example = ExampleClient(cls.daemon.address)
        cls.addClassCleanup(cls.example.close)

    def reference(self, name):
        return torch.jit.load(os.path.join(self.workdir, name))

    def assertClose(self, got, want, what):
        """max |got - want| <= 1e-5 * max |want|"""
        self.assertEqual(list(got.shape), list(want.shape), what)
        err = float((got - want).abs().max())
        scale = float(want.abs().max())
        self.assertGreater(scale, 0, what)
        self.assertLessEqual(err, 1e-5 * scale, f"{what}: max |difference| {err:.3g}, largest value {scale:.3g}")

    def train_one_step(self, client, model_id, file, seed):
        """One training step on the daemon and the same one here; returns the stepped
        reference module."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(*SHAPE, generator=gen)
        grad_out = torch.randn(*SHAPE, generator=gen)
        ref = self.reference(file)
        xr = x.clone().requires_grad_(True)
        out = ref(xr)
        primary(out).backward(grad_out)

        r = client.compute(x, model_id, training=True)
        self.assertTrue(r.forward_id, "a training forward answers with a forward_id")
        # What inference would answer: the primary output, the others by name, the cache.
        self.assertClose(r.output, primary(out).detach(), "primary output")
        if isinstance(out, tuple):
            self.assertEqual(len(r.present_key_values), len(out[1]))
            for (k, v), (k_ref, v_ref) in zip(r.present_key_values, out[1]):
                self.assertClose(k, k_ref.detach(), "present key")
                self.assertClose(v, v_ref.detach(), "present value")
        else:
            self.assertEqual(len(r.present_key_values), 0)
        if isinstance(out, dict):
            self.assertEqual(set(r.outputs), {"pooled"})
            self.assertClose(r.outputs["pooled"], out["pooled"].detach(), "output 'pooled'")
        else:
            self.assertEqual(r.outputs, {})

        grad_in = client.backward(grad_out, r.forward_id, model_id)
        diff = float((grad_in - xr.grad).abs().max())
        print(f"\n[{model_id}] |grad_in - autograd| max {diff:.3g}")
        self.assertClose(grad_in, xr.grad, "input gradient")

        with torch.no_grad():
            for p in ref.parameters():
                p -= LR * p.grad
        # The daemon's trunk took the same step: its next forward is the stepped copy's.
        x2 = torch.randn(*SHAPE, generator=gen)
        with torch.no_grad():
            want = primary(ref(x2))
        self.assertClose(client.compute(x2, model_id).output, want, "next forward after the step")
        return ref

    def test_presents_trunk_trains_through_the_package_client(self):
        ref = self.train_one_step(self.package, "presents", "presents.pt", seed=1)
        # And the checkpoint holds the stepped weights.
        path, steps = self.example.client.save_checkpoint("presents")
        self.assertTrue(path.endswith("presents.ckpt.pt"), path)
        self.assertEqual(steps, 1)
        saved = dict(torch.jit.load(self.daemon.path("presents.ckpt.pt")).named_parameters())
        stepped = dict(ref.named_parameters())
        self.assertEqual(set(saved), set(stepped))
        for name, p in stepped.items():
            self.assertClose(saved[name].detach(), p.detach(), f"checkpointed {name}")

    def test_presents_trunk_trains_through_the_example_client(self):
        self.train_one_step(self.example, "presents-example", "presents.pt", seed=2)

    def test_dict_trunk_trains(self):
        self.train_one_step(self.package, "dict", "dict.pt", seed=3)

    def test_tensor_trunk_trains(self):
        self.train_one_step(self.package, "tensor", "tensor.pt", seed=4)

    def test_presents_trunk_serves_inference_and_legacy_cache_steps(self):
        ref = self.reference("presents.pt")
        gen = torch.Generator().manual_seed(5)
        prompt = torch.randn(1, 4, HIDDEN, generator=gen)
        token = torch.randn(1, 1, HIDDEN, generator=gen)
        with torch.no_grad():
            want_h, want_cache = ref(prompt)
            want_next, _ = ref(token, want_cache)
        r = self.package.compute(prompt, "presents-infer", use_cache=True)
        self.assertClose(r.output, want_h, "prompt output")
        self.assertEqual(len(r.present_key_values), len(want_cache))
        r2 = self.package.compute(token, "presents-infer", past_key_values=r.present_key_values, use_cache=True)
        self.assertClose(r2.output, want_next, "output of the cached step")
        self.assertEqual(r2.present_key_values[0][0].shape[2], 5)


if __name__ == "__main__":
    unittest.main()
