"""The management service and splitlearnctl (the commands an operator uses).

- LoadModel with "..", an absolute path outside model_root, or a symlink leading out
  of it is refused (INVALID_ARGUMENT / PERMISSION_DENIED) and loads nothing.
- Unloading a model while 8 clients hammer it: requests already accepted finish,
  later ones get NOT_FOUND, and the version's memory is released (the daemon logs it
  and status no longer lists it as draining). The fake-model instance count of the
  same path is checked in tests/manager/model_manager_concurrency_test.cc.
"""
import json
import os
import time
import unittest

import grpc

from ops_fixture import Daemon, Hammer, compute, management_pb2, model_entry, wait_until, write_add_model
from splitlearnd_launcher import require


def write_slow_model(path):
    """A model that takes a few milliseconds per request (so requests queue up) and
    answers x unchanged."""
    import torch

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(192, 192) * 0.05)

        def forward(self, x):
            y = self.w
            for _ in range(12):
                y = torch.tanh(y @ self.w)
            return x + y.sum() * 0.0

    torch.jit.script(Slow()).save(path)


class Management(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon([model_entry("base", "base.pt", default=True), model_entry("busy", "busy.pt")], prefix="manage")
        d = cls.d
        try:
            write_add_model(d.path("base.pt"), 1)
            write_add_model(d.path("extra.pt"), 7)
            write_slow_model(d.path("busy.pt"))
            cls.outside = os.path.join(d.dir, "outside")
            os.mkdir(cls.outside)
            write_add_model(os.path.join(cls.outside, "outside.pt"), 666)
            os.symlink(os.path.join(cls.outside, "outside.pt"), d.path("escape.pt"))
            os.symlink(cls.outside, d.path("escape-dir"))
            os.symlink(d.path("extra.pt"), d.path("alias.pt"))  # stays inside: allowed
            d.start()
            cls.manage = d.management_stub()
            cls.compute = d.compute_stub()
        except BaseException:
            d.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.shutdown()
        finally:
            cls.d.close()

    def ids(self):
        r = self.manage.ListModels(management_pb2.ListModelsRequest(), timeout=30)
        return sorted(m.id for m in r.models)

    def load(self, **kw):
        return self.manage.LoadModel(management_pb2.LoadModelRequest(**kw), timeout=120)

    def test_load_refuses_paths_outside_model_root(self):
        before = self.ids()
        cases = [
            ("../outside/outside.pt", grpc.StatusCode.INVALID_ARGUMENT),
            ("escape-dir/../../outside/outside.pt", grpc.StatusCode.INVALID_ARGUMENT),
            (os.path.join(self.outside, "outside.pt"), grpc.StatusCode.PERMISSION_DENIED),
            ("/etc/passwd", grpc.StatusCode.PERMISSION_DENIED),
            (os.path.join(self.d.model_dir, "..", "outside", "outside.pt"), grpc.StatusCode.INVALID_ARGUMENT),
            ("escape.pt", grpc.StatusCode.PERMISSION_DENIED),
            ("escape-dir/outside.pt", grpc.StatusCode.PERMISSION_DENIED),
        ]
        for path, code in cases:
            with self.subTest(path=path):
                with self.assertRaises(grpc.RpcError) as err:
                    self.load(path=path, id="intruder")
                self.assertEqual(err.exception.code(), code, err.exception.details())
                self.assertEqual(self.ids(), before)
        # The same through splitlearnctl.
        for path, word in (("../outside/outside.pt", "INVALID_ARGUMENT"), ("escape.pt", "PERMISSION_DENIED"),
                           (os.path.join(self.outside, "outside.pt"), "PERMISSION_DENIED")):
            r = self.d.ctl("load", "--path", path, "--id", "intruder")
            self.assertEqual(r.returncode, 1)
            self.assertIn(word, r.stderr)
        self.assertEqual(self.ids(), before)
        with self.assertRaises(grpc.RpcError) as err:
            self.manage.GetModel(management_pb2.GetModelRequest(id="intruder"), timeout=30)
        self.assertEqual(err.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertNotIn("'intruder' LOADING", self.d.log())
        self.assertNotIn("outside.pt", "".join(l for l in self.d.log().splitlines(True) if "LOADING" in l))

    def test_load_inside_model_root_by_path_and_by_symlink(self):
        info = self.load(path="extra.pt", id="extra")
        self.assertEqual(info.state, management_pb2.READY)
        self.assertFalse(info.from_config)
        self.assertEqual(compute(self.compute, "extra", [1.0])[1], [8.0])
        info = self.load(path="alias.pt", id="alias")
        self.assertEqual(info.path, os.path.realpath(self.d.path("extra.pt")))
        r = self.d.ctl("load", "--path", self.d.path("extra.pt"), "--id", "extra-abs")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("state:        READY", r.stdout)
        # A runtime model may not take a config model's id.
        with self.assertRaises(grpc.RpcError) as err:
            self.load(path="extra.pt", id="base")
        self.assertEqual(err.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        for m in ("extra", "alias", "extra-abs"):
            self.manage.UnloadModel(management_pb2.UnloadModelRequest(id=m), timeout=30)
        self.assertNotIn("extra", self.ids())

    def test_unload_under_load(self):
        d = self.d
        version = self.manage.GetModel(management_pb2.GetModelRequest(id="busy"), timeout=30).version
        with Hammer(d, ["busy"], clients=8) as hammer:
            hammer.wait_for_requests("busy", 40)
            unload_sent = time.monotonic()
            info = self.manage.UnloadModel(management_pb2.UnloadModelRequest(id="busy"), timeout=30)
            unloaded = time.monotonic()
            self.assertEqual(info.state, management_pb2.UNLOADED)
            wait_until(lambda: sum(1 for r in hammer.snapshot() if r[1] > unloaded) >= 40, 30,
                       "requests after the unload")
        records = hammer.snapshot()
        codes = {r[3] for r in records}
        self.assertLessEqual(codes, {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}, codes)
        finished_after = [r for r in records if r[3] == grpc.StatusCode.OK and r[2] > unload_sent]
        later = [r for r in records if r[1] > unloaded]
        self.assertTrue(later)
        self.assertEqual([r for r in later if r[3] != grpc.StatusCode.NOT_FOUND], [])
        self.assertEqual([r for r in records if r[3] == grpc.StatusCode.NOT_FOUND and r[2] < unload_sent], [])
        released = f"model 'busy' version {version} unloaded: its last request finished and its memory is released"
        wait_until(lambda: released in d.log(), 30, "the release of the unloaded version")
        status = self.manage.GetStatus(management_pb2.GetStatusRequest(), timeout=30)
        self.assertEqual([m.id for m in status.draining_versions], [])
        busy = next(m for m in status.models if m.id == "busy")
        self.assertEqual((busy.state, busy.version, busy.parameter_bytes), (management_pb2.UNLOADED, 0, 0))
        print(f"\nunload under load: {len(records)} requests, "
              f"{sum(1 for r in records if r[3] == grpc.StatusCode.OK)} OK "
              f"({len(finished_after)} of them finished after UnloadModel was sent), "
              f"{sum(1 for r in records if r[3] == grpc.StatusCode.NOT_FOUND)} NOT_FOUND, no other status")
        # The model comes back with `splitlearnctl load ID` (from the config).
        r = d.ctl("load", "busy")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(compute(self.compute, "busy", [3.0])[0], grpc.StatusCode.OK)

    def test_splitlearnctl_commands(self):
        d = self.d
        r = d.ctl("models")
        self.assertEqual(r.returncode, 0, r.stderr)
        header = r.stdout.splitlines()[0].split()
        self.assertEqual(header[:4], ["ID", "STATE", "VERSION", "DEVICE"])
        self.assertIn("base *", r.stdout)  # the default model is starred
        r = d.ctl("--json", "models")
        models = {m["id"]: m for m in json.loads(r.stdout)["models"]}
        self.assertEqual(models["base"]["state"], "READY")
        self.assertEqual(len(models["base"]["sha256"]), 64)

        r = d.ctl("status")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for text in ("config:", "last reload OK", "models:", "devices:", "DEVICE", "cpu"):
            self.assertIn(text, r.stdout)
        status = json.loads(d.ctl("--json", "status").stdout)
        self.assertEqual(status["config_file"], d.config_path)
        self.assertEqual(status["devices"][0]["name"], "cpu")
        self.assertIn("queue_depth", status["devices"][0])

        version = models["base"]["version"]
        r = d.ctl("reload", "base")
        self.assertEqual(r.returncode, 0, r.stderr)
        after = json.loads(d.ctl("--json", "models", "base").stdout)
        self.assertGreater(int(after["version"]), int(version))

        r = d.ctl("log-level", "debug")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("log level debug", r.stdout)
        self.assertEqual(json.loads(d.ctl("--json", "status").stdout)["log_level"], "debug")
        self.assertEqual(d.ctl("log-level", "loud").returncode, 1)
        d.ctl("log-level", "info")

        r = d.ctl("unload", "nope")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)
        r = subprocess_ctl_unreachable(d)
        self.assertEqual(r.returncode, 1)
        self.assertIn("is splitlearnd running", r.stderr)


def daemon_health(port, service=""):
    """grpc.health.v1.Health/Check, encoded by hand (field 1 of each message):
    1 SERVING, 2 NOT_SERVING."""
    data = service.encode()
    request = b"\x0a" + bytes([len(data)]) + data if data else b""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        raw = ch.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=10)
    return raw[1] if raw[:1] == b"\x08" else 0


class DaemonHealthFollowsModels(unittest.TestCase):
    """The daemon-wide health (service "", what balancers and readiness probes check)
    follows management calls, not only config reloads: NOT_SERVING once nothing
    serves, SERVING again when a model is loaded."""

    def test_unload_and_load_change_the_daemon_wide_health(self):
        d = Daemon([model_entry("only", "only.pt", default=True)], prefix="health")
        try:
            write_add_model(d.path("only.pt"), 1)
            d.start()
            manage = d.management_stub()
            self.assertEqual(daemon_health(d.port), 1)
            manage.UnloadModel(management_pb2.UnloadModelRequest(id="only"), timeout=30)
            wait_until(lambda: daemon_health(d.port) == 2, 30, "NOT_SERVING after the last model is unloaded")
            self.assertEqual(daemon_health(d.port, "splitlearn.comm.ComputeService"), 2)
            info = manage.LoadModel(management_pb2.LoadModelRequest(path="only.pt", id="again"), timeout=120)
            self.assertEqual(info.state, management_pb2.READY)
            wait_until(lambda: daemon_health(d.port) == 1, 30, "SERVING after a model is loaded")
            self.assertEqual(d.stop(), 0, d.log())
        finally:
            d.close()


def subprocess_ctl_unreachable(d):
    import subprocess
    return subprocess.run([require("SPLITLEARNCTL_BIN"), "--manage", f"unix:{d.dir}/no-such.sock", "status"],
                          capture_output=True, text=True, timeout=60)


if __name__ == "__main__":
    unittest.main()
