"""CPU placement (server.cpus, devices.<name>.cpus) on the real daemon.

Checked through /proc: the device worker (named sld-cpu) runs on the device's CPUs and
gRPC's threads on server.cpus; a reload moves the worker; CPUs the process may not use
refuse the start, or the reload (and then nothing changes and every model keeps serving).
"""
import os
import subprocess
import unittest

from ops_fixture import Daemon, compute, model_entry, write_add_model
from splitlearnd_launcher import LaunchError, require

ALLOWED = sorted(os.sched_getaffinity(0))
NOT_ALLOWED = next(c for c in range(1023, -1, -1) if c not in ALLOWED)


def threads(pid):
    """{tid: (name, [cpus])} of a process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            out[int(tid)] = (name, sorted(os.sched_getaffinity(int(tid))))
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return out


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


class CpuPlacement(unittest.TestCase):
    def make(self, server_cpus=None, device_cpus=None):
        devices = {"cpu": {"intra_op_threads": 1, "blas_threads": 1}}
        if device_cpus is not None:
            devices["cpu"]["cpus"] = device_cpus
        d = Daemon([model_entry("m", "m.pt")], devices=devices,
                   extra_server={"cpus": server_cpus} if server_cpus is not None else None, prefix="cpus")
        self.addCleanup(d.close)
        write_add_model(d.path("m.pt"), 3)
        return d

    def serve_one(self, d):
        code, out = compute(d.compute_stub(), "m", [1.0, 2.0])
        self.assertEqual(code.name, "OK")
        self.assertEqual(out, [4.0, 5.0])

    def worker(self, d):
        workers = [t for t in threads(d.proc.pid).values() if t[0] == "sld-cpu"]
        self.assertEqual(len(workers), 1, threads(d.proc.pid))
        return workers[0][1]

    def test_worker_and_grpc_threads_on_their_cpus_and_a_reload_moves_the_worker(self):
        first, last = ALLOWED[0], ALLOWED[-1]
        d = self.make(server_cpus=str(first), device_cpus=[last]).start()
        self.serve_one(d)
        self.assertEqual(self.worker(d), [last])
        grpc_threads = [t for t in threads(d.proc.pid).values()
                        if t[0].startswith(("grpc", "default-executo", "nexting", "event_engine"))]
        self.assertTrue(grpc_threads, threads(d.proc.pid))
        for name, cpus in grpc_threads:
            self.assertEqual(cpus, [first], name)
        # Without its own cpus the worker follows server.cpus; the reload says what waits
        # for a restart.
        config = dict(d.config)
        config["devices"] = {"cpu": {"intra_op_threads": 1, "blas_threads": 1}}
        d.write_config(config)
        last_reload = d.reload()
        self.assertTrue(last_reload.ok, last_reload.message)
        self.serve_one(d)  # the worker re-pins itself before its next batch
        self.assertEqual(self.worker(d), [first])
        self.assertIn("devices.cpu.cpus changed", d.log())

    def test_a_reload_with_cpus_the_daemon_may_not_use_changes_nothing(self):
        d = self.make(device_cpus=[ALLOWED[-1]]).start()
        config = dict(d.config)
        config["devices"] = {"cpu": {"intra_op_threads": 1, "blas_threads": 1, "cpus": [NOT_ALLOWED]}}
        d.write_config(config)
        last_reload = d.reload()
        self.assertFalse(last_reload.ok)
        self.assertIn("devices.cpu.cpus", last_reload.message)
        self.assertIn(str(NOT_ALLOWED), last_reload.message)
        self.serve_one(d)
        self.assertEqual(self.worker(d), [ALLOWED[-1]])

    def test_start_refused_with_cpus_the_daemon_may_not_use(self):
        d = self.make(server_cpus=str(NOT_ALLOWED))
        with self.assertRaises(LaunchError) as refused:
            d.start()
        self.assertIn("server.cpus", str(refused.exception))
        self.assertIn("not available to this process", str(refused.exception))
        self.assertNotEqual(d.proc.returncode, 0)
        # --check-config says the same without starting anything.
        checked = subprocess.run([require("SPLITLEARND_BIN"), "--check-config", d.config_path], capture_output=True,
                                 text=True, timeout=60)
        self.assertEqual(checked.returncode, 1, checked.stdout + checked.stderr)
        self.assertIn("server.cpus", checked.stderr)


if __name__ == "__main__":
    unittest.main()
