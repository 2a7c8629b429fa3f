"""A client that knows only the legacy wire contract (shared WIRE.md, fields 1-15).

The message types are built here from that table alone, in a private descriptor pool,
instead of from the project's proto/compute.proto: this is what an unmodified client
of the old Python server has compiled in. Fields the daemon adds (16 and up) reach it
as unknown fields and are ignored, exactly as they would be by such a client.
"""
import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

MIB = 1024 * 1024
# What legacy split-learning clients configure on their channels.
LEGACY_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 100 * MIB),
    ("grpc.max_receive_message_length", 100 * MIB),
]

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "splitlearn.comm"

# (number, name, type, repeated, proto3 optional, message type name)
_BYTES, _STRING, _INT32, _INT64 = _F.TYPE_BYTES, _F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_INT64
_FLOAT, _DOUBLE, _BOOL, _MSG = _F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_BOOL, _F.TYPE_MESSAGE

_MESSAGES = {
    "KVCacheEntry": [
        (1, "key_data", _BYTES, False, False, None),
        (2, "key_shape", _INT32, True, False, None),
        (3, "value_data", _BYTES, False, False, None),
        (4, "value_shape", _INT32, True, False, None),
    ],
    "ComputeRequest": [
        (1, "data", _BYTES, False, False, None),
        (2, "shape", _INT32, True, False, None),
        (3, "request_id", _INT32, False, True, None),
        (4, "metadata", "map", True, False, None),
        (5, "model_id", _STRING, False, False, None),
        (6, "forward_id", _STRING, False, True, None),
        (7, "training_mode", _BOOL, False, True, None),
        (8, "past_key_values", _MSG, True, False, "KVCacheEntry"),
        (9, "use_cache", _BOOL, False, True, None),
    ],
    "MonitoringSnapshot": [
        (1, "timestamp", _DOUBLE, False, False, None),
        (2, "cpu_percent", _FLOAT, False, False, None),
        (3, "memory_mb", _FLOAT, False, False, None),
        (4, "memory_percent", _FLOAT, False, False, None),
        (5, "gpu_available", _BOOL, False, False, None),
        (6, "gpu_utilization", _FLOAT, False, True, None),
        (7, "gpu_memory_used_mb", _FLOAT, False, True, None),
        (8, "gpu_memory_total_mb", _FLOAT, False, True, None),
    ],
    "ComputeResponse": [
        (1, "data", _BYTES, False, False, None),
        (2, "shape", _INT32, True, False, None),
        (3, "request_id", _INT32, False, True, None),
        (4, "compute_time_ms", _FLOAT, False, True, None),
        (5, "monitoring_data", _MSG, False, True, "MonitoringSnapshot"),
        (6, "forward_id", _STRING, False, True, None),
        (7, "present_key_values", _MSG, True, False, "KVCacheEntry"),
    ],
    "HealthRequest": [],
    "HealthResponse": [
        (1, "status", _STRING, False, False, None),
        (2, "message", _STRING, False, False, None),
        (3, "version", _STRING, False, False, None),
        (4, "uptime_seconds", _FLOAT, False, True, None),
    ],
    "ServiceInfoRequest": [],
    "ServiceInfoResponse": [
        (1, "service_name", _STRING, False, False, None),
        (2, "version", _STRING, False, False, None),
        (3, "device", _STRING, False, False, None),
        (4, "uptime_seconds", _FLOAT, False, True, None),
        (5, "total_requests", _INT64, False, False, None),
        (6, "custom_info", "map", True, False, None),
    ],
}


def _build_file():
    fdp = descriptor_pb2.FileDescriptorProto(name="legacy_compute.proto", package=_PACKAGE, syntax="proto3")
    for msg_name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=msg_name)
        for number, name, ftype, repeated, optional, type_name in fields:
            field = msg.field.add(name=name, number=number, json_name=name)
            field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if ftype == "map":  # map<string, string>: a nested entry type
                entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
                entry = msg.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL, json_name="key")
                entry.field.add(name="value", number=2, type=_STRING, label=_F.LABEL_OPTIONAL, json_name="value")
                field.type = _MSG
                field.type_name = f".{_PACKAGE}.{msg_name}.{entry_name}"
                continue
            field.type = ftype
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if optional:  # proto3 `optional`: a synthetic one-field oneof
                field.proto3_optional = True
                field.oneof_index = len(msg.oneof_decl)
                msg.oneof_decl.add(name="_" + name)
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def _message_class(name):
    desc = _POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(_POOL).GetPrototype(desc)


ComputeRequest = _message_class("ComputeRequest")
ComputeResponse = _message_class("ComputeResponse")
HealthRequest = _message_class("HealthRequest")
HealthResponse = _message_class("HealthResponse")
ServiceInfoRequest = _message_class("ServiceInfoRequest")
ServiceInfoResponse = _message_class("ServiceInfoResponse")


class LegacyClient:
    """What an existing split-learning client does: float32 bytes and a shape in,
    float32 bytes and a shape out."""

    def __init__(self, address):
        self.channel = grpc.insecure_channel(address, options=LEGACY_CHANNEL_OPTIONS)

        def method(name, req, resp):
            return self.channel.unary_unary(f"/{_PACKAGE}.ComputeService/{name}",
                                            request_serializer=req.SerializeToString,
                                            response_deserializer=resp.FromString)

        self._compute = method("Compute", ComputeRequest, ComputeResponse)
        self._health = method("HealthCheck", HealthRequest, HealthResponse)
        self._info = method("GetServiceInfo", ServiceInfoRequest, ServiceInfoResponse)

    def close(self):
        self.channel.close()

    def compute_raw(self, array, model_id=None, request_id=None, timeout=60):
        array = np.ascontiguousarray(array, dtype=np.float32)
        req = ComputeRequest(data=array.tobytes(), shape=list(array.shape))
        if model_id is not None:
            req.model_id = model_id
        if request_id is not None:
            req.request_id = request_id
        return self._compute(req, timeout=timeout)

    def compute(self, array, model_id=None, request_id=None, timeout=60):
        resp = self.compute_raw(array, model_id, request_id, timeout)
        return decode_float32(resp), resp

    def health(self, timeout=30):
        return self._health(HealthRequest(), timeout=timeout)

    def info(self, timeout=30):
        return self._info(ServiceInfoRequest(), timeout=timeout)


def decode_float32(resp):
    """The legacy client's decoding: every `data` is float32 of `shape`."""
    return np.frombuffer(resp.data, dtype=np.float32).reshape(tuple(resp.shape))
