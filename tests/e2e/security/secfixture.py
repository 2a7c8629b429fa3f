"""The security and fault tests' daemon and tiny models.

The daemon is started and stopped by tests/support/splitlearnd_launcher.py: on
127.0.0.1 (port 0) with its management service on a Unix socket in its own temporary
folder, and small limits where the tests probe them.
"""
import os

import grpc
import splitlearnd_launcher as launcher
from splitlearnd_launcher import MIB, model_entry as _model_entry

import compute_pb2 as pb  # generated; the launcher put its folder on sys.path
import compute_pb2_grpc as pb_grpc
import management_pb2 as mpb
import management_pb2_grpc as mpb_grpc  # noqa: F401  (for the tests)


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


def model_entry(model_id, file_name, warmup_shape=(1, 4), **extra):
    return _model_entry(model_id, file_name, warmup_shape, **extra)


class Daemon(launcher.Splitlearnd):
    """A daemon for models written into `workdir`: messages up to 16 MiB, a drain of 5 s."""

    def __init__(self, workdir, models, server=None):
        settings = {"max_message_bytes": 16 * MIB, "drain_timeout_s": 5}
        settings.update(server or {})
        super().__init__(models, workdir=workdir, server=settings,
                         devices={"cpu": {"intra_op_threads": 1, "queue_capacity": 256}})

    def compute_stub(self, options=None):
        """A channel of the caller's own (it closes it) and a stub on it."""
        channel = grpc.insecure_channel(self.address, options=options or [])
        return channel, pb_grpc.ComputeServiceStub(channel)

    def model(self, model_id):
        return self.management_stub().GetModel(mpb.GetModelRequest(id=model_id), timeout=10)

    def requests_run(self):
        return sum(d.requests_run for d in self.status(timeout_s=10).devices)

    def queue_depth(self):
        return sum(d.queue_depth for d in self.status(timeout_s=10).devices)


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
