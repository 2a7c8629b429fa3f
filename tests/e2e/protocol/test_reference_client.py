"""The reference project's Python client, as deployed, against splitlearnd.

ReferenceClient below is written for this test from that client's documented
behaviour (it is not its code): it speaks only the legacy fields, its health check is
`status == "ok"`, and its compressed codec sends zlib.compress of the float32 bytes
with the plain shape beside them and inflates the answer the same way. The daemon
serves a TorchScript model that doubles its input.

  ReferenceClientTest   health check, scalar, empty and (0, 768) tensors, compressed
                        10x10, 100x100 and 10x100x100 calls, gzip message compression
  ZlibBoundsTest        a stream one byte longer or shorter than the shape needs, bytes
                        after the stream, garbage that looks like zlib, and a small
                        stream of a 1 GiB payload: INVALID_ARGUMENT, without allocating
"""
import os
import zlib

import grpc
import numpy as np
import torch

from legacy_wire import LEGACY_CHANNEL_OPTIONS, ComputeRequest, ComputeResponse, HealthRequest, HealthResponse
from splitlearnd_launcher import DaemonTestCase, model_entry

GIB = 1 << 30


class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2.0


class ReferenceClient:
    """The deployed client's behaviour: float32 bytes (optionally zlib-compressed) and
    the tensor's shape, as is; the answer decoded with the same codec."""

    def __init__(self, address, compressed=False, channel_compression=None):
        self.compressed = compressed
        self.channel = grpc.insecure_channel(address, options=LEGACY_CHANNEL_OPTIONS,
                                             compression=channel_compression)
        prefix = "/splitlearn.comm.ComputeService/"
        self._compute = self.channel.unary_unary(prefix + "Compute", request_serializer=ComputeRequest.SerializeToString,
                                                 response_deserializer=ComputeResponse.FromString)
        self._health = self.channel.unary_unary(prefix + "HealthCheck", request_serializer=HealthRequest.SerializeToString,
                                                response_deserializer=HealthResponse.FromString)

    def close(self):
        self.channel.close()

    def health_check(self):
        return self._health(HealthRequest(), timeout=30).status == "ok"

    def encode(self, tensor):
        raw = tensor.detach().cpu().numpy().astype(np.float32).tobytes()
        return zlib.compress(raw) if self.compressed else raw

    def compute_raw(self, data, shape):
        return self._compute(ComputeRequest(data=data, shape=list(shape)), timeout=60)

    def compute(self, tensor):
        resp = self.compute_raw(self.encode(tensor), tensor.shape)
        data = zlib.decompress(resp.data) if self.compressed else resp.data
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()).reshape(tuple(resp.shape))


class ReferenceClientTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        torch.jit.script(Double()).save(os.path.join(workdir, "double.pt"))
        return [model_entry("double", "double.pt", [2, 4], default=True, batching={"max_batch_size": 8})]

    def setUp(self):
        self.plain = ReferenceClient(self.daemon.address)
        self.zlib = ReferenceClient(self.daemon.address, compressed=True)
        self.addCleanup(self.plain.close)
        self.addCleanup(self.zlib.close)

    def test_health_check(self):
        self.assertTrue(self.plain.health_check())

    def test_scalar_empty_and_zero_row_tensors(self):
        for client in (self.plain, self.zlib):
            with self.subTest(compressed=client.compressed):
                out = client.compute(torch.tensor(3.14))
                self.assertEqual(tuple(out.shape), ())
                self.assertAlmostEqual(float(out), 6.28, places=5)
                for shape in [(0,), (0, 768), (3, 0, 5)]:
                    out = client.compute(torch.zeros(shape))
                    self.assertEqual(tuple(out.shape), shape)
                    self.assertEqual(out.numel(), 0)
        out = self.plain.compute(torch.tensor([]))
        self.assertEqual(tuple(out.shape), (0,))
        self.assertDaemonAlive()

    def test_compressed_calls(self):
        gen = torch.Generator().manual_seed(5)
        for shape in [(10, 10), (100, 100), (10, 100, 100)]:
            with self.subTest(shape=shape):
                x = torch.randn(shape, generator=gen)
                out = self.zlib.compute(x)
                self.assertEqual(tuple(out.shape), shape)
                torch.testing.assert_close(out, x * 2.0, rtol=0, atol=0)
        # Compressible data (zeros) shrinks on the wire both ways.
        resp = self.zlib.compute_raw(zlib.compress(bytes(4 * 10000)), (100, 100))
        self.assertLess(len(resp.data), 4 * 10000 // 10)
        self.assertEqual(zlib.decompress(resp.data), bytes(4 * 10000))

    def test_plain_answers_stay_plain(self):
        x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        resp = self.plain.compute_raw(x.numpy().tobytes(), x.shape)
        self.assertEqual(len(resp.data), 48)
        torch.testing.assert_close(self.plain.compute(x), x * 2.0)

    def test_grpc_gzip_message_compression(self):
        client = ReferenceClient(self.daemon.address, channel_compression=grpc.Compression.Gzip)
        try:
            x = torch.randn(64, 768)
            torch.testing.assert_close(client.compute(x), x * 2.0, rtol=0, atol=0)
        finally:
            client.close()


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class ZlibBoundsTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        torch.jit.script(Double()).save(os.path.join(workdir, "double.pt"))
        return [model_entry("double", "double.pt", [2, 4], default=True)]

    def setUp(self):
        self.client = ReferenceClient(self.daemon.address)
        self.addCleanup(self.client.close)

    def assertInvalid(self, data, shape, needle):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.client.compute_raw(data, shape)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, ctx.exception.details())
        self.assertIn(needle, ctx.exception.details())

    def test_a_stream_must_inflate_to_exactly_the_shape(self):
        need = 4 * 100
        self.assertInvalid(zlib.compress(bytes(need + 1)), (100,), "inflates past the 400 bytes")
        self.assertInvalid(zlib.compress(bytes(need - 1)), (100,), "inflates to 399 bytes")
        self.assertInvalid(zlib.compress(bytes(need)) + b"\0", (100,), "bytes follow the end")
        self.assertInvalid(zlib.compress(bytes(need))[:-6], (100,), "data")
        self.assertInvalid(b"\x78\x9c" + os.urandom(40), (100,), "data")
        resp = self.client.compute_raw(zlib.compress(bytes(need)), (100,))
        self.assertEqual(zlib.decompress(resp.data), bytes(need))
        self.assertDaemonAlive()

    def test_a_small_stream_of_a_huge_payload_is_refused_without_allocating_it(self):
        bomb = zlib.compressobj(9)
        chunk = bytes(1 << 24)
        parts = [bomb.compress(chunk) for _ in range(GIB // len(chunk))]
        stream = b"".join(parts) + bomb.flush()
        self.assertLess(len(stream), 2 << 20)  # about 1 MiB on the wire
        before = peak_rss_kib(self.daemon.proc.pid)
        self.assertInvalid(stream, (10, 10), "inflates past the 400 bytes")
        after = peak_rss_kib(self.daemon.proc.pid)
        self.assertLess(after - before, 64 * 1024, f"peak RSS grew from {before} to {after} KiB")
        self.assertDaemonAlive()
