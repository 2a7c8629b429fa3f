"""Faults against the real daemon: broken model files, a model that throws, a model
that runs past the caller's deadline, a client that goes away mid-request, SIGKILL in
the middle of a reload, and the config file deleted while it is watched. After each,
the daemon must still serve (or, after SIGKILL, a restart must)."""
import os
import shutil
import signal
import struct
import tempfile
import time
import unittest

import secfixture as fx
from secfixture import grpc, mpb


class FaultTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-faults-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.files = fx.make_models(self.workdir)
        self.daemon = None

    def start(self, models, **server):
        self.daemon = fx.Daemon(self.workdir, models, server=server)
        self.addCleanup(self.daemon.kill)
        self.daemon.start()
        channel, self.stub = self.daemon.compute_stub()
        self.addCleanup(channel.close)

    def tearDown(self):
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.alive():
            rc = self.daemon.stop()
            self.assertEqual(rc, 0, f"exit status after SIGTERM; log:\n{self.daemon.log_text()}")

    def assertServes(self, model_id="double", stub=None):
        self.assertTrue(self.daemon.alive(), f"splitlearnd died; log:\n{self.daemon.log_text()}")
        reply = (stub or self.stub).Compute(fx.float_request([2, 4], 1.5, model_id=model_id), timeout=60)
        self.assertEqual(list(reply.shape), [2, 4])
        self.assertEqual(struct.unpack("<8f", reply.data), (3.0,) * 8)

    def busy_request(self, rounds):
        return fx.float_request([1, 4], float(rounds), model_id="busy")

    def rounds_for(self, seconds):
        """How many rounds make the busy model run about `seconds` on this machine. Timed on
        the second call: libtorch 2.x's profiling executor runs the first ones slower."""
        self.stub.Compute(self.busy_request(2000), timeout=120)
        t0 = time.monotonic()
        self.stub.Compute(self.busy_request(2000), timeout=120)
        per_round = max((time.monotonic() - t0) / 2000, 1e-7)
        return min(int(seconds / per_round), 10_000_000)


