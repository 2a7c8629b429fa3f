"""Int8 blockwise tensors on the wire (docs/protocol.md, "int8 blockwise"): inputs sent
quantised and answers asked quantised, through the real daemon.

  Int8BlockwiseTest  the primary input and a named input sent int8 blockwise, the
                     primary and a named float32 output answered int8 blockwise: each
                     answer is within its own quantisation bound of PyTorch's output
                     for the decoded inputs; an int64 output and an output holding
                     infinity come back plain; a request that does not ask, and an
                     unmodified legacy client, get plain float32; wrong scale or byte
                     counts, a block size of 0 and a negative scale are INVALID_ARGUMENT
  ClientPackageInt8Test  the splitlearnd_client package's int8_block option, named
                     inputs and outputs and a KV cache both ways included
  TrainingInt8Test   a training forward on int8 inputs and a backward with int8
                     grad_output and grad_input, within the bound of autograd's gradient
"""
import os
import sys
from typing import Dict

import grpc
import numpy as np
import torch

import replica_models
import torch_models
from legacy_wire import LEGACY_CHANNEL_OPTIONS, LegacyClient
import splitlearnd_launcher as launcher
from splitlearnd_launcher import DaemonTestCase, model_entry

import compute_pb2  # noqa: E402  (generated; the launcher put its folder on sys.path)
import compute_pb2_grpc  # noqa: E402

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
INT8 = compute_pb2.OUTPUT_ENCODING_INT8_BLOCKWISE
# float32 results of the same operations in two processes (different kernels) differ by
# a few units in the last place; the legacy tests allow this much.
COMPUTE_TOLERANCE = 1e-5


class Mixer(torch.nn.Module):
    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> Dict[str, torch.Tensor]:
        y = x * 2.0 + bias
        return {"y": y, "total": y.sum(-1), "argmax": y.argmax(-1)}


