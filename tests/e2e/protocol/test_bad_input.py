"""Malformed requests get the status docs/protocol.md's table names, with
a message, and neither crash the daemon nor disturb the next request."""
import os
import unittest

import grpc
import numpy as np

import torch_models
from legacy_wire import LEGACY_CHANNEL_OPTIONS
from splitlearnd_launcher import DaemonTestCase, model_entry

import compute_pb2  # noqa: E402  (generated; the launcher put its folder on sys.path)
import compute_pb2_grpc  # noqa: E402

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INTERNAL = grpc.StatusCode.INTERNAL


def f32(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


class BadInputTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        cls.linear_path = torch_models.make(torch_models.LinearGelu, os.path.join(workdir, "linear.pt"), seed=21)
        torch_models.make(torch_models.ThrowsOnThreeRows, os.path.join(workdir, "boom.pt"))
        torch_models.make(torch_models.ThrowsOnMarker, os.path.join(workdir, "marker.pt"))
        torch_models.make(torch_models.ZeroDivision, os.path.join(workdir, "zerodiv.pt"))
        zerodiv = model_entry("zerodiv", "zerodiv.pt", [1, 8])
        del zerodiv["warmup"]  # it fails on every input, so a warmup would fail its load
        return [
            model_entry("linear-gelu", "linear.pt", [1, 768], default=True, batching={"max_batch_size": 4}),
            model_entry("boom", "boom.pt", [1, 8]),
            # Waits for a second request to batch with (up to 5 s, a fixed wait): two sent
            # together merge.
            model_entry("marker", "marker.pt", [1, 8],
                        batching={"max_batch_size": 2, "max_delay_us": 5_000_000, "wait": "fixed"}),
            zerodiv,
        ]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ref = torch_models.Reference(cls.linear_path)
        cls.channel = grpc.insecure_channel(cls.daemon.address, options=LEGACY_CHANNEL_OPTIONS)
        cls.stub = compute_pb2_grpc.ComputeServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        super().tearDownClass()

    # ---------------------------------------------------------------- helpers

    def request(self, data=b"", shape=(), **fields):
        return compute_pb2.ComputeRequest(data=data, shape=list(shape), **fields)

    def assertStatus(self, req, code, message_has=None):
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.Compute(req, timeout=30)
        err = caught.exception
        self.assertEqual(err.code(), code, f"details: {err.details()!r}")
        self.assertTrue(err.details(), "error status carries no message")
        if message_has:
            self.assertIn(message_has, err.details())
        self.assertValidRequestStillWorks()
        return err

    def assertValidRequestStillWorks(self):
        self.assertDaemonAlive()
        x = f32([2, 768], seed=99)
        resp = self.stub.Compute(self.request(x.tobytes(), x.shape, request_id=5), timeout=30)
        got = np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
        self.assertEqual(resp.request_id, 5)
        self.assertEqual(got.shape, (2, 768))
        self.assertLessEqual(float(np.max(np.abs(got - self.ref(x)))), 1e-5)

    # ---------------------------------------------------------------- byte counts

    def test_fewer_bytes_than_shape_needs(self):
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes()[:-4], x.shape), INVALID_ARGUMENT)

    def test_more_bytes_than_shape_needs(self):
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes() + b"\0\0\0\0", x.shape), INVALID_ARGUMENT)

    def test_data_without_shape(self):
        self.assertStatus(self.request(f32([768]).tobytes(), ()), INVALID_ARGUMENT)

    def test_shape_without_data(self):
        self.assertStatus(self.request(b"", [2, 768]), INVALID_ARGUMENT)

    def test_empty_body(self):
        self.assertStatus(compute_pb2.ComputeRequest(), INVALID_ARGUMENT)

    def test_empty_body_with_model_id(self):
        self.assertStatus(compute_pb2.ComputeRequest(model_id="linear-gelu"), INVALID_ARGUMENT)

    # ---------------------------------------------------------------- dimensions

    def test_negative_dimension(self):
        self.assertStatus(self.request(f32([768]).tobytes(), [-1, 768]), INVALID_ARGUMENT)

    def test_negative_dimensions_whose_product_matches(self):
        # (-2) * (-768) elements of 4 bytes would be exactly the bytes sent.
        self.assertStatus(self.request(f32([2, 768]).tobytes(), [-2, -768]), INVALID_ARGUMENT)

    def test_zero_dimension(self):
        # A dimension of 0 is a tensor of no elements, as PyTorch has it: no bytes.
        self.assertStatus(self.request(b"\0\0\0\0", [0, 768]), INVALID_ARGUMENT)
        self.assertStatus(self.request(b"\0\0\0\0", [4, 0]), INVALID_ARGUMENT)

    def test_huge_dimensions(self):
        big = 2 ** 31 - 1
        self.assertStatus(self.request(f32([4]).tobytes(), [big, big]), INVALID_ARGUMENT)
        self.assertStatus(self.request(f32([4]).tobytes(), [big, big, big, big, big, big, big, big]), INVALID_ARGUMENT)
        self.assertStatus(self.request(f32([4]).tobytes(), [big]), INVALID_ARGUMENT)

    def test_dimensions_whose_product_overflows_to_a_small_number(self):
        # 65536 * 65536 * 65536 * 65536 wraps to 0 in 64 bits; 2**32 * 2**32 * ... likewise.
        self.assertStatus(self.request(b"", [65536, 65536, 65536, 65536]), INVALID_ARGUMENT)
        self.assertStatus(self.request(f32([1]).tobytes(), [65536, 65536, 65536, 65536, 1]), INVALID_ARGUMENT)

    def test_nine_dimensions(self):
        self.assertStatus(self.request(f32([768]).tobytes(), [1] * 8 + [768]), INVALID_ARGUMENT)

    def test_many_dimensions(self):
        self.assertStatus(self.request(f32([768]).tobytes(), [1] * 1000 + [768]), INVALID_ARGUMENT)

    def test_eight_dimensions_are_accepted(self):
        # The boundary: eight dimensions are the most allowed, and they work.
        x = f32([1] * 7 + [768], seed=3)
        resp = self.stub.Compute(self.request(x.tobytes(), x.shape, model_id="linear-gelu"), timeout=30)
        got = np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
        self.assertLessEqual(float(np.max(np.abs(got - self.ref(x)))), 1e-5)

    def test_trailing_dimension_the_model_rejects(self):
        x = f32([2, 100])
        self.assertStatus(self.request(x.tobytes(), x.shape, model_id="linear-gelu"), INVALID_ARGUMENT)

    # ---------------------------------------------------------------- dtypes

    def test_unknown_dtype_enum_value(self):
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, dtype=99), INVALID_ARGUMENT)
        self.assertStatus(self.request(x.tobytes(), x.shape, dtype=-1), INVALID_ARGUMENT)

    def test_unknown_output_dtype_enum_value(self):
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, output_dtype=42), INVALID_ARGUMENT)

    def test_dtype_whose_byte_count_does_not_match(self):
        # float32 bytes of [2, 768] declared as float16: twice the bytes needed.
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, dtype=compute_pb2.DTYPE_FLOAT16), INVALID_ARGUMENT)

    def test_dtype_the_model_cannot_take(self):
        # int64 is a valid wire dtype, but this float model cannot multiply it. docs/protocol.md's
        # table lists "bad dtype" under INVALID_ARGUMENT and "anything else the model
        # throws" under INTERNAL; either reading is accepted here, a crash or OK is not.
        ids = np.arange(2 * 768, dtype=np.int64).reshape(2, 768)
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.Compute(self.request(ids.tobytes(), ids.shape, dtype=compute_pb2.DTYPE_INT64), timeout=30)
        self.assertIn(caught.exception.code(), (INVALID_ARGUMENT, INTERNAL), caught.exception.details())
        self.assertIn("dtype", caught.exception.details())
        self.assertValidRequestStillWorks()

    # ---------------------------------------------------------------- models

    def test_unknown_model_id(self):
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, model_id="no-such-model"), NOT_FOUND)

    def test_model_id_longer_than_the_limit(self):
        # Ids are capped at 256 bytes (daemon/codec.h); a longer one is malformed input.
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, model_id="m" * 300), INVALID_ARGUMENT)

    def test_very_long_model_id(self):
        # 100 kB: the status (and its message) must still reach the client intact.
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, model_id="m" * 100000), INVALID_ARGUMENT)

    def test_forward_id_longer_than_the_limit(self):
        x = f32([2, 768])
        self.assertStatus(self.request(x.tobytes(), x.shape, forward_id="f" * 300), INVALID_ARGUMENT)

    def test_model_that_throws(self):
        x = f32([3, 8])
        err = self.assertStatus(self.request(x.tobytes(), x.shape, model_id="boom"), INTERNAL)
        self.assertIn("boom", err.details(), "INTERNAL status does not carry the model's message")
        # The same model still serves inputs it accepts.
        y = f32([2, 8], seed=4)
        resp = self.stub.Compute(self.request(y.tobytes(), y.shape, model_id="boom"), timeout=30)
        got = np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
        np.testing.assert_allclose(got, y * 2.0 + 1.0, rtol=0, atol=1e-6)

    def test_model_that_throws_in_a_merged_batch_fails_only_the_bad_request(self):
        # Two one-row requests merge into one forward, which the model refuses because of
        # one of them; the other client's request must still get its own answer.
        def device_counters():
            info = self.stub.GetServiceInfo(compute_pb2.ServiceInfoRequest(), timeout=30).custom_info
            return int(info["device.cpu.requests_run"]), int(info["device.cpu.batches_run"])

        good = f32([1, 8], seed=5)
        bad = f32([1, 8], seed=6)
        bad[0, 3] = 13.0
        requests_before, batches_before = device_counters()
        calls = [self.stub.Compute.future(self.request(x.tobytes(), x.shape, model_id="marker"), timeout=30)
                 for x in (good, bad)]
        resp = calls[0].result()
        got = np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
        np.testing.assert_allclose(got, good * 2.0 + 1.0, rtol=0, atol=1e-6)
        with self.assertRaises(grpc.RpcError) as caught:
            calls[1].result()
        self.assertEqual(caught.exception.code(), INTERNAL, caught.exception.details())
        self.assertIn("marker", caught.exception.details())
        requests_after, batches_after = device_counters()
        # Both requests went to the model in one batch: a merge was tried.
        self.assertEqual((requests_after - requests_before, batches_after - batches_before), (2, 1))

    def test_model_failure_is_internal_even_when_its_code_mentions_shapes(self):
        # The traceback quotes `x.reshape(x.shape)`; the cause is a division by zero.
        x = f32([2, 8])
        err = self.assertStatus(self.request(x.tobytes(), x.shape, model_id="zerodiv"), INTERNAL)
        self.assertIn("ZeroDivisionError", err.details())

    def test_daemon_survived_and_counted_failures(self):
        before = self.stub.GetServiceInfo(compute_pb2.ServiceInfoRequest(), timeout=30)
        self.assertStatus(self.request(b"\0", [1]), INVALID_ARGUMENT)
        after = self.stub.GetServiceInfo(compute_pb2.ServiceInfoRequest(), timeout=30)
        # One failed request and one good one (assertStatus sends it) since `before`.
        self.assertEqual(int(after.custom_info["failed_requests"]) - int(before.custom_info["failed_requests"]), 1)
        self.assertEqual(after.total_requests - before.total_requests, 2)
        health = self.stub.HealthCheck(compute_pb2.HealthRequest(), timeout=30)
        self.assertEqual(health.status, "ok")
        self.assertDaemonAlive()


if __name__ == "__main__":
    unittest.main()
