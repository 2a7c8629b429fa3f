"""Shared pieces of the operations tests: a daemon whose models live in a folder of
its own, with splitlearnctl at hand; tiny TorchScript models whose answer tells which
version served; a load generator.

The daemon is started and stopped by tests/support/splitlearnd_launcher.py. Sockets are
on 127.0.0.1 or Unix sockets in the test's temporary directory.
"""
import os
import subprocess
import threading
import time

import splitlearnd_launcher as launcher
from splitlearnd_launcher import wait_until  # noqa: F401  (for the tests)

import grpc
import compute_pb2  # generated; the launcher put its folder on sys.path
import compute_pb2_grpc
import management_pb2  # noqa: F401  (for the tests)

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
    return launcher.model_entry(model_id, file_name, [1, HIDDEN], **extra)


def now_ms():
    return int(time.time() * 1000)


class Daemon(launcher.Splitlearnd):
    """A splitlearnd with its models in <dir>/models, its management service on
    <dir>/manage.sock, and room for 4096 queued requests (the Hammer's clients)."""

    def __init__(self, models, watch_config=False, extra_server=None, devices=None, prefix="operations"):
        server = {"watch_config": watch_config}
        server.update(extra_server or {})
        super().__init__(models, prefix=prefix, server=server, model_root="models",
                         devices=devices or {"cpu": {"intra_op_threads": 1, "queue_capacity": 4096}})

    @property
    def model_dir(self):
        return self.model_root

    def compute_stub(self):
        """On a channel of its own, as a separate client's."""
        return compute_pb2_grpc.ComputeServiceStub(self.channel(self.address, new=True))

    def ctl(self, *args, timeout_s=120):
        """Runs splitlearnctl against this daemon's management socket."""
        return subprocess.run([launcher.require("SPLITLEARNCTL_BIN"), "--manage", self.management, *args],
                              capture_output=True, text=True, timeout=timeout_s)


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
