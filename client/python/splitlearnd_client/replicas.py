"""Several splitlearnd replicas from one Python client.

Stateless calls (Compute without a session, GetServiceInfo, ...) go through one gRPC channel that spreads them over every replica with gRPC's own
`round_robin` policy and client-side health checking (grpc.health.v1): a replica whose
health is not SERVING, because it is still warming up, draining after SIGTERM, or has
unloaded the model, gets no new calls from that channel.

    from splitlearnd_client.replicas import ReplicaSet

    replicas = ReplicaSet(["10.0.0.5:50051", "10.0.0.6:50051"])   # or ["splitlearnd.ns.svc:50051"]
    stub_channel = replicas.channel            # round_robin over the healthy replicas
    session = replicas.open_session("trunk")   # pinned to one replica
    response = session.compute(request)        # always sent to that replica
    session.close()

Server-side state lives in one replica only: a session's KV cache, and a training
forward waiting for its backward. Such calls must not be balanced. `open_session`
opens the session on one healthy replica and the returned PinnedSession sends every
step there over a channel of its own. When that replica is gone (restarted, drained,
unreachable) or no longer knows the session, a step raises SessionLostError naming the
session and the replica instead of silently going elsewhere, where the cache is not.

This module needs only grpcio and the classes generated from proto/compute.proto; it
does not depend on the rest of the package.
"""
import ipaddress
import itertools
import json
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

try:
    from ._proto import load_compute_pb2 as _load_compute_pb2
except ImportError:  # loaded as a plain file, not as part of the package
    def _load_compute_pb2():
        import compute_pb2  # noqa: F401  (from SPLITLEARND_PY_STUBS on sys.path)
        return compute_pb2

COMPUTE_SERVICE = "splitlearn.comm.ComputeService"
MIB = 1024 * 1024

# grpc.health.v1.HealthCheckResponse.ServingStatus
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {UNKNOWN: "UNKNOWN", SERVING: "SERVING", NOT_SERVING: "NOT_SERVING", SERVICE_UNKNOWN: "SERVICE_UNKNOWN"}


def model_health_name(model_id: str) -> str:
    """The grpc.health.v1 service name under which splitlearnd reports one model."""
    return "splitlearn.model/" + model_id


# ----------------------------------------------------------------- targets and config

def _split_host_port(endpoint: str) -> Tuple[str, str]:
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
        if not sep:
            raise ValueError(f"endpoint {endpoint!r}: expected [ipv6]:port")
        return host, port
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {endpoint!r}: expected host:port")
    return host, port


def balanced_target(endpoints: Union[str, Sequence[str]]) -> str:
    """A gRPC target naming every replica.

    A list of IP literals becomes gRPC's multi-address form ("ipv4:a:p,b:q" or
    "ipv6:[a]:p,[b]:q"); one host name becomes "dns:///name:port", whose every address
    record is a replica (a Kubernetes headless Service works this way). A string that
    already has a scheme ("dns:", "ipv4:", "ipv6:", "unix:") is returned as it is.
    """
    if isinstance(endpoints, str):
        if ":" in endpoints.split("/")[0] and endpoints.split(":")[0] in ("dns", "ipv4", "ipv6", "unix"):
            return endpoints
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    endpoints = list(endpoints)
    if not endpoints:
        raise ValueError("no endpoints")
    families = set()
    for e in endpoints:
        host, port = _split_host_port(e)
        if not port.isdigit():
            raise ValueError(f"endpoint {e!r}: the port must be a number")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            families.add("name")
    if families == {"name"}:
        if len(endpoints) != 1:
            raise ValueError("give one DNS name (all its addresses are used) or a list of IP addresses, "
                             f"not several names: {endpoints}")
        return "dns:///" + endpoints[0]
    if len(families) != 1:
        raise ValueError(f"endpoints mix IPv4, IPv6 and names; gRPC takes one kind per channel: {endpoints}")
    return ("ipv4:" if families == {4} else "ipv6:") + ",".join(endpoints)


