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
from splitlearnd_launcher import wait_until


class FaultTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-faults-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.files = fx.make_models(self.workdir)
        self.daemon = None

    def start(self, models, failed_ok=0, **server):
        self.daemon = fx.Daemon(self.workdir, models, server=server)
        self.daemon.failed_ok = failed_ok
        self.addCleanup(self.daemon.close)
        self.daemon.start()
        channel, self.stub = self.daemon.compute_stub()
        self.addCleanup(channel.close)

    def tearDown(self):
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.alive():
            rc = self.daemon.stop()
            self.assertEqual(rc, 0, f"exit status after SIGTERM; log:\n{self.daemon.run_log()}")

    def assertServes(self, model_id="double", stub=None):
        self.assertTrue(self.daemon.alive(), f"splitlearnd died; log:\n{self.daemon.run_log()}")
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
                    fx.model_entry("empty", "empty.pt")], failed_ok=3)
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
        with self.assertRaises(grpc.RpcError) as ctx:
            slow.result()
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        # The caller is gone and the forward runs on (about 3 s): a request queued behind
        # it on the same device must be served once it returns.
        other = self.stub.Compute.future(fx.float_request([2, 4], 1.5), timeout=300)
        reply = other.result()
        self.assertEqual(struct.unpack("<8f", reply.data), (3.0,) * 8)
        self.assertServes()

    def test_client_disconnects_mid_request(self):
        rounds = self.rounds_for(2.0)
        channel, stub = self.daemon.compute_stub()
        pending = [stub.Compute.future(self.busy_request(rounds), timeout=300) for _ in range(3)]
        pending += [stub.Compute.future(fx.float_request([2, 4], 1.0), timeout=300) for _ in range(5)]
        # Most of them wait in the device's queue behind the first busy one when the
        # client goes away.
        wait_until(lambda: self.daemon.queue_depth() >= 5, 60, "the calls to reach the daemon's queue")
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
        before = self.daemon.status().last_reload
        self.daemon.write_config(config)
        self.daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: self.known("double2"), 60, "the reload to start loading double2")
        mid_reload = self.daemon.status().last_reload == before
        self.daemon.send_signal(signal.SIGKILL)
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
        wait_until(lambda: self.daemon.status().watch_config, 60, "the daemon to watch its config file")
        kept = dict(self.daemon.config)
        offset = self.daemon.log_size()
        os.unlink(self.daemon.config_path)
        # The deletion is logged once the watcher's quiet period has passed, and nothing is unloaded.
        self.daemon.wait_for_log(r"config file .* was deleted; still serving", after=offset)
        self.assertServes()
        # A reload now has no file to read: refused, and the old config keeps serving.
        offset = self.daemon.log_size()
        result = self.daemon.reload()
        self.assertFalse(result.ok, result.message)
        self.assertIn("reload refused", self.daemon.log_since(offset))
        self.assertServes()
        # Writing the file again is a change like any other: it is applied.
        kept["models"] = kept["models"] + [fx.model_entry("double2", self.files["double"])]
        before = self.daemon.status().last_reload
        self.daemon.write_config(kept)
        result = self.daemon.wait_for_reload(before, "file change")
        self.assertTrue(result.ok, result.message)
        self.assertServes("double2")

    def known(self, model_id):
        """The management service's view of a model, or None before it exists."""
        try:
            return self.daemon.model(model_id)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None


if __name__ == "__main__":
    unittest.main()
