"""Smoke test of the tools without a shell: splitlearnctl writes a demo shard, the
daemon serves it, and splitlearnctl talks to the daemon."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from splitlearnd_launcher import Splitlearnd, model_entry, require

SPLITLEARND_BIN = require("SPLITLEARND_BIN")
SPLITLEARNCTL_BIN = require("SPLITLEARNCTL_BIN")


def run(args, timeout=120):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, timeout=timeout)


class CliSmokeTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-pycli-")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

    def test_demo_shard_served_and_queried(self):
        shard = os.path.join(self.workdir, "demo.pt")
        made = run([SPLITLEARNCTL_BIN, "make-demo-shard", shard, "--layers", "1", "--hidden", "64", "--heads", "4",
                    "--ffn", "128"])
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertTrue(os.path.getsize(shard) > 0)

        daemon = Splitlearnd([model_entry("demo", "demo.pt", [1, 10, 64], default=True)], workdir=self.workdir)
        checked = run([SPLITLEARND_BIN, "--check-config", daemon.config_path])
        self.assertEqual(checked.returncode, 0, checked.stderr)

        with daemon:  # and at the end, SIGTERM and exit status 0
            infer = run([SPLITLEARNCTL_BIN, "-a", daemon.address, "infer", "--shape", "1x10x64"])
            self.assertEqual(infer.returncode, 0, f"stdout: {infer.stdout!r} stderr: {infer.stderr!r}")
            lines = infer.stdout.splitlines()
            self.assertTrue(lines, "splitlearnctl infer printed nothing")
            self.assertTrue(lines[0].startswith("output 1x10x64 float32"), lines[0])

            # The same input int8 blockwise both ways: the answer decodes to float32.
            int8 = run([SPLITLEARNCTL_BIN, "-a", daemon.address, "infer", "--shape", "1x10x64", "--int8-block", "64"])
            self.assertEqual(int8.returncode, 0, f"stdout: {int8.stdout!r} stderr: {int8.stderr!r}")
            self.assertTrue(int8.stdout.startswith("output 1x10x64 float32"), int8.stdout)

            # A shape the model rejects makes the tool fail, not print an output line.
            bad = run([SPLITLEARNCTL_BIN, "-a", daemon.address, "infer", "--shape", "1x10x63"])
            self.assertNotEqual(bad.returncode, 0)
            self.assertNotIn("output ", bad.stdout)

            health = run([SPLITLEARNCTL_BIN, "-a", daemon.address, "health"])
            self.assertEqual(health.returncode, 0, health.stderr)
            self.assertIn("healthy", health.stdout)
            self.assertTrue(daemon.alive())

    def test_check_config_rejects_unknown_key(self):
        path = os.path.join(self.workdir, "bad.yaml")
        with open(path, "w") as f:
            json.dump({"server": {"listen": "127.0.0.1:0", "no_such_key": 1}, "models": []}, f)
        checked = run([SPLITLEARND_BIN, "--check-config", path])
        self.assertNotEqual(checked.returncode, 0)
        self.assertIn("no_such_key", checked.stderr)


if __name__ == "__main__":
    unittest.main()