def service_config(health_service: str = "", retry_unavailable: bool = True, max_attempts: int = 4) -> dict:
    """round_robin with client-side health checking of `health_service` ("" = the whole
    daemon, model_health_name(id) = one model); optionally gRPC's own retries of calls
    that fail with UNAVAILABLE (a replica that started draining the moment the call was
    sent), which gRPC sends to another replica."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": health_service},
    }
    if retry_unavailable:
        config["methodConfig"] = [{
            "name": [{"service": COMPUTE_SERVICE}],
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    return config


def channel_options(extra: Iterable[Tuple[str, object]] = ()) -> List[Tuple[str, object]]:
    """Message limits as splitlearnd's and quick reconnects: a replica that restarts is
    back in rotation within a second or two of turning SERVING, not after gRPC's default
    backoff of up to two minutes."""
    options = {
        "grpc.max_send_message_length": 256 * MIB,
        "grpc.max_receive_message_length": 256 * MIB,
        "grpc.initial_reconnect_backoff_ms": 200,
        "grpc.min_reconnect_backoff_ms": 200,
        "grpc.max_reconnect_backoff_ms": 2000,
        "grpc.enable_retries": 1,
    }
    options.update(dict(extra))
    return list(options.items())


def balanced_channel(endpoints: Union[str, Sequence[str]], health_service: str = "", *,
                     retry_unavailable: bool = True, options: Iterable[Tuple[str, object]] = (),
                     credentials: Optional[grpc.ChannelCredentials] = None) -> grpc.Channel:
    """One channel over every replica: round_robin among those whose health is SERVING.
    `credentials`: TLS (grpc.ssl_channel_credentials(...)); None: plaintext."""
    config = json.dumps(service_config(health_service, retry_unavailable))
    target = balanced_target(endpoints)
    options = channel_options(list(options) + [("grpc.service_config", config)])
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


# ----------------------------------------------------------------- grpc.health.v1 by hand
# HealthCheckRequest {string service = 1}; HealthCheckResponse {ServingStatus status = 1}.
# Encoded here so that no health stubs are needed.

def _encode_health_request(service: str) -> bytes:
    raw = service.encode()
    if not raw:
        return b""
    length, out = len(raw), bytearray(b"\x0a")
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(out) + raw


def _decode_health_response(data: bytes) -> int:
    i, status = 0, UNKNOWN
    while i < len(data):
        key = data[i]
        i += 1
        if key & 7 != 0:  # only varints are expected; stop at anything else
            break
        value, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if key >> 3 == 1:
            status = value
    return status


def health_check(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> int:
    """grpc.health.v1.Health/Check; SERVICE_UNKNOWN when the daemon does not know the name."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=_encode_health_request,
                                response_deserializer=_decode_health_response)
    try:
        return check(service, timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return SERVICE_UNKNOWN
        raise


def health_watch(channel: grpc.Channel, service: str = "", timeout: Optional[float] = None,
                 wait_for_ready: bool = False):
    """grpc.health.v1.Health/Watch: a call that yields each status as the daemon changes
    it. Cancel it (call.cancel()) to stop."""
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=_encode_health_request,
                                 response_deserializer=_decode_health_response)
    return watch(service, timeout=timeout, wait_for_ready=wait_for_ready)


# ----------------------------------------------------------------- sessions pinned to a replica

class SessionLostError(Exception):
    """The replica that holds a session is gone or no longer knows the session."""

    def __init__(self, session_id: str, model_id: str, endpoint: str, code: grpc.StatusCode, details: str):
        self.session_id = session_id
        self.model_id = model_id
        self.endpoint = endpoint
        self.code = code
        self.details = details
        if code == grpc.StatusCode.NOT_FOUND:
            why = "which no longer knows it (the replica restarted, or the session expired or was closed)"
        else:
            why = "which is gone, draining or unreachable"
        super().__init__(f"session {session_id!r} of model {model_id!r} is lost: it lived on replica {endpoint}, "
                         f"{why} ({code.name}: {details}); its KV cache cannot be recovered elsewhere, "
                         f"open a new session")


class NoReplicaError(Exception):
    """No replica is SERVING the model a session was asked for."""


