"""A small Python client for splitlearnd's ComputeService (package splitlearn.comm).

It speaks the legacy protocol (fields 1-15) and the extensions (fields 16 and up):
tensor dtypes, named inputs and outputs, the legacy KV cache, server-side sessions,
the Generate stream, training backward and checkpoints. See docs/protocol.md.

Only the message classes are needed (compute_pb2.py, generated from
proto/compute.proto); the RPCs are called through the channel directly, so there is no
dependency on compute_pb2_grpc. compute_pb2 is found, in order: on sys.path, in the
folder named by SPLITLEARND_PY_STUBS, in <repo>/build/python, or generated on the fly
with `protoc` into a temporary folder.

    from splitlearn_client import SplitLearnClient
    client = SplitLearnClient("127.0.0.1:50051")
    result = client.compute(torch.randn(1, 10, 768), model_id="gpt2-trunk")
    print(result.output.shape)

Every failure surfaces as grpc.RpcError; `status_code(err)` gives its grpc.StatusCode.
"""
import importlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
import torch

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 100 * MIB  # what split-learning clients have always set
_SERVICE = "/splitlearn.comm.ComputeService/"


# ------------------------------------------------------------------ the messages

def _load_pb2():
    try:
        return importlib.import_module("compute_pb2")
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    candidates = [os.environ.get("SPLITLEARND_PY_STUBS"), os.path.join(repo, "build", "python")]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "compute_pb2.py")):
            sys.path.insert(0, folder)
            return importlib.import_module("compute_pb2")
    proto = os.path.join(repo, "proto", "compute.proto")
    protoc = shutil.which("protoc")
    if protoc and os.path.isfile(proto):
        out = tempfile.mkdtemp(prefix="splitlearn-pb2-")
        subprocess.run([protoc, f"-I{os.path.dirname(proto)}", f"--python_out={out}", proto], check=True)
        sys.path.insert(0, out)
        return importlib.import_module("compute_pb2")
    raise ImportError("compute_pb2 not found: build the project (it writes build/python/compute_pb2.py), "
                      "set SPLITLEARND_PY_STUBS to the folder holding it, or install protoc")


pb = _load_pb2()


# ------------------------------------------------------------------ dtypes and tensors

# name -> (wire enum value, torch dtype)
DTYPES: Dict[str, Tuple[int, torch.dtype]] = {
    "float32": (pb.DTYPE_FLOAT32, torch.float32),
    "float16": (pb.DTYPE_FLOAT16, torch.float16),
    "bfloat16": (pb.DTYPE_BFLOAT16, torch.bfloat16),
    "int64": (pb.DTYPE_INT64, torch.int64),
    "int32": (pb.DTYPE_INT32, torch.int32),
    "bool": (pb.DTYPE_BOOL, torch.bool),
}
_BY_TORCH = {td: (name, wire) for name, (wire, td) in DTYPES.items()}
_BY_WIRE = {wire: td for _, (wire, td) in DTYPES.items()}
_BY_WIRE[pb.DTYPE_UNSPECIFIED] = torch.float32  # legacy: no dtype means float32

TensorLike = Union[torch.Tensor, np.ndarray]
DTypeLike = Union[str, torch.dtype, None]


def wire_dtype(dtype: DTypeLike) -> int:
    """The protocol's enum value for a dtype given by name or as a torch dtype."""
    if dtype is None:
        return pb.DTYPE_UNSPECIFIED
    if isinstance(dtype, torch.dtype):
        if dtype not in _BY_TORCH:
            raise TypeError(f"{dtype} is not a protocol dtype (float32, float16, bfloat16, int64, int32, bool)")
        return _BY_TORCH[dtype][1]
    if dtype not in DTYPES:
        raise TypeError(f"unknown dtype name {dtype!r}; one of {sorted(DTYPES)}")
    return DTYPES[dtype][0]


def torch_dtype(wire: int) -> torch.dtype:
    if wire not in _BY_WIRE:
        raise ValueError(f"unknown wire dtype {wire}")
    return _BY_WIRE[wire]


