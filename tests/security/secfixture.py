"""Starts the real splitlearnd for the security and fault tests, and writes tiny models.

ctest passes SPLITLEARND_BIN, SPLITLEARND_PY_STUBS and SPLITLEARND_SOURCE_DIR (see
tests/CMakeLists.txt). Every daemon listens on 127.0.0.1 (port 0) with its management
service on a Unix socket in its own temporary folder, and is stopped by its own PID.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; run these tests through ctest (tests/security/CMakeLists.txt)")
    return value


SPLITLEARND_BIN = _env("SPLITLEARND_BIN")
STUBS_DIR = _env("SPLITLEARND_PY_STUBS")
if STUBS_DIR not in sys.path:
    sys.path.insert(0, STUBS_DIR)

import grpc  # noqa: E402
import compute_pb2 as pb  # noqa: E402
import compute_pb2_grpc as pb_grpc  # noqa: E402
import management_pb2 as mpb  # noqa: E402
import management_pb2_grpc as mpb_grpc  # noqa: E402

MIB = 1024 * 1024
_LISTENING = re.compile(r"compute service listening on 127\.0\.0\.1:(\d+)")
_READY = re.compile(r"ready: ")


def write_scripted(path, module):
    """Saves a torch.nn.Module as TorchScript (python3-torch)."""
    import torch
    torch.jit.script(module).save(path)


def make_models(folder):
    """Writes the models the tests use and returns {name: file name}."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class ThrowsOnThreeRows(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.size(0) == 3:
                raise RuntimeError("boom: this model refuses three rows")
            return x + 1

    class Busy(torch.nn.Module):
        # Runs x[0, 0] rounds of a small matmul: the caller chooses how long it takes.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rounds = int(x[0, 0].item())
            w = torch.full([64, 64], 0.001)
            y = torch.ones([64, 64])
            for _ in range(rounds):
                y = torch.tanh(torch.mm(y, w) + 1.0)
            return x + y.sum() * 0.0

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    files = {"double": "double.pt", "throws": "throws.pt", "busy": "busy.pt", "linear": "linear.pt"}
    write_scripted(os.path.join(folder, files["double"]), Double())
    write_scripted(os.path.join(folder, files["throws"]), ThrowsOnThreeRows())
    write_scripted(os.path.join(folder, files["busy"]), Busy())
    write_scripted(os.path.join(folder, files["linear"]), Linear())
    return files


def model_entry(model_id, file_name, warmup_shape=(1, 4), default=False, **extra):
    entry = {
        "id": model_id,
        "path": file_name,
        "device": "cpu",
        "warmup": {"inputs": [{"shape": list(warmup_shape), "dtype": "float32"}], "runs": 1},
    }
    if default:
        entry["default"] = True
    entry.update(extra)
    return entry


class Daemon:
    def __init__(self, workdir, models, server=None, name="splitlearnd"):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, name + ".yaml")
        self.log_path = os.path.join(workdir, name + ".log")
        self.socket_path = os.path.join(workdir, name + ".sock")
        self.proc = None
        self.port = None
        settings = {
            "listen": "127.0.0.1:0",
            "management_listen": "unix:" + self.socket_path,
            "max_message_bytes": 16 * MIB,
            "drain_timeout_s": 5,
            "watch_config": False,
            "log_level": "info",
        }
        settings.update(server or {})
        self.config = {
            "server": settings,
            "model_root": workdir,
            "devices": {"cpu": {"intra_op_threads": 1, "queue_capacity": 256}},
            "models": models,
        }
        self.write_config()

    def write_config(self, config=None):
        """Replaces the config file atomically (write aside, then rename)."""
        if config is not None:
            self.config = config
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.config, f, indent=2)  # JSON is YAML
        os.replace(tmp, self.config_path)

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

    def start(self, timeout_s=90):
        self.port = None
        cmd = [SPLITLEARND_BIN, "--config", self.config_path, "--log-format", "text"]
        start_offset = len(self.log_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_text()[start_offset:]
            if self.port is None:
                found = _LISTENING.findall(text)
                if found:
                    self.port = int(found[-1])
            if self.port is not None and _READY.search(text.split("compute service listening", 1)[-1]):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"splitlearnd exited with {self.proc.returncode}; log:\n{self.log_text()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"splitlearnd not ready after {timeout_s} s; log:\n{self.log_text()}")

    def stop(self, timeout_s=60):
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("splitlearnd did not stop after SIGTERM")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def compute_stub(self, options=None):
        channel = grpc.insecure_channel(self.address, options=options or [])
        return channel, pb_grpc.ComputeServiceStub(channel)

    def manage_stub(self):
        channel = grpc.insecure_channel("unix:" + self.socket_path)
        return channel, mpb_grpc.ManagementServiceStub(channel)

    def model(self, model_id):
        channel, stub = self.manage_stub()
        with channel:
            return stub.GetModel(mpb.GetModelRequest(id=model_id), timeout=10)

    def requests_run(self):
        channel, stub = self.manage_stub()
        with channel:
            status = stub.GetStatus(mpb.GetStatusRequest(), timeout=10)
        return sum(d.requests_run for d in status.devices)

    def wait_for_log(self, pattern, timeout_s=60, after=0):
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if regex.search(self.log_text()[after:]):
                return True
            time.sleep(0.05)
        return False


def float_request(shape, value=1.0, **fields):
    import struct
    n = 1
    for d in shape:
        n *= d
    return pb.ComputeRequest(data=struct.pack(f"<{n}f", *([value] * n)), shape=list(shape), **fields)


def code_of(call, request, timeout=30):
    """The status code of one unary call (OK included)."""
    try:
        call(request, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