class PinnedSession:
    """A server-side session and the one replica that holds it."""

    def __init__(self, replicas: "ReplicaSet", endpoint: str, session_id: str, model_id: str, idle_timeout_s: float):
        self.replicas = replicas
        self.endpoint = endpoint
        self.id = session_id
        self.model_id = model_id
        self.idle_timeout_s = idle_timeout_s
        self.closed = False

    def _call(self, method: str, request, response_class, timeout: float):
        fn = self.replicas.endpoint_channel(self.endpoint).unary_unary(
            f"/{COMPUTE_SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString)
        try:
            # No wait_for_ready and no retries: a step must not wait for, or land on, a
            # replica that came back without the session.
            return fn(request, timeout=timeout, metadata=self.replicas.metadata)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                raise SessionLostError(self.id, self.model_id, self.endpoint, e.code(), e.details()) from None
            raise

    def compute(self, request, timeout: float = 30.0):
        """One step: `request` is a compute_pb2.ComputeRequest; its session_id and model_id
        are filled in. Returns the ComputeResponse."""
        pb = self.replicas.pb
        req = pb.ComputeRequest()
        req.CopyFrom(request)
        req.session_id = self.id
        req.model_id = self.model_id
        return self._call("Compute", req, pb.ComputeResponse, timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Frees the session's cache on its replica; returns the bytes it held."""
        if self.closed:
            return 0
        self.closed = True
        pb = self.replicas.pb
        resp = self._call("CloseSession", pb.CloseSessionRequest(session_id=self.id, model_id=self.model_id),
                          pb.CloseSessionResponse, timeout)
        return resp.bytes_released

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        except SessionLostError:
            pass


class ReplicaSet:
    """Every replica of one deployment: a balanced channel for stateless calls and
    per-replica channels for sessions.

    `endpoints`: "host:port" strings (IP literals), or a single DNS name whose address
    records are the replicas. Sessions need to address one replica, so they are only
    offered for a list of endpoints.

    `credentials` (grpc.ChannelCredentials) turns TLS on for every channel; `token` goes
    with the sessions' calls as "authorization: Bearer <token>" (a Client on
    `channel` sends its own)."""

    def __init__(self, endpoints: Union[str, Sequence[str]], health_service: str = "", *,
                 retry_unavailable: bool = True, options: Iterable[Tuple[str, object]] = (),
                 credentials: Optional[grpc.ChannelCredentials] = None, token: Optional[str] = None):
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self.endpoints = list(endpoints)
        self._options = list(options)
        self._credentials = credentials
        self.metadata = (("authorization", "Bearer " + token),) if token else None
        self.channel = balanced_channel(self.endpoints, health_service, retry_unavailable=retry_unavailable,
                                        options=self._options, credentials=credentials)
        self._channels: Dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._next = itertools.count()
        self.pb = _load_compute_pb2()

    def endpoint_channel(self, endpoint: str) -> grpc.Channel:
        """A plain channel to one replica (pick_first, no balancing)."""
        with self._lock:
            channel = self._channels.get(endpoint)
            if channel is None:
                if self._credentials is None:
                    channel = grpc.insecure_channel(endpoint, options=channel_options(self._options))
                else:
                    channel = grpc.secure_channel(endpoint, self._credentials, options=channel_options(self._options))
                self._channels[endpoint] = channel
            return channel

    def healthy_endpoints(self, model_id: str = "", timeout: float = 2.0) -> List[str]:
        """The replicas that report SERVING for `model_id` ("" = the daemon as a whole),
        starting at a different replica each call so that sessions spread out."""
        service = model_health_name(model_id) if model_id else ""
        start = next(self._next) % len(self.endpoints)
        order = self.endpoints[start:] + self.endpoints[:start]
        healthy = []
        for endpoint in order:
            try:
                if health_check(self.endpoint_channel(endpoint), service, timeout) == SERVING:
                    healthy.append(endpoint)
            except grpc.RpcError:
                pass
        return healthy

    def open_session(self, model_id: str, session_id: str = "", timeout: float = 10.0) -> PinnedSession:
        """Opens a session on one healthy replica and pins it there."""
        pb = self.pb
        errors = []
        for endpoint in self.healthy_endpoints(model_id):
            fn = self.endpoint_channel(endpoint).unary_unary(
                f"/{COMPUTE_SERVICE}/OpenSession", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.OpenSessionResponse.FromString)
            try:
                resp = fn(pb.OpenSessionRequest(model_id=model_id, session_id=session_id), timeout=timeout,
                          metadata=self.metadata)
            except grpc.RpcError as e:
                # Nothing was created where the call failed with UNAVAILABLE (draining);
                # another replica may take it.
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                errors.append(f"{endpoint}: {e.details()}")
                continue
            return PinnedSession(self, endpoint, resp.session_id, resp.model_id or model_id, resp.idle_timeout_s)
        raise NoReplicaError(
            f"no replica can open a session of model {model_id!r}: none of {self.endpoints} is SERVING it"
            + (f" ({'; '.join(errors)})" if errors else ""))

    def close(self):
        self.channel.close()
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def watch_statuses(call) -> Iterator[int]:
    """The statuses of a health_watch() call until it ends or is cancelled."""
    try:
        for status in call:
            yield status
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            raise
