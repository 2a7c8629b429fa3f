"""Several real splitlearnd processes on loopback ports, for the replica tests.

ctest passes the locations through the environment (tests/CMakeLists.txt):
SPLITLEARND_BIN, SPLITLEARND_PY_STUBS and SPLITLEARND_SOURCE_DIR. A Replica keeps its
port across restarts, as a replica behind a load balancer does, and stops only the
process it started, by PID.
"""
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time


def _required_env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; run these tests through ctest (tests/replicas/CMakeLists.txt)")
    return value


SPLITLEARND_BIN = _required_env("SPLITLEARND_BIN")
STUBS_DIR = _required_env("SPLITLEARND_PY_STUBS")
SOURCE_DIR = _required_env("SPLITLEARND_SOURCE_DIR")
if STUBS_DIR not in sys.path:
    sys.path.insert(0, STUBS_DIR)

import grpc  # noqa: E402
import compute_pb2 as pb  # noqa: E402


def _load_replicas_module():
    # Loaded as a plain file so that the test does not depend on the rest of the package.
    path = os.path.join(SOURCE_DIR, "client", "python", "splitlearnd_client", "replicas.py")
    spec = importlib.util.spec_from_file_location("splitlearnd_replicas", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["splitlearnd_replicas"] = module
    spec.loader.exec_module(module)
    return module


replicas = _load_replicas_module()

_READY = re.compile(r"ready: (\d+) model\(s\) ready")


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


def model_entry(model_id, file_name, warmup_shape, sessions=None, warmup_runs=1):
    entry = {
        "id": model_id,
        "path": file_name,  # relative to model_root
        "device": "cpu",
        "warmup": {"inputs": [{"shape": list(warmup_shape), "dtype": "float32"}], "runs": warmup_runs},
    }
    if sessions is not None:
        entry["sessions"] = sessions
    return entry


class Replica:
    def __init__(self, name, workdir, port, models, drain_grace_s=1.5, drain_timeout_s=10):
        self.name = name
        self.workdir = workdir
        self.port = port
        self.drain_grace_s = drain_grace_s
        self.drain_timeout_s = drain_timeout_s
        self.config_path = os.path.join(workdir, f"{name}.json")
        self.proc = None
        self.lifetime = 0
        self.log_path = None
        self.finished_counts = []  # total_requests of each lifetime that ended
        self._channel = None
        self.write_config(models)

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def write_config(self, models):
        self.models = list(models)
        config = {
            "server": {
                "listen": self.endpoint,
                "drain_timeout_s": self.drain_timeout_s,
                "drain_grace_s": self.drain_grace_s,
                "watch_config": False,
                "log_level": "info",
            },
            "model_root": self.workdir,
            "devices": {"cpu": {"intra_op_threads": 1}},
            "models": self.models,
        }
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML
        os.replace(tmp, self.config_path)

    def log_text(self):
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s=120):
        self.lifetime += 1
        self.log_path = os.path.join(self.workdir, f"{self.name}.{self.lifetime}.log")
        cmd = [SPLITLEARND_BIN, "--config", self.config_path, "--listen", self.endpoint, "--log-format", "text"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log_text()
            m = _READY.search(text)
            if m:
                if int(m.group(1)) != len(self.models):
                    self.kill()
                    raise AssertionError(f"{self.name}: only {m.group(1)} of {len(self.models)} model(s) ready:\n{text}")
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} while starting:\n{text}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} not ready after {timeout_s} s:\n{text}")
            time.sleep(0.05)

    def channel(self):
        """A plain channel to this replica only (kept across restarts)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.endpoint, options=replicas.channel_options())
        return self._channel

    def total_requests(self, timeout=5):
        info = self.channel().unary_unary(
            "/splitlearn.comm.ComputeService/GetServiceInfo", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ServiceInfoResponse.FromString)
        return info(pb.ServiceInfoRequest(), timeout=timeout).total_requests

    def served(self):
        """Requests served over every lifetime, the current one included."""
        current = self.total_requests() if self.alive() else 0
        return sum(self.finished_counts) + current

    def stop(self, timeout_s=60):
        """SIGTERM and wait; returns the exit status. The request counter is read first,
        and once more in the drain grace period (health is NOT_SERVING then, so
        balanced clients have stopped sending, but the daemon still answers)."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        count = self.total_requests()
        os.kill(self.proc.pid, signal.SIGTERM)
        if self.drain_grace_s >= 1:
            time.sleep(min(0.3, self.drain_grace_s / 4))
            try:
                count = self.total_requests(timeout=0.5)
            except grpc.RpcError:
                pass  # past the grace already: keep the count read before SIGTERM
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout_s} s of SIGTERM:\n{self.log_text()}")
        self.finished_counts.append(count)
        return self.proc.returncode

    def restart(self):
        rc = self.stop()
        if rc != 0:
            raise AssertionError(f"{self.name} exited with {rc} after SIGTERM:\n{self.log_text()}")
        self.start()

    def reload(self):
        os.kill(self.proc.pid, signal.SIGHUP)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self):
        self.kill()
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def float_request(model_id, array):
    """A ComputeRequest for a float32 numpy array."""
    return pb.ComputeRequest(data=array.astype("<f4").tobytes(), shape=list(array.shape), dtype=pb.DTYPE_FLOAT32,
                             model_id=model_id)


def compute_method(channel):
    return channel.unary_unary("/splitlearn.comm.ComputeService/Compute",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=pb.ComputeResponse.FromString)
