"""Runs the real splitlearnd binary for the Python integration tests.

ctest passes the locations of everything through the environment (see
tests/CMakeLists.txt): SPLITLEARND_BIN, SPLITLEARNCTL_BIN, SPLITLEARND_PY_STUBS and
SPLITLEARND_SOURCE_DIR. A missing variable is an error, not a skip: these tests are
meant to run against a build.

A Daemon writes its config into a private temporary folder, starts splitlearnd on an
ephemeral port of 127.0.0.1, waits until the log says it listens and is ready, and at
the end stops exactly the process it started with SIGTERM.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest


def _required_env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"{name} is not set; run these tests through ctest, which sets it (tests/python/CMakeLists.txt)")
    return value


SPLITLEARND_BIN = _required_env("SPLITLEARND_BIN")
SPLITLEARNCTL_BIN = _required_env("SPLITLEARNCTL_BIN")
STUBS_DIR = _required_env("SPLITLEARND_PY_STUBS")
SOURCE_DIR = _required_env("SPLITLEARND_SOURCE_DIR")

if STUBS_DIR not in sys.path:
    sys.path.insert(0, STUBS_DIR)

MIB = 1024 * 1024
# What legacy split-learning clients configure on their channels.
LEGACY_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 100 * MIB),
    ("grpc.max_receive_message_length", 100 * MIB),
]

_LISTENING = re.compile(r"compute service listening on 127\.0\.0\.1:(\d+)")
_READY = re.compile(r"ready: (\d+) model\(s\) ready(.*)")


class DaemonError(AssertionError):
    """splitlearnd did not start or stop as expected; the message carries its log."""


def model_entry(model_id, file_name, warmup_shape, default=False, max_batch_size=1, max_delay_us=0):
    """One entry of the config's `models` list, for a float32 model on the CPU."""
    entry = {
        "id": model_id,
        "path": file_name,  # relative: resolved against model_root (the temp dir)
        "device": "cpu",
        "warmup": {"inputs": [{"shape": list(warmup_shape), "dtype": "float32"}], "runs": 1},
        "batching": {"max_batch_size": max_batch_size, "max_delay_us": max_delay_us},
    }
    if default:
        entry["default"] = True
    return entry


class Daemon:
    def __init__(self, workdir, models, queue_capacity=256):
        self.workdir = workdir
        self.models = models
        self.config_path = os.path.join(workdir, "splitlearnd.yaml")
        self.log_path = os.path.join(workdir, "splitlearnd.log")
        self.proc = None
        self.port = None
        self.spawned_at = None  # time.monotonic() just before the process was started
        self.ready_seen_at = None  # time.monotonic() when the "ready:" line was seen
        config = {
            "server": {
                "listen": "127.0.0.1:0",
                "max_message_bytes": 256 * MIB,
                "drain_timeout_s": 10,
                "watch_config": False,
                "log_level": "info",
            },
            "model_root": workdir,
            "devices": {"cpu": {"intra_op_threads": 1, "queue_capacity": queue_capacity}},
            "models": models,
        }
        # JSON is a subset of YAML, so the daemon's YAML parser reads this as is.
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s=60, failed_ok=0):
        """Starts the daemon and waits for its "ready:" line. `failed_ok` models may have
        failed to load (the others must be ready)."""
        cmd = [SPLITLEARND_BIN, "--config", self.config_path, "--listen", "127.0.0.1:0", "--log-format", "text"]
        self.spawned_at = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = self.spawned_at + timeout_s
        while True:
            text = self.log_text()
            if self.port is None:
                m = _LISTENING.search(text)
                if m:
                    self.port = int(m.group(1))
            if self.port is not None:
                m = _READY.search(text)
                if m:
                    self.ready_seen_at = time.monotonic()
                    ready, rest = int(m.group(1)), m.group(2)
                    if ready != len(self.models) - failed_ok or (not failed_ok and "failed" in rest) or "loading" in rest:
                        self.kill()
                        raise DaemonError(f"splitlearnd is up with only {ready} of {len(self.models)} model(s) "
                                          f"ready ({m.group(0)!r}); log:\n{text}")
                    return self.port
            if self.proc.poll() is not None:
                raise DaemonError(f"splitlearnd exited with {self.proc.returncode} while starting; log:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonError(f"splitlearnd was not ready after {timeout_s} s; log:\n{text}")
            time.sleep(0.05)

    def stop(self, timeout_s=60):
        """SIGTERM to our own process; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonError(f"splitlearnd did not exit within {timeout_s} s of SIGTERM; log:\n{self.log_text()}")
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class DaemonTestCase(unittest.TestCase):
    """One daemon per test class. Subclasses implement make_models(workdir), which
    writes the .pt files and returns the config's model entries."""

    daemon = None
    workdir = None

    @classmethod
    def make_models(cls, workdir):
        raise NotImplementedError

    @classmethod
    def _cleanup(cls):
        # Runs after tearDownClass, and also when setUpClass failed half way, so that
        # no daemon outlives its test class.
        if cls.daemon is not None:
            cls.daemon.kill()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def setUpClass(cls):
        cls.daemon = None
        cls.workdir = tempfile.mkdtemp(prefix="splitlearnd-pytest-")
        cls.addClassCleanup(cls._cleanup)
        models = cls.make_models(cls.workdir)
        cls.daemon = Daemon(cls.workdir, models)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        """The orderly end: SIGTERM, and the daemon must exit 0."""
        daemon = cls.daemon
        was_alive = daemon.alive()
        rc = daemon.stop()
        if not was_alive:
            raise DaemonError(f"splitlearnd died during the tests (exit status {rc}); log:\n{daemon.log_text()}")
        if rc != 0:
            raise DaemonError(f"splitlearnd exited with status {rc} after SIGTERM, expected 0; log:\n"
                              f"{daemon.log_text()}")

    def assertDaemonAlive(self):
        if not self.daemon.alive():
            self.fail(f"splitlearnd is not running (exit status {self.daemon.proc.returncode}); log:\n"
                      f"{self.daemon.log_text()}")
