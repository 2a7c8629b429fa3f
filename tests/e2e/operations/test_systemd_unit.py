"""The systemd unit: `systemd-analyze verify` accepts it and
`systemd-analyze security` scores it 2.5 or lower.

The unit tested is the one the build configured (SPLITLEARND_UNIT_FILE). verify
checks that ExecStart's binary exists, so a copy pointing at the built binary is
verified; the sandbox settings are the installed ones. Skipped where systemd-analyze
is not installed (Debian: package systemd).
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

UNIT = os.environ.get("SPLITLEARND_UNIT_FILE", "")
BIN = os.environ.get("SPLITLEARND_BIN", "")
ANALYZE = shutil.which("systemd-analyze")


@unittest.skipUnless(ANALYZE, "systemd-analyze is not installed")
class SystemdUnit(unittest.TestCase):
    def setUp(self):
        if not os.path.isfile(UNIT):
            self.fail(f"SPLITLEARND_UNIT_FILE={UNIT!r} is not a file; run through ctest")
        self.dir = tempfile.mkdtemp(prefix="splitlearnd-unit-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        with open(UNIT) as f:
            text = f.read()
        installed = re.search(r"^ExecStart=(\S+)", text, re.M).group(1)
        self.unit = os.path.join(self.dir, "splitlearnd.service")
        with open(self.unit, "w") as f:
            f.write(text.replace(installed, BIN))

    def test_verify(self):
        r = subprocess.run([ANALYZE, "verify", self.unit], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stderr.strip(), "")

    def test_security_score(self):
        r = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=25", self.unit],
                           capture_output=True, text=True, timeout=120)
        m = re.search(r"Overall exposure level for splitlearnd\.service: ([0-9.]+) (\S+)", r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        score = float(m.group(1))
        print(f"\nsystemd-analyze security: {score} {m.group(2)}")
        self.assertLessEqual(score, 2.5)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr)

    def test_required_settings(self):
        with open(UNIT) as f:
            text = f.read()
        for line in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID", "User=splitlearnd",
                     "ConfigurationDirectory=splitlearnd", "StateDirectory=splitlearnd",
                     "RuntimeDirectory=splitlearnd", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                     "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n"):
            self.assertIn(line, text + "\n")
        self.assertRegex(text, r"(?m)^WatchdogSec=\d+")


if __name__ == "__main__":
    unittest.main()
