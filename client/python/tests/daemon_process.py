"""Starts and stops the real splitlearnd for tests on 127.0.0.1.

The binary comes from SPLITLEARND_BIN (ctest sets it, tests/CMakeLists.txt); without
it the tests that need a daemon are skipped with that reason. The daemon gets its
config in a private temporary folder, listens on a port the kernel picks (or one
given, to restart on the same port) and is stopped by the PID of the process this
module started, never by name.
"""
import json
import os
import re
import signal
import subprocess
import time

MIB = 1024 * 1024
_LISTENING = re.compile(r"compute service listening on 127\.0\.0\.1:(\d+)")
_METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
_READY = re.compile(r"ready: (\d+) model\(s\) ready")


def daemon_binary():
    return os.environ.get("SPLITLEARND_BIN")


class DaemonFailed(AssertionError):
    pass


class DaemonProcess:
    """One splitlearnd. `models` is the config's models list; `metrics` turns on
    /metrics on a free port."""

    def __init__(self, workdir, models, metrics=False, log_level="info", devices=None):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, "splitlearnd.yaml")
        self.log_path = os.path.join(workdir, "splitlearnd.log")
        self.models = models
        self.proc = None
        self.port = None
        self.metrics_port = None
        config = {
            "server": {
                "listen": "127.0.0.1:0",
                "max_message_bytes": 64 * MIB,
                "drain_timeout_s": 10,
                "watch_config": False,
                "log_level": log_level,
            },
            "model_root": workdir,
            "devices": devices or {"cpu": {"intra_op_threads": 1}},
            "models": models,
        }
        if metrics:
            config["server"]["metrics_listen"] = "127.0.0.1:0"
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, port=0, timeout_s=90):
        """Starts the daemon (on `port`, 0: any) and waits for its "ready:" line."""
        binary = daemon_binary()
        if not binary:
            raise DaemonFailed("SPLITLEARND_BIN is not set")
        cmd = [binary, "--config", self.config_path, "--listen", f"127.0.0.1:{port}", "--log-format", "text"]
        with open(self.log_path, "ab") as log:
            offset = log.tell()  # the log is appended to: read this run's lines only
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log_since(offset)
            listening = _LISTENING.search(text)
            ready = _READY.search(text)
            if listening and ready:
                self.port = int(listening.group(1))
                metrics = _METRICS.search(text)
                self.metrics_port = int(metrics.group(1)) if metrics else None
                if int(ready.group(1)) != len(self.models):
                    self.kill()
                    raise DaemonFailed(f"only {ready.group(1)} of {len(self.models)} models ready; log:\n{text}")
                return self.port
            if self.proc.poll() is not None:
                raise DaemonFailed(f"splitlearnd exited with {self.proc.returncode}; log:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonFailed(f"splitlearnd not ready after {timeout_s} s; log:\n{text}")
            time.sleep(0.05)

    def stop(self, timeout_s=60):
        """SIGTERM to the process started here; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonFailed(f"splitlearnd ignored SIGTERM for {timeout_s} s; log:\n{self.log()}")
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def model_entry(model_id, file_name, warmup_shape=None, **extra):
    """A config entry for a CPU model in the temp folder, with optional warmup."""
    entry = {"id": model_id, "path": file_name, "device": "cpu"}
    if warmup_shape is not None:
        entry["warmup"] = {"inputs": [{"shape": list(warmup_shape), "dtype": "float32"}], "runs": 1}
    entry.update(extra)
    return entry
