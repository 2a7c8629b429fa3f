"""The splitlearnd client: torch tensors in and out over gRPC."""
import concurrent.futures
import dataclasses
import random
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
import torch

from . import tensors
from ._proto import compute_pb2 as pb

MIB = 1024 * 1024
_SERVICE = "/splitlearn.comm.ComputeService/"

KV = Tuple[torch.Tensor, torch.Tensor]


class SplitlearndError(Exception):
    """A call that failed: `code` is its grpc.StatusCode, `details` the daemon's message,
    `attempts` how many times it was tried."""

    def __init__(self, code: grpc.StatusCode, details: str, attempts: int = 1):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.attempts = attempts


@dataclasses.dataclass
class RetryPolicy:
    """Retries of UNAVAILABLE and RESOURCE_EXHAUSTED (nothing else is retried).

    Attempt n+1 waits initial_backoff_s * multiplier**(n-1), at most max_backoff_s,
    each wait scaled by a random factor in [1 - jitter, 1 + jitter]. No attempt starts
    past the call's deadline."""
    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based), before jitter."""
        return min(self.max_backoff_s, self.initial_backoff_s * max(1.0, self.multiplier) ** max(0, attempt - 1))


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
NO_RETRY = RetryPolicy(max_attempts=1)


@dataclasses.dataclass
class ClientStats:
    calls: int = 0           # calls made, each counted once however many attempts it took
    retries: int = 0         # attempts beyond the first
    failures: int = 0        # calls that raised SplitlearndError in the end
    latency_sum_s: float = 0.0  # summed wall time of the calls, retries and waits included
    bytes_sent: int = 0      # serialized request messages, every attempt (gRPC and HTTP/2 framing not counted)
    bytes_received: int = 0  # serialized answers


@dataclasses.dataclass
class ComputeResult:
    output: torch.Tensor                       # the primary output
    outputs: Dict[str, torch.Tensor]           # every further output, by name
    present_key_values: List[KV]               # the cache the model returned (use_cache, or a model that always does)
    forward_id: str = ""                       # of a training forward: pass it to backward()
    session_id: str = ""
    session_tokens: int = 0                    # sequence length cached in the session after the step
    request_id: Optional[int] = None
    compute_time_ms: float = 0.0
    queue_time_ms: float = 0.0


@dataclasses.dataclass
class BackwardResult:
    grad_input: torch.Tensor
    forward_id: str
    backward_time_ms: float = 0.0


class Session:
    """A server-side KV-cache session. A context manager: leaving it closes the session."""

    def __init__(self, client: "Client", session_id: str, model_id: str, idle_timeout_s: float):
        self.client = client
        self.session_id = session_id
        self.model_id = model_id
        self.idle_timeout_s = idle_timeout_s
        self.closed = False

    def compute(self, x: torch.Tensor, **kwargs) -> ComputeResult:
        """One step: the session's cache is the past, and the step's present replaces it."""
        return self.client.compute(x, model_id=self.model_id, session_id=self.session_id, **kwargs)

    def close(self) -> int:
        """Closes the session; returns the bytes its cache held."""
        if self.closed:
            return 0
        self.closed = True
        return self.client.close_session(self.session_id, model_id=self.model_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Client:
    """A client of splitlearnd's ComputeService. Thread-safe; a context manager.

        with Client("127.0.0.1:50051") as client:
            y = client.compute(torch.randn(1, 10, 768), model_id="gpt2-trunk").output

    timeout: deadline of each call in seconds, retries included (None: no deadline).
    retry: RetryPolicy for UNAVAILABLE and RESOURCE_EXHAUSTED.
    max_message_bytes: largest message either way (the daemon's default limit is 256 MiB).
    keepalive_time_s: HTTP/2 keepalive pings every so many seconds (None: off).
    reconnect_backoff_s: (initial, max) wait before reconnecting to a lost daemon.
    options: further gRPC channel options, e.g. [("grpc.lb_policy_name", "round_robin")].
    credentials: grpc.ChannelCredentials for TLS (None: plaintext), or instead:
    root_certificates: PEM bytes of the CA that signed the daemon's certificate; turns TLS on.
    certificate_chain, private_key: PEM bytes of a client certificate and its key (mutual TLS).
    tls: True for TLS with the system's trusted CAs (implied by the three above).
    token: sent as "authorization: Bearer <token>" with every call (server.auth).
    """

    def __init__(self, target: str, *, timeout: Optional[float] = 30.0, retry: Optional[RetryPolicy] = None,
                 max_message_bytes: int = 256 * MIB, keepalive_time_s: Optional[float] = None,
                 keepalive_timeout_s: float = 20.0, reconnect_backoff_s: Tuple[float, float] = (0.25, 5.0),
                 options: Sequence[Tuple[str, object]] = (), credentials: Optional[grpc.ChannelCredentials] = None,
                 root_certificates: Optional[bytes] = None, certificate_chain: Optional[bytes] = None,
                 private_key: Optional[bytes] = None, tls: bool = False, token: Optional[str] = None):
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        if tls or root_certificates is not None or certificate_chain is not None:
            if credentials is not None:
                raise ValueError("pass either credentials or root_certificates/certificate_chain/private_key/tls")
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                       certificate_chain=certificate_chain)
        self._metadata = (("authorization", "Bearer " + token),) if token else None
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", int(reconnect_backoff_s[0] * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_backoff_s[1] * 1000)),
        ]
        if keepalive_time_s:
            channel_options += [
                ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        channel_options += list(options)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=channel_options)
        self._methods = {}
        self._stats = ClientStats()
        self._stats_lock = threading.Lock()
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._executor = None
        self._executor_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing

    def _method(self, name, response_class):
        method = self._methods.get(name)
        if method is None:
            method = self.channel.unary_unary(_SERVICE + name, request_serializer=lambda m: m.SerializeToString(),
                                              response_deserializer=response_class.FromString)
            self._methods[name] = method
        return method

    def _call(self, name, request, response_class, timeout, retry):
        """One call under one deadline, with retries; raises SplitlearndError."""
        method = self._method(name, response_class)
        policy = retry or self.retry
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        attempt = 0
        failed = True
        try:
            while True:
                attempt += 1
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                with self._stats_lock:
                    self._stats.bytes_sent += request.ByteSize()
                try:
                    response = method(request, timeout=left, metadata=self._metadata)
                    failed = False
                    with self._stats_lock:
                        self._stats.bytes_received += response.ByteSize()
                    return response
                except grpc.RpcError as e:
                    error = SplitlearndError(e.code(), e.details() or "", attempt)
                if error.code not in RETRYABLE or attempt >= max(1, policy.max_attempts):
                    raise error
                with self._rng_lock:
                    factor = self._rng.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)
                wait = max(0.0, policy.backoff(attempt) * factor)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise error  # no time left for another attempt
                time.sleep(wait)
                with self._stats_lock:
                    self._stats.retries += 1
        finally:
            with self._stats_lock:
                self._stats.calls += 1
                self._stats.failures += int(failed)
                self._stats.latency_sum_s += time.monotonic() - started

    # ------------------------------------------------------------ calls

    @staticmethod
    def _int8_encode(t, block: int):
        """(codes, shape, scales) when `t` should go int8 blockwise, else None."""
        if block <= 0 or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return None
        try:
            return tensors.encode_int8_blockwise(t, block)
        except ValueError:  # NaN or infinity: only plain bytes carry them
            return None

    @classmethod
    def _add_named(cls, entries, name: str, t, int8_block: int):
        """Appends `t` to a repeated NamedTensor field, int8 blockwise where it can go so."""
        q = cls._int8_encode(t, int8_block)
        if q is not None:
            entry = entries.add(name=name, data=q[0], shape=q[1])
            entry.int8_blockwise.block_size = int8_block
            entry.int8_blockwise.scales.extend(q[2])
            return
        d, s, c = tensors.encode(t)
        entries.add(name=name, data=d, shape=s, dtype=c)

    def compute(self, x: torch.Tensor, model_id: str = "", *, inputs: Optional[Dict[str, torch.Tensor]] = None,
                output_dtype: Optional[torch.dtype] = None, past_key_values: Optional[Sequence[KV]] = None,
                use_cache: bool = False, session_id: str = "", training: bool = False,
                forward_id: Optional[str] = None, request_id: Optional[int] = None,
                metadata: Optional[Dict[str, str]] = None, int8_block: int = 0, timeout: Optional[float] = None,
                retry: Optional[RetryPolicy] = None) -> ComputeResult:
        """One forward of `model_id` (empty: the daemon's default model) on `x`.

        int8_block > 0: floating inputs (x, `inputs`, the cache) go int8 blockwise in
        blocks of this many values (a tensor holding NaN or infinity goes plain), and
        float32 outputs and a returned cache come back that way: a quarter of float32's
        bytes, each value within half a quantisation step of its block
        (docs/protocol.md); they decode to float32.

        inputs: further inputs by forward() argument name. output_dtype: the answer's
        dtype (default: x's). past_key_values + use_cache: the legacy KV cache, one
        (key, value) pair per layer, shapes [batch, heads, seq, head_dim]. session_id: a
        server-side session (see open_session). training: keep the autograd graph for
        backward(); the result's forward_id names it. request_id: echoed back, and
        shown in the daemon's debug log lines about this request."""
        req = pb.ComputeRequest(model_id=model_id)
        if int8_block < 0:
            raise ValueError("int8_block must not be negative")
        q = self._int8_encode(x, int8_block)
        if q is not None:
            req.data, shape, req.data_int8_blockwise.block_size = q[0], q[1], int8_block
            req.data_int8_blockwise.scales.extend(q[2])
            req.shape.extend(shape)
        else:
            data, shape, code = tensors.encode(x)
            req.data = data
            req.shape.extend(shape)
            if code != tensors.DTYPE_FLOAT32:
                req.dtype = code  # float32 stays unspecified, as legacy clients send it
        if int8_block:
            req.output_encoding = pb.OUTPUT_ENCODING_INT8_BLOCKWISE
            req.output_block_size = int8_block
        if output_dtype is not None:
            req.output_dtype = tensors.dtype_code(output_dtype)
        for name, t in (inputs or {}).items():
            self._add_named(req.inputs, name, t, int8_block)
        for key, value in past_key_values or ():
            kd, ks, kc = tensors.encode(key)
            vd, vs, vc = tensors.encode(value)
            if kc != vc:
                raise TypeError("a cache entry's key and value must have the same dtype")
            kq, vq = self._int8_encode(key, int8_block), self._int8_encode(value, int8_block)
            if kq is not None and vq is not None:  # both or neither: the entry has one dtype
                entry = req.past_key_values.add(key_data=kq[0], key_shape=ks, value_data=vq[0], value_shape=vs)
                entry.key_int8_blockwise.block_size = entry.value_int8_blockwise.block_size = int8_block
                entry.key_int8_blockwise.scales.extend(kq[2])
                entry.value_int8_blockwise.scales.extend(vq[2])
                continue
            entry = req.past_key_values.add(key_data=kd, key_shape=ks, value_data=vd, value_shape=vs)
            if kc != tensors.DTYPE_FLOAT32:
                entry.dtype = kc
        if use_cache:
            req.use_cache = True
        if session_id:
            req.session_id = session_id
        if training:
            req.training_mode = True
        if forward_id:
            req.forward_id = forward_id
        if request_id is not None:
            req.request_id = request_id
        for k, v in (metadata or {}).items():
            req.metadata[k] = v

        resp = self._call("Compute", req, pb.ComputeResponse, timeout, retry)
        def decode(data, shape, code, q):
            if q is not None:
                return tensors.decode_int8_blockwise(data, shape, q.scales, q.block_size)
            return tensors.decode(data, shape, code)

        return ComputeResult(
            output=decode(resp.data, resp.shape, resp.dtype,
                          resp.data_int8_blockwise if resp.HasField("data_int8_blockwise") else None),
            outputs={o.name: decode(o.data, o.shape, o.dtype, o.int8_blockwise if o.HasField("int8_blockwise") else None)
                     for o in resp.outputs},
            present_key_values=[
                (decode(e.key_data, e.key_shape, e.dtype,
                        e.key_int8_blockwise if e.HasField("key_int8_blockwise") else None),
                 decode(e.value_data, e.value_shape, e.dtype,
                        e.value_int8_blockwise if e.HasField("value_int8_blockwise") else None))
                for e in resp.present_key_values],
            forward_id=resp.forward_id,
            session_id=resp.session_id,
            session_tokens=resp.session_tokens,
            request_id=resp.request_id if resp.HasField("request_id") else None,
            compute_time_ms=resp.compute_time_ms,
            queue_time_ms=resp.queue_time_ms,
        )

    def open_session(self, model_id: str = "", session_id: str = "", *, timeout: Optional[float] = None,
                     retry: Optional[RetryPolicy] = None) -> Session:
        """Opens a server-side KV-cache session (the daemon names it unless session_id
        is given). Use it as a context manager, or close() it."""
        resp = self._call("OpenSession", pb.OpenSessionRequest(model_id=model_id, session_id=session_id),
                          pb.OpenSessionResponse, timeout, retry)
        return Session(self, resp.session_id, resp.model_id or model_id, resp.idle_timeout_s)

    def close_session(self, session_id: str, model_id: str = "", *, timeout: Optional[float] = None,
                      retry: Optional[RetryPolicy] = None) -> int:
        """Closes a session; returns the bytes its cache held."""
        resp = self._call("CloseSession", pb.CloseSessionRequest(session_id=session_id, model_id=model_id),
                          pb.CloseSessionResponse, timeout, retry)
        return resp.bytes_released

    def backward(self, grad_output: torch.Tensor, forward_id: str, model_id: str = "", *,
                 grad_outputs: Optional[Dict[str, torch.Tensor]] = None, learning_rate: Optional[float] = None,
                 int8_block: int = 0, timeout: Optional[float] = None,
                 retry: Optional[RetryPolicy] = None) -> BackwardResult:
        """The gradient of the input of training forward `forward_id`, given the gradient
        of its output. Where the model trains, the daemon also takes an optimizer step.

        grad_outputs: gradients of further outputs of that forward, by the names its
        answer gave them (ComputeResult.outputs); they flow back together with
        grad_output. int8_block > 0: the gradients go int8 blockwise and a float32
        grad_input comes back so, as in compute()."""
        if int8_block < 0:
            raise ValueError("int8_block must not be negative")
        req = pb.BackwardRequest(forward_id=forward_id)
        q = self._int8_encode(grad_output, int8_block)
        if q is not None:
            req.grad_output_data, shape = q[0], q[1]
            req.grad_output_int8_blockwise.block_size = int8_block
            req.grad_output_int8_blockwise.scales.extend(q[2])
        else:
            data, shape, code = tensors.encode(grad_output)
            req.grad_output_data = data
            if code != tensors.DTYPE_FLOAT32:
                req.dtype = code
        req.grad_output_shape.extend(shape)
        for name, t in (grad_outputs or {}).items():
            self._add_named(req.grad_outputs, name, t, int8_block)
        if int8_block:
            req.output_encoding = pb.OUTPUT_ENCODING_INT8_BLOCKWISE
            req.output_block_size = int8_block
        if model_id:
            req.model_id = model_id
        if learning_rate is not None:
            req.learning_rate = learning_rate
        resp = self._call("ComputeBackward", req, pb.BackwardResponse, timeout, retry)
        if resp.HasField("grad_input_int8_blockwise"):
            q = resp.grad_input_int8_blockwise
            grad_input = tensors.decode_int8_blockwise(resp.grad_input_data, resp.grad_input_shape, q.scales,
                                                       q.block_size)
        else:
            grad_input = tensors.decode(resp.grad_input_data, resp.grad_input_shape, resp.dtype)
        return BackwardResult(grad_input=grad_input, forward_id=resp.forward_id,
                              backward_time_ms=resp.backward_time_ms)

    # ------------------------------------------------------------ calls in the background

    def _submit(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        with self._executor_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=32,
                                                                       thread_name_prefix="splitlearnd-client")
            return self._executor.submit(fn, *args, **kwargs)

    def compute_async(self, x: torch.Tensor, model_id: str = "", **kwargs) -> concurrent.futures.Future:
        """compute() on a background thread: a Future of its ComputeResult (or its
        SplitlearndError). Several may be in flight, e.g. training micro-batches."""
        return self._submit(self.compute, x, model_id, **kwargs)

    def backward_async(self, grad_output: torch.Tensor, forward_id: str, model_id: str = "",
                       **kwargs) -> concurrent.futures.Future:
        """backward() on a background thread: a Future of its BackwardResult."""
        return self._submit(self.backward, grad_output, forward_id, model_id, **kwargs)

    def health(self, *, timeout: Optional[float] = None, retry: Optional[RetryPolicy] = None):
        """The legacy HealthCheck: a HealthResponse (status "ok" while serving, "unhealthy" otherwise; the message says which and why)."""
        return self._call("HealthCheck", pb.HealthRequest(), pb.HealthResponse, timeout, retry)

    def info(self, *, timeout: Optional[float] = None, retry: Optional[RetryPolicy] = None):
        """GetServiceInfo: a ServiceInfoResponse."""
        return self._call("GetServiceInfo", pb.ServiceInfoRequest(), pb.ServiceInfoResponse, timeout, retry)

    # ------------------------------------------------------------ statistics and lifetime

    @property
    def stats(self) -> ClientStats:
        """A copy of the counters since construction or reset_stats()."""
        with self._stats_lock:
            return dataclasses.replace(self._stats)

    def reset_stats(self):
        with self._stats_lock:
            self._stats = ClientStats()

    def close(self):
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