def as_tensor(x: TensorLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def encode_tensor(x: TensorLike, dtype: DTypeLike = None) -> Tuple[bytes, List[int], int]:
    """(raw little-endian C-order bytes, shape, wire dtype). `dtype` converts first."""
    t = as_tensor(x).detach()
    if dtype is not None:
        t = t.to(DTYPES[dtype][1] if isinstance(dtype, str) else dtype)
    if t.dtype not in _BY_TORCH:
        raise TypeError(f"{t.dtype} cannot be sent; use one of {sorted(DTYPES)}")
    t = t.cpu().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return data, list(t.shape), _BY_TORCH[t.dtype][1]


def decode_tensor(data: bytes, shape: Sequence[int], wire: int = pb.DTYPE_UNSPECIFIED) -> torch.Tensor:
    """A fresh (writable) tensor from the wire form."""
    dt = torch_dtype(wire)
    shape = [int(d) for d in shape]
    if len(data) == 0:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(bytearray(data), dtype=dt).reshape(shape)


def _legacy_dtype(wire: int) -> int:
    # float32 goes without a dtype field, so float32 requests are exactly what a
    # legacy client sends.
    return pb.DTYPE_UNSPECIFIED if wire == pb.DTYPE_FLOAT32 else wire


def encode_kv(cache: Iterable[Tuple[TensorLike, TensorLike]], dtype: DTypeLike = None) -> List["pb.KVCacheEntry"]:
    entries = []
    for key, value in cache:
        kd, ks, kw = encode_tensor(key, dtype)
        vd, vs, vw = encode_tensor(value, dtype)
        if kw != vw:
            raise TypeError("key and value of one cache entry must have the same dtype")
        entries.append(pb.KVCacheEntry(key_data=kd, key_shape=ks, value_data=vd, value_shape=vs,
                                       dtype=_legacy_dtype(kw)))
    return entries


def decode_kv(entries) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    return [(decode_tensor(e.key_data, e.key_shape, e.dtype), decode_tensor(e.value_data, e.value_shape, e.dtype))
            for e in entries]


def status_code(err: BaseException) -> Optional[grpc.StatusCode]:
    """The gRPC status code of an RpcError (None for anything else)."""
    code = getattr(err, "code", None)
    return code() if callable(code) else None


# ------------------------------------------------------------------ results

class Result:
    """One ComputeResponse, decoded."""

    def __init__(self, resp):
        self.response = resp
        self.output = decode_tensor(resp.data, resp.shape, resp.dtype)
        self.dtype = self.output.dtype
        self.outputs = {t.name: decode_tensor(t.data, t.shape, t.dtype) for t in resp.outputs}
        self.present_key_values = decode_kv(resp.present_key_values)
        self.forward_id = resp.forward_id if resp.HasField("forward_id") else None
        self.session_id = resp.session_id or None
        self.session_tokens = resp.session_tokens
        self.compute_time_ms = resp.compute_time_ms if resp.HasField("compute_time_ms") else None
        self.queue_time_ms = resp.queue_time_ms if resp.HasField("queue_time_ms") else None


# ------------------------------------------------------------------ the client

class SplitLearnClient:
    """One channel to one daemon. Thread-safe for unary calls."""

    def __init__(self, address: str, model_id: str = "", timeout: Optional[float] = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, options: Sequence[Tuple[str, object]] = (),
                 credentials: Optional[grpc.ChannelCredentials] = None):
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)] + list(options)
        if credentials is not None:
            self.channel = grpc.secure_channel(address, credentials, options=opts)
        else:
            self.channel = grpc.insecure_channel(address, options=opts)
        self.address = address
        self.model_id = model_id
        self.timeout = timeout
        self._lock = threading.Lock()
        self.bytes_sent = 0      # serialized request bytes, all RPCs
        self.bytes_received = 0  # serialized response bytes, all RPCs
        self.messages_sent = 0

        def unary(method, req_cls, resp_cls):
            return self.channel.unary_unary(_SERVICE + method, request_serializer=self._counting_serializer,
                                            response_deserializer=self._counting_deserializer(resp_cls))

        self._compute = unary("Compute", pb.ComputeRequest, pb.ComputeResponse)
        self._backward = unary("ComputeBackward", pb.BackwardRequest, pb.BackwardResponse)
        self._health = unary("HealthCheck", pb.HealthRequest, pb.HealthResponse)
        self._info = unary("GetServiceInfo", pb.ServiceInfoRequest, pb.ServiceInfoResponse)
        self._open = unary("OpenSession", pb.OpenSessionRequest, pb.OpenSessionResponse)
        self._close = unary("CloseSession", pb.CloseSessionRequest, pb.CloseSessionResponse)
        self._checkpoint = unary("SaveCheckpoint", pb.CheckpointRequest, pb.CheckpointResponse)
        self._generate = self.channel.stream_stream(
            _SERVICE + "Generate", request_serializer=self._counting_serializer,
            response_deserializer=self._counting_deserializer(pb.ComputeResponse))

    # -- byte accounting (what actually goes over the wire, before HTTP/2 framing)

    def _counting_serializer(self, msg) -> bytes:
        data = msg.SerializeToString()
        with self._lock:
            self.bytes_sent += len(data)
            self.messages_sent += 1
        return data

    def _counting_deserializer(self, cls):
        def parse(data: bytes):
            with self._lock:
                self.bytes_received += len(data)
            return cls.FromString(data)
        return parse

    def reset_counters(self):
        with self._lock:
            self.bytes_sent = self.bytes_received = self.messages_sent = 0

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests

    def build_request(self, data: Optional[TensorLike] = None, *, model_id: Optional[str] = None,
                      dtype: DTypeLike = None, output_dtype: DTypeLike = None,
                      inputs: Optional[Dict[str, TensorLike]] = None, training: bool = False,
                      forward_id: Optional[str] = None,
                      past_key_values: Optional[Sequence[Tuple[TensorLike, TensorLike]]] = None,
                      use_cache: Optional[bool] = None, session_id: Optional[str] = None,
                      request_id: Optional[int] = None, metadata: Optional[Dict[str, str]] = None):
        """A ComputeRequest. `data` is the primary (unnamed) input; `dtype` converts it
        before sending; `inputs` are further named inputs (matched to forward() by name)."""
        req = pb.ComputeRequest(model_id=self.model_id if model_id is None else model_id)
        if data is not None:
            raw, shape, wire = encode_tensor(data, dtype)
            req.data = raw
            req.shape.extend(shape)
            req.dtype = _legacy_dtype(wire)
        for name, tensor in (inputs or {}).items():
            raw, shape, wire = encode_tensor(tensor)
            req.inputs.add(name=name, data=raw, shape=shape, dtype=wire)
        if output_dtype is not None:
            req.output_dtype = wire_dtype(output_dtype)
        if training:
            req.training_mode = True
        if forward_id is not None:
            req.forward_id = forward_id
        if past_key_values:
            req.past_key_values.extend(encode_kv(past_key_values))
        if use_cache is not None:
            req.use_cache = use_cache
        if session_id:
            req.session_id = session_id
        if request_id is not None:
            req.request_id = request_id
        for k, v in (metadata or {}).items():
            req.metadata[k] = v
        return req

    def compute(self, data: Optional[TensorLike] = None, *, timeout: Optional[float] = None, **kwargs) -> Result:
        """One forward on the server. Keyword arguments as in build_request."""
        req = self.build_request(data, **kwargs)
        return Result(self._compute(req, timeout=timeout or self.timeout))

    def backward(self, grad_output: TensorLike, forward_id: str, *, model_id: Optional[str] = None,
                 learning_rate: Optional[float] = None, accumulation_step: Optional[int] = None,
                 timeout: Optional[float] = None) -> torch.Tensor:
        """Sends d(loss)/d(output) of a training forward; returns d(loss)/d(input).
        Where the model trains, the server also steps its optimizer."""
        raw, shape, wire = encode_tensor(grad_output)
        req = pb.BackwardRequest(grad_output_data=raw, grad_output_shape=shape, forward_id=forward_id,
                                 model_id=self.model_id if model_id is None else model_id,
                                 dtype=_legacy_dtype(wire))
        if learning_rate is not None:
            req.learning_rate = learning_rate
        if accumulation_step is not None:
            req.accumulation_step = accumulation_step
        resp = self._backward(req, timeout=timeout or self.timeout)
        return decode_tensor(resp.grad_input_data, resp.grad_input_shape, resp.dtype)

    def open_session(self, model_id: Optional[str] = None, session_id: str = "") -> "Session":
        mid = self.model_id if model_id is None else model_id
        resp = self._open(pb.OpenSessionRequest(model_id=mid, session_id=session_id), timeout=self.timeout)
        return Session(self, resp.session_id, resp.model_id or mid, resp.idle_timeout_s)

    def close_session(self, session_id: str, model_id: Optional[str] = None) -> int:
        """Releases a session's cache; returns the bytes it held."""
        mid = self.model_id if model_id is None else model_id
        return self._close(pb.CloseSessionRequest(session_id=session_id, model_id=mid),
                           timeout=self.timeout).bytes_released

    def generate(self, model_id: Optional[str] = None, timeout: Optional[float] = None) -> "GenerateStream":
        """A Generate stream: one step() per message. Use as a context manager."""
        return GenerateStream(self, self.model_id if model_id is None else model_id, timeout or self.timeout)

    def save_checkpoint(self, model_id: Optional[str] = None) -> Tuple[str, int]:
        """(checkpoint path, optimizer steps taken so far)."""
        resp = self._checkpoint(pb.CheckpointRequest(model_id=self.model_id if model_id is None else model_id),
                                timeout=self.timeout)
        return resp.path, resp.optimizer_steps

    def health(self):
        return self._health(pb.HealthRequest(), timeout=self.timeout)

    def service_info(self) -> Dict[str, str]:
        """GetServiceInfo's custom_info map."""
        return dict(self._info(pb.ServiceInfoRequest(), timeout=self.timeout).custom_info)


