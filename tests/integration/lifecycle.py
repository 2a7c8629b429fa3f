"""Shared pieces of the lifecycle integration tests: the real splitlearnd and
splitlearnctl, tiny TorchScript models whose answer tells which version served, a
load generator and small waiting helpers.

ctest passes locations through the environment (tests/CMakeLists.txt):
SPLITLEARND_BIN, SPLITLEARNCTL_BIN, SPLITLEARND_PY_STUBS, SPLITLEARND_SOURCE_DIR.
Every process a test starts is its own child, stopped by its PID; sockets are on
127.0.0.1 or Unix sockets in the test's temporary directory.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; run these tests through ctest (tests/integration/CMakeLists.txt)")
    return value


SPLITLEARND_BIN = _env("SPLITLEARND_BIN")
SPLITLEARNCTL_BIN = _env("SPLITLEARNCTL_BIN")
STUBS_DIR = _env("SPLITLEARND_PY_STUBS")
if STUBS_DIR not in sys.path:
    sys.path.insert(0, STUBS_DIR)

import grpc  # noqa: E402
import compute_pb2  # noqa: E402
import compute_pb2_grpc  # noqa: E402
import management_pb2  # noqa: E402
import management_pb2_grpc  # noqa: E402

_LISTENING = re.compile(r"compute service listening on 127\.0\.0\.1:(\d+)")
_READY = re.compile(r"ready: ")

HIDDEN = 4  # inputs are float32 [1, HIDDEN]


def write_add_model(path, constant, in_place=False):
    """A TorchScript model answering x + constant. Written to a temporary file and
    renamed over `path` (what deployment tools do), or, with in_place, copied into
    the existing file's bytes."""
    import torch  # only here: importing torch takes a few seconds

    class AddConstant(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.register_buffer("c", torch.tensor(float(c)))
            self.w = torch.nn.Parameter(torch.zeros(64))  # some parameter bytes to report

        def forward(self, x):
            return x + self.c

    tmp = f"{path}.tmp-{os.getpid()}"
    torch.jit.script(AddConstant(constant)).save(tmp)
    if in_place and os.path.exists(path):
        with open(tmp, "rb") as src, open(path, "r+b") as dst:
            data = src.read()
            dst.seek(0)
            dst.write(data)
            dst.truncate()
        os.unlink(tmp)
    else:
        os.replace(tmp, path)


def model_entry(model_id, file_name, **extra):
    entry = {"id": model_id, "path": file_name, "device": "cpu",
             "warmup": {"inputs": [{"shape": [1, HIDDEN], "dtype": "float32"}], "runs": 1}}
    entry.update(extra)
    return entry


def write_config(path, config):
    """Writes `config` (JSON is YAML) to a new file and renames it over `path`."""
    tmp = f"{path}.new"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, path)


def wait_until(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def now_ms():
    return int(time.time() * 1000)


class Daemon:
    """One splitlearnd child process with its own directory, config and sockets."""

    def __init__(self, models, watch_config=False, extra_server=None, devices=None, env=None, prefix="lifecycle"):
        self.dir = tempfile.mkdtemp(prefix=f"splitlearnd-{prefix}-")
        self.model_dir = os.path.join(self.dir, "models")
        os.mkdir(self.model_dir)
        self.config_path = os.path.join(self.dir, "config.yaml")
        self.log_path = os.path.join(self.dir, "splitlearnd.log")
        self.manage_address = f"unix:{self.dir}/manage.sock"
        self.env = env
        self.proc = None
        self.port = None
        server = {"listen": "127.0.0.1:0", "management_listen": self.manage_address,
                  "watch_config": watch_config, "drain_timeout_s": 10, "log_level": "info"}
        server.update(extra_server or {})
        self.config = {"server": server, "model_root": self.model_dir,
                       "devices": devices or {"cpu": {"intra_op_threads": 1, "queue_capacity": 4096}},
                       "models": models}
        self._channels = []

    def path(self, name):
        return os.path.join(self.model_dir, name)

    def write_config(self, config=None):
        if config is not None:
            self.config = config
        write_config(self.config_path, self.config)

    def command(self):
        return [SPLITLEARND_BIN, "--config", self.config_path, "--listen", "127.0.0.1:0", "--log-format", "text"]

    def start(self, command=None, timeout_s=90):
        if not os.path.exists(self.config_path):
            self.write_config()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command or self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log()
            m = _LISTENING.search(text)
            if m and _READY.search(text):
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"splitlearnd exited with {self.proc.returncode} while starting:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"splitlearnd not ready after {timeout_s} s:\n{text}")
            time.sleep(0.05)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout_s=60):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"splitlearnd ignored SIGTERM for {timeout_s} s:\n{self.log()}")
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def cleanup(self):
        self.kill()
        for ch in self._channels:
            ch.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def compute_stub(self):
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self._channels.append(ch)
        return compute_pb2_grpc.ComputeServiceStub(ch)

    def manage_stub(self):
        ch = grpc.insecure_channel(self.manage_address)
        self._channels.append(ch)
        return management_pb2_grpc.ManagementServiceStub(ch)

    def ctl(self, *args, timeout_s=120):
        """Runs splitlearnctl against this daemon's management socket."""
        return subprocess.run([SPLITLEARNCTL_BIN, "--manage", self.manage_address, *args], capture_output=True,
                              text=True, timeout=timeout_s)


def compute(stub, model_id, values, timeout_s=30):
    """(status code, output values or None)."""
    req = compute_pb2.ComputeRequest(model_id=model_id, shape=[1, len(values)])
    req.data = b"".join(float_bytes(v) for v in values)
    try:
        resp = stub.Compute(req, timeout=timeout_s)
    except grpc.RpcError as e:
        return e.code(), None
    import struct
    return grpc.StatusCode.OK, list(struct.unpack(f"<{len(resp.data) // 4}f", resp.data))


def float_bytes(v):
    import struct
    return struct.pack("<f", v)


class Hammer:
    """`clients` threads, each sending requests in a loop to the models in `targets`
    (a list the test may change while they run). Every request is recorded as
    (model, start, end, code, output offset) where offset is output - input."""

    def __init__(self, daemon, targets, clients=8):
        self.daemon = daemon
        self.targets = list(targets)
        self.records = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def set_targets(self, targets):
        with self._lock:
            self.targets = list(targets)

    def _run(self, index):
        stub = self.daemon.compute_stub()
        i = 0
        while not self._stop.is_set():
            with self._lock:
                targets = list(self.targets)
            model = targets[(index + i) % len(targets)]
            x = float(index * 1000 + i % 1000)
            start = time.monotonic()
            code, out = compute(stub, model, [x] * HIDDEN)
            end = time.monotonic()
            offset = None if out is None else out[0] - x
            with self._lock:
                self.records.append((model, start, end, code, offset))
            i += 1

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def snapshot(self):
        with self._lock:
            return list(self.records)

    def wait_for_requests(self, model, count, timeout_s=30):
        wait_until(lambda: sum(1 for r in self.snapshot() if r[0] == model) >= count, timeout_s,
                   f"{count} requests to {model}")
