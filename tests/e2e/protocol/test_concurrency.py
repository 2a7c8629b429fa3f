"""32 clients at once, each on its own channel, against one CPU model: every answer
is the right one for its own input, and the device ran exactly what was sent."""
import os
import threading
import unittest

import grpc
import numpy as np

import torch_models
from legacy_wire import LEGACY_CHANNEL_OPTIONS
from splitlearnd_launcher import DaemonTestCase, model_entry

import compute_pb2  # noqa: E402  (generated; the launcher put its folder on sys.path)
import compute_pb2_grpc  # noqa: E402

CLIENTS = 32
REQUESTS_PER_CLIENT = 20
HIDDEN = torch_models.HIDDEN


class ConcurrencyTest(DaemonTestCase):
    @classmethod
    def make_models(cls, workdir):
        cls.path = torch_models.make(torch_models.LinearGelu, os.path.join(workdir, "linear.pt"), seed=31)
        # Batching on, so that concurrent requests are merged and split again.
        return [model_entry("linear-gelu", "linear.pt", [1, HIDDEN], default=True,
                            batching={"max_batch_size": 8, "max_delay_us": 2000})]

    def test_concurrent_clients_get_their_own_answers(self):
        barrier = threading.Barrier(CLIENTS)
        results = [None] * CLIENTS
        errors = []

        def client(index):
            rng = np.random.default_rng(1000 + index)
            done = []
            channel = grpc.insecure_channel(self.daemon.address, options=LEGACY_CHANNEL_OPTIONS)
            try:
                stub = compute_pb2_grpc.ComputeServiceStub(channel)
                barrier.wait(timeout=60)
                for i in range(REQUESTS_PER_CLIENT):
                    rows = int(rng.integers(1, 5))
                    x = rng.standard_normal([rows, HIDDEN], dtype=np.float32)
                    request_id = index * 1000 + i
                    # Every other request names the model; the rest rely on the default.
                    req = compute_pb2.ComputeRequest(data=x.tobytes(), shape=list(x.shape), request_id=request_id,
                                                     model_id="linear-gelu" if i % 2 else "")
                    resp = stub.Compute(req, timeout=120)
                    done.append((request_id, x, resp))
            except Exception as e:  # reported below, with the client it happened in
                errors.append(f"client {index}: {type(e).__name__}: {e}")
            finally:
                channel.close()
            results[index] = done

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        self.assertFalse(any(t.is_alive() for t in threads), "client threads still running")
        self.assertEqual(errors, [])

        ref = torch_models.Reference(self.path)
        sent = 0
        seen_inputs = set()
        for done in results:
            self.assertEqual(len(done), REQUESTS_PER_CLIENT)
            for request_id, x, resp in done:
                sent += 1
                seen_inputs.add(x.tobytes())
                self.assertEqual(resp.request_id, request_id)
                got = np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
                self.assertEqual(got.shape, x.shape)
                diff = float(np.max(np.abs(got - ref(x))))
                self.assertLessEqual(diff, 1e-5, f"request {request_id}: max abs difference {diff}")
        self.assertEqual(sent, CLIENTS * REQUESTS_PER_CLIENT)
        self.assertEqual(len(seen_inputs), sent, "inputs were not distinct")

        channel = grpc.insecure_channel(self.daemon.address)
        try:
            info = compute_pb2_grpc.ComputeServiceStub(channel).GetServiceInfo(compute_pb2.ServiceInfoRequest(),
                                                                                timeout=30)
        finally:
            channel.close()
        self.assertEqual(int(info.custom_info["device.cpu.requests_run"]), sent)
        self.assertEqual(info.total_requests, sent)
        self.assertEqual(int(info.custom_info["failed_requests"]), 0)
        batches = int(info.custom_info["device.cpu.batches_run"])
        self.assertGreaterEqual(batches, 1)
        self.assertLessEqual(batches, sent)
        self.assertDaemonAlive()


if __name__ == "__main__":
    unittest.main()