class Session:
    """A server-side KV cache: each step() sends only the new tokens' hidden states."""

    def __init__(self, client: SplitLearnClient, session_id: str, model_id: str, idle_timeout_s: float):
        self.client = client
        self.id = session_id
        self.model_id = model_id
        self.idle_timeout_s = idle_timeout_s
        self.closed = False

    def step(self, data: TensorLike, **kwargs) -> Result:
        return self.client.compute(data, model_id=self.model_id, session_id=self.id, **kwargs)

    def close(self) -> int:
        if self.closed:
            return 0
        self.closed = True
        return self.client.close_session(self.id, self.model_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        except grpc.RpcError:
            if exc[0] is None:
                raise


class GenerateStream:
    """The Generate RPC as a step-by-step object. The server opens a session for the
    stream on the first message and closes it when the stream ends (close())."""

    _END = object()

    def __init__(self, client: SplitLearnClient, model_id: str, timeout: Optional[float]):
        self.client = client
        self.model_id = model_id
        self.session_id = None
        self._outbox: "queue.Queue" = queue.Queue()
        self._closed = False

        def requests():
            while True:
                item = self._outbox.get()
                if item is self._END:
                    return
                yield item

        self._call = client._generate(requests(), timeout=timeout)

    def step(self, data: TensorLike, **kwargs) -> Result:
        if self._closed:
            raise RuntimeError("the stream is closed")
        self._outbox.put(self.client.build_request(data, model_id=self.model_id, **kwargs))
        result = Result(next(self._call))
        self.session_id = result.session_id or self.session_id
        return result

    def close(self):
        """Ends the stream (the server then closes its session) and waits for the end."""
        if self._closed:
            return
        self._closed = True
        self._outbox.put(self._END)
        for _ in self._call:  # the server has nothing more to say; this waits for its status
            pass

    def cancel(self):
        self._closed = True
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.cancel()