class BrokenModels(FaultTest):
    def test_truncated_and_corrupt_files_fail_with_a_reason(self):
        with open(os.path.join(self.workdir, self.files["double"]), "rb") as f:
            good = f.read()
        with open(os.path.join(self.workdir, "truncated.pt"), "wb") as f:
            f.write(good[: len(good) // 2])
        with open(os.path.join(self.workdir, "garbage.pt"), "wb") as f:
            f.write(b"PK\x03\x04" + os.urandom(4096))
        with open(os.path.join(self.workdir, "empty.pt"), "wb"):
            pass
        self.start([fx.model_entry("double", self.files["double"], default=True),
                    fx.model_entry("truncated", "truncated.pt"),
                    fx.model_entry("garbage", "garbage.pt"),
                    fx.model_entry("empty", "empty.pt")])
        for model_id in ("truncated", "garbage", "empty"):
            info = self.daemon.model(model_id)
            self.assertEqual(info.state, mpb.FAILED, model_id)
            self.assertTrue(info.last_error, f"{model_id}: FAILED without a reason")
            with self.assertRaises(grpc.RpcError) as ctx:
                self.stub.Compute(fx.float_request([1, 4], model_id=model_id), timeout=30)
            self.assertIn(ctx.exception.code(), (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                                 grpc.StatusCode.FAILED_PRECONDITION))
        self.assertServes()


class ModelFaults(FaultTest):
    def setUp(self):
        super().setUp()
        self.start([fx.model_entry("double", self.files["double"], default=True),
                    fx.model_entry("throws", self.files["throws"]),
                    fx.model_entry("busy", self.files["busy"])])

    def test_model_that_throws(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.stub.Compute(fx.float_request([3, 4], model_id="throws"), timeout=30)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertIn("boom", ctx.exception.details())
        reply = self.stub.Compute(fx.float_request([2, 4], 1.0, model_id="throws"), timeout=30)
        self.assertEqual(struct.unpack("<8f", reply.data), (2.0,) * 8)
        self.assertServes()

    def test_model_past_the_deadline(self):
        rounds = self.rounds_for(3.0)
        slow = self.stub.Compute.future(self.busy_request(rounds), timeout=0.5)
        time.sleep(0.1)  # let the slow job reach the worker first
        # Queued behind it on the same device: must be served once the forward returns.
        other = self.stub.Compute.future(fx.float_request([2, 4], 1.5), timeout=300)
        with self.assertRaises(grpc.RpcError) as ctx:
            slow.result()
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        reply = other.result()
        self.assertEqual(struct.unpack("<8f", reply.data), (3.0,) * 8)
        self.assertServes()

    def test_client_disconnects_mid_request(self):
        rounds = self.rounds_for(2.0)
        channel, stub = self.daemon.compute_stub()
        pending = [stub.Compute.future(self.busy_request(rounds), timeout=300) for _ in range(3)]
        pending += [stub.Compute.future(fx.float_request([2, 4], 1.0), timeout=300) for _ in range(5)]
        time.sleep(0.3)
        channel.close()  # the calls in flight are cancelled; the daemon sees the peer leave
        for f in pending:
            with self.assertRaises(grpc.RpcError) as ctx:
                f.result()
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.CANCELLED)
        self.assertServes()
        reply = self.stub.Compute(self.busy_request(10), timeout=120)
        self.assertEqual(list(reply.shape), [1, 4])


class Restarts(FaultTest):
    def test_sigkill_during_reload_then_restart(self):
        self.start([fx.model_entry("double", self.files["double"], default=True)])
        # The new config adds a model whose warmup takes a while, so that the kill lands
        # while the reload is still running.
        config = dict(self.daemon.config)
        config["models"] = config["models"] + [
            fx.model_entry("double2", self.files["double"], warmup_shape=(256, 4096))]
        config["models"][-1]["warmup"]["runs"] = 1000
        offset = len(self.daemon.log_text())
        self.daemon.write_config(config)
        self.daemon.signal(signal.SIGHUP)
        self.assertTrue(self.daemon.wait_for_log(r"model 'double2' LOADING", after=offset), self.daemon.log_text())
        mid_reload = "reload done" not in self.daemon.log_text()[offset:]
        self.daemon.signal(signal.SIGKILL)
        self.daemon.proc.wait()
        self.assertEqual(self.daemon.proc.returncode, -signal.SIGKILL)
        print(f"\nSIGKILL landed {'during' if mid_reload else 'after'} the reload")
        # The config file was replaced atomically, so the restart reads a whole file:
        # the last one written, which is valid.
        self.daemon.start(timeout_s=300)
        for model_id in ("double", "double2"):
            self.assertEqual(self.daemon.model(model_id).state, mpb.READY, model_id)
        channel, stub = self.daemon.compute_stub()
        self.addCleanup(channel.close)
        self.assertServes("double", stub)
        self.assertServes("double2", stub)

    def test_config_deleted_while_watched(self):
        self.start([fx.model_entry("double", self.files["double"], default=True)], watch_config=True)
        self.assertTrue(self.daemon.wait_for_log(r"watching .* for changes"), self.daemon.log_text())
        kept = dict(self.daemon.config)
        offset = len(self.daemon.log_text())
        os.unlink(self.daemon.config_path)
        # The deletion is logged once the watcher's quiet period has passed, and nothing is unloaded.
        self.assertTrue(self.daemon.wait_for_log(r"config file .* was deleted; still serving", after=offset),
                        self.daemon.log_text())
        self.assertServes()
        # A reload now has no file to read: refused, and the old config keeps serving.
        offset = len(self.daemon.log_text())
        self.daemon.signal(signal.SIGHUP)
        self.assertTrue(self.daemon.wait_for_log(r"reload refused", after=offset), self.daemon.log_text())
        self.assertServes()
        # Writing the file again is a change like any other: it is applied.
        kept["models"] = kept["models"] + [fx.model_entry("double2", self.files["double"])]
        offset = len(self.daemon.log_text())
        self.daemon.write_config(kept)
        self.assertTrue(self.daemon.wait_for_log(r"reload done", after=offset), self.daemon.log_text())
        self.assertServes("double2")


if __name__ == "__main__":
    unittest.main()
