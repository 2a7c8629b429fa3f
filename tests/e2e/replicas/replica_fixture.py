"""Several real splitlearnd processes on loopback ports, for the replica tests.

Each Replica is a daemon of tests/support/splitlearnd_launcher.py that keeps its port
across restarts, as a replica behind a load balancer does.
"""
import importlib.util
import os
import socket
import sys

import grpc
import splitlearnd_launcher as launcher
from splitlearnd_launcher import SOURCE_DIR

import compute_pb2 as pb  # generated; the launcher put its folder on sys.path


def _load_replicas_module():
    # Loaded as a plain file so that the test does not depend on the rest of the package.
    path = os.path.join(SOURCE_DIR, "client", "python", "splitlearnd_client", "replicas.py")
    spec = importlib.util.spec_from_file_location("splitlearnd_replicas", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["splitlearnd_replicas"] = module
    spec.loader.exec_module(module)
    return module


replicas = _load_replicas_module()


def free_ports(n):
    """n distinct free TCP ports of 127.0.0.1 (held open together while picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


model_entry = launcher.model_entry


class Replica(launcher.Splitlearnd):
    """A daemon on 127.0.0.1:`port`, with its files in workdir/<name> and its models in
    workdir."""

    def __init__(self, name, workdir, port, models, drain_grace_s=1.5, drain_timeout_s=10):
        super().__init__(models, workdir=workdir, name=name,
                         server={"listen": f"127.0.0.1:{port}", "drain_grace_s": drain_grace_s,
                                 "drain_timeout_s": drain_timeout_s})
        self.endpoint = f"127.0.0.1:{port}"
        self.finished_counts = []  # total_requests of each lifetime that ended
        self._direct = None

    def set_models(self, models):
        self.config["models"] = list(models)
        self.write_config()

    def direct_channel(self):
        """A plain channel to this replica only (kept across restarts)."""
        if self._direct is None:
            self._direct = grpc.insecure_channel(self.endpoint, options=replicas.channel_options())
        return self._direct

    def total_requests(self, timeout=5):
        info = self.direct_channel().unary_unary(
            "/splitlearn.comm.ComputeService/GetServiceInfo", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ServiceInfoResponse.FromString)
        # wait_for_ready: after a restart the channel may still be backing off.
        return info(pb.ServiceInfoRequest(), timeout=timeout, wait_for_ready=True).total_requests

    def served(self):
        """Requests served over every lifetime, the current one included (a lifetime's
        count is read just before its SIGTERM)."""
        current = self.total_requests() if self.alive() else 0
        return sum(self.finished_counts) + current

    def stop(self, timeout_s=60):
        if self.alive():
            self.finished_counts.append(self.total_requests())
        return super().stop(timeout_s)

    def restart(self):
        self.shutdown()
        self.start()

    def close(self):
        super().close()
        if self._direct is not None:
            self._direct.close()
            self._direct = None


def float_request(model_id, array):
    """A ComputeRequest for a float32 numpy array."""
    return pb.ComputeRequest(data=array.astype("<f4").tobytes(), shape=list(array.shape), dtype=pb.DTYPE_FLOAT32,
                             model_id=model_id)


def compute_method(channel):
    return channel.unary_unary("/splitlearn.comm.ComputeService/Compute",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=pb.ComputeResponse.FromString)