def encode(x, block):
    """The protocol's encoder, written from docs/protocol.md: codes, scales."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    codes = np.zeros(flat.size, dtype=np.int8)
    scales = []
    for start in range(0, flat.size, block):
        part = flat[start:start + block].astype(np.float64)
        absmax = float(np.max(np.abs(part)))
        scale = np.float32(absmax / 127.0)
        if float(scale) < absmax / 127.0:
            scale = np.nextafter(scale, np.float32(np.inf), dtype=np.float32)
        scales.append(float(scale))
        if scale > 0:
            codes[start:start + block] = np.clip(np.rint(part / float(scale)), -127, 127).astype(np.int8)
    return codes.tobytes(), scales


def decode(data, scales, block, shape):
    codes = np.frombuffer(data, dtype=np.int8).astype(np.float64)
    per_value = np.repeat(np.asarray(scales, dtype=np.float64), block)[:codes.size]
    return (codes * per_value).astype(np.float32).reshape(tuple(shape)), per_value.reshape(tuple(shape))


def quantised(x, block):
    data, scales = encode(x, block)
    return data, compute_pb2.BlockwiseInt8(block_size=block, scales=scales)


class Int8BlockwiseTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        cls.linear_path = torch_models.make(torch_models.LinearGelu, os.path.join(workdir, "linear.pt"), seed=31)
        torch.jit.script(Mixer()).save(os.path.join(workdir, "mixer.pt"))
        return [
            model_entry("linear-gelu", "linear.pt", [1, 768], default=True, batching={"max_batch_size": 4}),
            model_entry("mixer", "mixer.pt"),
        ]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ref = torch_models.Reference(cls.linear_path)
        cls.mixer = torch.jit.script(Mixer())
        cls.channel = grpc.insecure_channel(cls.daemon.address, options=LEGACY_CHANNEL_OPTIONS)
        cls.stub = compute_pb2_grpc.ComputeServiceStub(cls.channel)
        cls.rng = np.random.default_rng(77)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        super().tearDownClass()

    def f32(self, shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def assertWithinBound(self, got, step, expected):
        """|got - expected| <= half a step of got's block, one float32 rounding, and
        the float32 difference between two runs of the same model."""
        bound = step / 2 + np.abs(got.astype(np.float64)) * 2.0 ** -24 + COMPUTE_TOLERANCE
        err = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        worst = int(np.argmax(err - bound))
        self.assertTrue(np.all(err <= bound),
                        f"value {worst}: error {err.flat[worst]} over the bound {bound.flat[worst]}")

    def test_int8_in_and_out_within_the_bound(self):
        for block in (64, 100, 7):
            with self.subTest(block=block):
                x = self.f32([3, 768], scale=4.0)
                data, q = quantised(x, block)
                resp = self.stub.Compute(compute_pb2.ComputeRequest(
                    data=data, shape=list(x.shape), data_int8_blockwise=q, output_encoding=INT8,
                    output_block_size=block), timeout=60)
                self.assertTrue(resp.HasField("data_int8_blockwise"))
                self.assertEqual(resp.dtype, compute_pb2.DTYPE_FLOAT32)
                self.assertEqual(len(resp.data), x.size)  # one byte per value
                self.assertEqual(resp.data_int8_blockwise.block_size, block)
                got, step = decode(resp.data, resp.data_int8_blockwise.scales, block, resp.shape)
                # The daemon computed on the decoded inputs; so does the reference.
                x_decoded, in_step = decode(data, q.scales, block, x.shape)
                self.assertTrue(np.all(np.abs(x_decoded - x) <= in_step / 2 * (1 + 1e-6)))
                self.assertWithinBound(got, step, self.ref(x_decoded))

    def test_default_block_size(self):
        x = self.f32([2, 768])
        resp = self.stub.Compute(compute_pb2.ComputeRequest(data=x.tobytes(), shape=list(x.shape),
                                                            output_encoding=INT8), timeout=60)
        q = resp.data_int8_blockwise
        self.assertEqual(q.block_size, 64)
        self.assertEqual(len(q.scales), x.size // 64)
        got, step = decode(resp.data, q.scales, 64, resp.shape)
        self.assertWithinBound(got, step, self.ref(x))

    def test_named_inputs_and_outputs(self):
        x, bias = self.f32([2, 5, 8]), self.f32([2, 5, 8], scale=0.1)
        x_data, x_q = quantised(x, 16)
        b_data, b_q = quantised(bias, 3)
        req = compute_pb2.ComputeRequest(
            model_id="mixer", data=x_data, shape=list(x.shape), data_int8_blockwise=x_q, output_encoding=INT8,
            output_block_size=4,
            inputs=[compute_pb2.NamedTensor(name="bias", data=b_data, shape=list(bias.shape), int8_blockwise=b_q)])
        resp = self.stub.Compute(req, timeout=60)
        with torch.no_grad():
            want = self.mixer(torch.from_numpy(decode(x_data, x_q.scales, 16, x.shape)[0]),
                              torch.from_numpy(decode(b_data, b_q.scales, 3, bias.shape)[0]))
        got, step = decode(resp.data, resp.data_int8_blockwise.scales, 4, resp.shape)
        self.assertWithinBound(got, step, want["y"].numpy())
        outputs = {o.name: o for o in resp.outputs}
        self.assertEqual(set(outputs), {"total", "argmax"})
        total = outputs["total"]
        self.assertTrue(total.HasField("int8_blockwise"))
        got, step = decode(total.data, total.int8_blockwise.scales, 4, total.shape)
        self.assertWithinBound(got, step, want["total"].numpy())
        argmax = outputs["argmax"]
        self.assertFalse(argmax.HasField("int8_blockwise"))  # int64 goes plain
        self.assertEqual(argmax.dtype, compute_pb2.DTYPE_INT64)
        self.assertEqual(np.frombuffer(argmax.data, dtype=np.int64).tolist(), want["argmax"].reshape(-1).tolist())

    def test_an_output_with_infinity_goes_plain(self):
        x = np.array([[1.0, np.inf, -2.0]], dtype=np.float32)
        bias = np.zeros_like(x)
        req = compute_pb2.ComputeRequest(
            model_id="mixer", data=x.tobytes(), shape=list(x.shape), output_encoding=INT8,
            inputs=[compute_pb2.NamedTensor(name="bias", data=bias.tobytes(), shape=list(bias.shape))])
        resp = self.stub.Compute(req, timeout=60)
        self.assertFalse(resp.HasField("data_int8_blockwise"))
        self.assertEqual(np.frombuffer(resp.data, dtype=np.float32).tolist(), [2.0, np.inf, -4.0])

    def test_without_asking_the_answer_is_plain(self):
        x = self.f32([2, 768])
        data, q = quantised(x, 64)
        resp = self.stub.Compute(compute_pb2.ComputeRequest(data=data, shape=list(x.shape), data_int8_blockwise=q),
                                 timeout=60)
        self.assertFalse(resp.HasField("data_int8_blockwise"))
        self.assertEqual(len(resp.data), x.size * 4)
        got = np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
        self.assertLessEqual(float(np.max(np.abs(got - self.ref(decode(data, q.scales, 64, x.shape)[0])))),
                             COMPUTE_TOLERANCE)

    def test_a_legacy_client_is_unaffected(self):
        client = LegacyClient(self.daemon.address)
        self.addCleanup(client.close)
        x = self.f32([2, 768])
        got, resp = client.compute(x)
        self.assertEqual(len(resp.data), x.size * 4)
        self.assertLessEqual(float(np.max(np.abs(got - self.ref(x)))), COMPUTE_TOLERANCE)
        # Nothing beyond the legacy fields came back: re-read as the current message.
        current = compute_pb2.ComputeResponse.FromString(resp.SerializeToString())
        self.assertFalse(current.HasField("data_int8_blockwise"))

    def assertInvalid(self, req, message_has):
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.Compute(req, timeout=30)
        self.assertEqual(caught.exception.code(), INVALID_ARGUMENT, caught.exception.details())
        self.assertIn(message_has, caught.exception.details())
        self.assertDaemonAlive()

    def test_malformed_encodings_are_invalid_argument(self):
        x = self.f32([2, 768])
        data, q = quantised(x, 64)

        def req(data=data, scales=None, block=64, **fields):
            q2 = compute_pb2.BlockwiseInt8(block_size=block, scales=q.scales if scales is None else scales)
            return compute_pb2.ComputeRequest(data=data, shape=list(x.shape), data_int8_blockwise=q2, **fields)

        self.assertInvalid(req(scales=list(q.scales)[:-1]), "scales")
        self.assertInvalid(req(scales=list(q.scales) + [1.0]), "scales")
        self.assertInvalid(req(data=data[:-1]), "bytes")
        self.assertInvalid(req(data=data + b"\0"), "bytes")
        self.assertInvalid(req(block=0), "block_size")
        self.assertInvalid(req(scales=[-1.0] + list(q.scales)[1:]), "scale")
        self.assertInvalid(req(dtype=compute_pb2.DTYPE_FLOAT16), "float32")
        self.assertInvalid(req(output_encoding=INT8, output_dtype=compute_pb2.DTYPE_BFLOAT16), "output_dtype")
        bad_named = compute_pb2.ComputeRequest(
            model_id="mixer", data=data, shape=list(x.shape), data_int8_blockwise=q,
            inputs=[compute_pb2.NamedTensor(name="bias", data=data, shape=list(x.shape),
                                            int8_blockwise=compute_pb2.BlockwiseInt8(block_size=64, scales=[1.0]))])
        self.assertInvalid(bad_named, "input 'bias'")
        # The daemon still answers well-formed requests.
        resp = self.stub.Compute(req(), timeout=60)
        self.assertEqual(len(resp.data), x.size * 4)


class ClientPackageInt8Test(DaemonTestCase):
    """splitlearnd_client.Client(...).compute(..., int8_block=n): the same bound."""

    @classmethod
    def make_models(cls, workdir):
        torch.jit.script(Mixer()).save(os.path.join(workdir, "mixer.pt"))
        replica_models.write(replica_models.RunningSum, os.path.join(workdir, "running-sum.pt"))
        return [model_entry("mixer", "mixer.pt", default=True), model_entry("running-sum", "running-sum.pt")]

    def assertNear(self, got, want, block):
        """Per block of `got`: within half its step (at most max|got| / 254, give or
        take the rounding up of the scale) plus the float32 tolerance."""
        flat_got, flat_want = got.reshape(-1).double(), want.reshape(-1).double()
        for start in range(0, flat_got.numel(), block):
            g, w = flat_got[start:start + block], flat_want[start:start + block]
            half_step = float(g.abs().max()) / 254 * 1.01 + 1e-6
            self.assertLessEqual(float((g - w).abs().max()), half_step + COMPUTE_TOLERANCE)

    def test_cache_with_int8_block(self):
        sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "client", "python"))
        from splitlearnd_client import Client, tensors

        def roundtrip(t, block):
            codes, shape, scales = tensors.encode_int8_blockwise(t, block)
            return tensors.decode_int8_blockwise(codes, shape, scales, block)

        client = Client(self.daemon.address, timeout=60)
        self.addCleanup(client.close)
        module = torch.jit.script(replica_models.RunningSum())
        gen = torch.Generator().manual_seed(9)
        block = 4
        x1, x2 = torch.randn(1, 3, 8, generator=gen), torch.randn(1, 1, 8, generator=gen)
        r1 = client.compute(x1, model_id="running-sum", use_cache=True, int8_block=block)
        self.assertEqual(len(r1.present_key_values), 1)
        key, value = r1.present_key_values[0]
        self.assertEqual(key.dtype, torch.float32)
        with torch.no_grad():
            want_out, want_presents = module(roundtrip(x1, block), None, True)
        self.assertNear(r1.output, want_out, block)
        self.assertNear(key, want_presents[0][0], block)
        self.assertNear(value, want_presents[0][1], block)
        r2 = client.compute(x2, model_id="running-sum", past_key_values=[(key, value)], use_cache=True,
                            int8_block=block)
        with torch.no_grad():
            past = [(roundtrip(key, block), roundtrip(value, block))]
            want_out, _ = module(roundtrip(x2, block), past, True)
        self.assertNear(r2.output, want_out, block)

    def test_compute_with_int8_block(self):
        sys.path.insert(0, os.path.join(launcher.SOURCE_DIR, "client", "python"))
        from splitlearnd_client import Client, tensors

        client = Client(self.daemon.address, timeout=60)
        self.addCleanup(client.close)
        gen = torch.Generator().manual_seed(5)
        x, bias = torch.randn(3, 50, generator=gen) * 3, torch.randn(3, 50, generator=gen)
        block = 16
        result = client.compute(x, inputs={"bias": bias}, int8_block=block)
        # What the daemon ran on: the inputs as the encoder quantised them.
        xq = tensors.decode_int8_blockwise(*self._enc(tensors, x, block), block)
        bq = tensors.decode_int8_blockwise(*self._enc(tensors, bias, block), block)
        self.assertLessEqual(float((xq - x).abs().max()), float(x.abs().max()) / 254 * (1 + 1e-6))
        with torch.no_grad():
            want = Mixer()(xq, bq)
        self.assertEqual(result.output.dtype, torch.float32)
        self.assertNear(result.output, want["y"], block)
        self.assertNear(result.outputs["total"], want["total"], block)
        self.assertTrue(torch.equal(result.outputs["argmax"], want["argmax"]))
        plain = client.compute(x, inputs={"bias": bias})
        with torch.no_grad():
            self.assertLessEqual(float((plain.output - Mixer()(x, bias)["y"]).abs().max()), COMPUTE_TOLERANCE)

    @staticmethod
    def _enc(tensors, t, block):
        codes, shape, scales = tensors.encode_int8_blockwise(t, block)
        return codes, shape, scales


class TrainingInt8Test(DaemonTestCase):
    """A training forward on int8 inputs, then ComputeBackward with an int8 grad_output
    asking for an int8 grad_input: within grad_input's own bound of autograd's gradient
    for the decoded tensors (learning rate 0, so the weights stay PyTorch's)."""

    @classmethod
    def make_models(cls, workdir):
        cls.path = torch_models.make(torch_models.LinearGelu, os.path.join(workdir, "linear.pt"), seed=41)
        return [model_entry("linear", "linear.pt", [1, 768], default=True,
                            training={"enabled": True, "optimizer": "sgd", "learning_rate": 0.0})]

    def test_backward_int8_both_ways(self):
        channel = grpc.insecure_channel(self.daemon.address, options=LEGACY_CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        stub = compute_pb2_grpc.ComputeServiceStub(channel)
        rng = np.random.default_rng(3)
        x = rng.standard_normal((2, 768)).astype(np.float32)
        g = (rng.standard_normal((2, 768)) * 0.01).astype(np.float32)
        block = 32
        x_data, x_q = quantised(x, block)
        fwd = stub.Compute(compute_pb2.ComputeRequest(data=x_data, shape=list(x.shape), data_int8_blockwise=x_q,
                                                      training_mode=True, forward_id="f-int8"), timeout=60)
        self.assertEqual(fwd.forward_id, "f-int8")
        g_data, g_q = quantised(g, block)
        resp = stub.ComputeBackward(compute_pb2.BackwardRequest(
            grad_output_data=g_data, grad_output_shape=list(g.shape), forward_id="f-int8",
            grad_output_int8_blockwise=g_q, output_encoding=INT8, output_block_size=block), timeout=60)
        self.assertTrue(resp.HasField("grad_input_int8_blockwise"))
        self.assertEqual(len(resp.grad_input_data), x.size)
        got, step = decode(resp.grad_input_data, resp.grad_input_int8_blockwise.scales, block, resp.grad_input_shape)

        module = torch.jit.load(self.path, map_location="cpu")
        xq = torch.from_numpy(decode(x_data, x_q.scales, block, x.shape)[0]).requires_grad_(True)
        module(xq).backward(torch.from_numpy(decode(g_data, g_q.scales, block, g.shape)[0]))
        want = xq.grad.numpy()
        bound = step / 2 + np.abs(got.astype(np.float64)) * 2.0 ** -24 + COMPUTE_TOLERANCE
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        self.assertTrue(np.all(err <= bound), f"worst error {err.max()}")
