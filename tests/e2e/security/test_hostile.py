"""Hostile requests against the real daemon: every input limit off by one on both
sides, garbage and truncated protobuf, the message-size limit, and 10k random
mutations of valid requests. After each group the daemon must still be up and a valid
request must succeed; refused requests must not have cost a model run.

The daemon runs with small limits so that the edges are cheap to reach:
server.max_tensor_elements 65536 and server.max_message_bytes 1 MiB. The other limits
are the codec's defaults (daemon/codec.h): rank 8, ids 256 bytes, 64 named inputs,
1024 past_key_values entries, 64 metadata entries of 16384 bytes in all.
"""
import random
import struct
import unittest
import warnings
from concurrent.futures import ThreadPoolExecutor

import secfixture as fx
from secfixture import grpc, pb
from splitlearnd_launcher import DaemonTestCase

MAX_ELEMENTS = 65536
MAX_MESSAGE = 1 * fx.MIB
MAX_ID = 256
INVALID = grpc.StatusCode.INVALID_ARGUMENT
OK = grpc.StatusCode.OK


def floats(n, value=1.0):
    return struct.pack(f"<{n}f", *([value] * n))


class HostileRequests(DaemonTestCase):
    @classmethod
    def make_daemon(cls, workdir):
        files = fx.make_models(workdir)
        models = [fx.model_entry("double", files["double"], default=True),
                  fx.model_entry("trainable", files["linear"], training={"enabled": True, "optimizer": "none"})]
        return fx.Daemon(workdir, models,
                         server={"max_tensor_elements": MAX_ELEMENTS, "max_message_bytes": MAX_MESSAGE})

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.channel, cls.stub = cls.daemon.compute_stub(
            options=[("grpc.max_send_message_length", 4 * fx.MIB), ("grpc.max_receive_message_length", 4 * fx.MIB)])
        cls.addClassCleanup(cls.channel.close)
        # Raw methods: bytes in, bytes out, so that anything can be sent.
        cls.raw_compute = cls.channel.unary_unary("/splitlearn.comm.ComputeService/Compute")
        cls.raw_backward = cls.channel.unary_unary("/splitlearn.comm.ComputeService/ComputeBackward")

    # --- helpers ---

    def compute(self, request):
        return fx.code_of(self.stub.Compute, request)

    def assertCode(self, expected, request, what):
        try:
            self.stub.Compute(request, timeout=30)
            got, details = OK, ""
        except grpc.RpcError as e:
            got, details = e.code(), e.details()
        self.assertEqual(got, expected, f"{what}: {details}")
        if got != OK:
            self.assertTrue(details, f"{what}: refused without a message")
        return details

    def assertServing(self):
        self.assertDaemonAlive()
        reply = self.stub.Compute(fx.float_request([2, 3], 1.5), timeout=30)
        self.assertEqual(list(reply.shape), [2, 3])
        self.assertEqual(struct.unpack("<6f", reply.data), (3.0,) * 6)

    def assertNoRuns(self, requests, what):
        """Each request is refused with INVALID_ARGUMENT and no model runs for it."""
        before = self.daemon.requests_run()
        for i, r in enumerate(requests):
            self.assertCode(INVALID, r, f"{what} #{i}")
        self.assertEqual(self.daemon.requests_run(), before, f"{what}: a refused request reached the model")
        self.assertServing()

    # --- tensor limits ---

    def test_rank(self):
        self.assertCode(OK, fx.float_request([1] * 8), "rank 8")
        self.assertNoRuns([fx.float_request([1] * 9), fx.float_request([1] * 40)], "rank over 8")

    def test_dimensions(self):
        self.assertCode(OK, fx.float_request([1, 1]), "dims of 1")
        # Dimensions of 0 are tensors with no elements (docs/protocol.md): with bytes they
        # are refused; an empty shape is a scalar, which has exactly one element's bytes.
        bad = [pb.ComputeRequest(data=floats(1), shape=[0, 4]),
               pb.ComputeRequest(data=floats(1), shape=[4, 0]),
               pb.ComputeRequest(data=floats(4), shape=[-1, -4]),
               pb.ComputeRequest(data=floats(4), shape=[-2147483648, 4]),
               pb.ComputeRequest(data=floats(4), shape=[]),
               pb.ComputeRequest(data=floats(1)[:2], shape=[])]
        self.assertNoRuns(bad, "dimension below 0 or bytes that do not fit it")

    def test_element_count(self):
        self.assertCode(OK, fx.float_request([1, MAX_ELEMENTS]), "exactly max_tensor_elements")
        self.assertCode(OK, fx.float_request([256, MAX_ELEMENTS // 256]), "max_tensor_elements over two dims")
        bad = [pb.ComputeRequest(data=b"\0" * (MAX_ELEMENTS + 1), shape=[1, MAX_ELEMENTS + 1], dtype=pb.DTYPE_BOOL),
               pb.ComputeRequest(data=b"\0" * (MAX_ELEMENTS + 2), shape=[2, MAX_ELEMENTS // 2 + 1],
                                 dtype=pb.DTYPE_BOOL),
               # Products that overflow 32 and 64 bits must not wrap around to something small.
               pb.ComputeRequest(data=floats(1), shape=[65536, 65536, 65536, 65536]),
               pb.ComputeRequest(data=floats(1), shape=[2147483647] * 8),
               pb.ComputeRequest(data=floats(1), shape=[4294967296 // 65536, 65536, 4294967296 // 65536, 65536])]
        self.assertNoRuns(bad, "too many elements")

    def test_byte_count(self):
        n = 12
        self.assertCode(OK, pb.ComputeRequest(data=floats(n), shape=[3, 4]), "exact bytes")
        bad = [pb.ComputeRequest(data=floats(n) + b"\0", shape=[3, 4]),
               pb.ComputeRequest(data=floats(n)[:-1], shape=[3, 4]),
               pb.ComputeRequest(data=floats(n + 1), shape=[3, 4]),
               pb.ComputeRequest(data=floats(n), shape=[3, 4], dtype=pb.DTYPE_INT64),
               pb.ComputeRequest(data=floats(n), shape=[3, 4], dtype=pb.DTYPE_FLOAT16),
               pb.ComputeRequest(data=b"", shape=[3, 4]),
               pb.ComputeRequest(data=floats(n))]
        self.assertNoRuns(bad, "byte count")

    def test_dtype_values(self):
        bad = [pb.ComputeRequest(data=floats(4), shape=[1, 4], dtype=7),
               pb.ComputeRequest(data=floats(4), shape=[1, 4], dtype=-1),
               pb.ComputeRequest(data=floats(4), shape=[1, 4], output_dtype=99)]
        self.assertNoRuns(bad, "unknown dtype")

    def test_no_tensor(self):
        self.assertNoRuns([pb.ComputeRequest(), pb.ComputeRequest(model_id="double")], "empty request")

    # --- string fields ---

    def test_model_id_length(self):
        # At the limit the id is checked against the models (unknown: NOT_FOUND);
        # one byte more is refused before any lookup.
        self.assertCode(grpc.StatusCode.NOT_FOUND, fx.float_request([1, 4], model_id="m" * MAX_ID), "256-byte id")
        self.assertNoRuns([fx.float_request([1, 4], model_id="m" * (MAX_ID + 1)),
                           fx.float_request([1, 4], model_id="m" * 100000)], "model_id too long")

    def test_session_id_length(self):
        self.assertCode(grpc.StatusCode.NOT_FOUND, fx.float_request([1, 4], session_id="s" * MAX_ID),
                        "256-byte session id")
        self.assertNoRuns([fx.float_request([1, 4], session_id="s" * (MAX_ID + 1))], "session_id too long")
        open_code = fx.code_of(self.stub.OpenSession, pb.OpenSessionRequest(session_id="s" * (MAX_ID + 1)))
        self.assertEqual(open_code, INVALID, "OpenSession with a 257-byte session id")
        close_code = fx.code_of(self.stub.CloseSession, pb.CloseSessionRequest(session_id="s" * (MAX_ID + 1)))
        self.assertEqual(close_code, INVALID, "CloseSession with a 257-byte session id")
        close_code = fx.code_of(self.stub.CloseSession, pb.CloseSessionRequest(session_id="s" * MAX_ID))
        self.assertEqual(close_code, grpc.StatusCode.NOT_FOUND, "CloseSession of an unknown 256-byte session id")

    def test_forward_id_length(self):
        self.assertCode(OK, fx.float_request([1, 4], forward_id="f" * MAX_ID), "256-byte forward id")
        self.assertNoRuns([fx.float_request([1, 4], forward_id="f" * (MAX_ID + 1))], "forward_id too long")

    def test_input_names(self):
        named = pb.NamedTensor(name="x" * (MAX_ID + 1), data=floats(4), shape=[1, 4])
        dup = [pb.NamedTensor(name="x", data=floats(4), shape=[1, 4]),
               pb.NamedTensor(name="x", data=floats(4), shape=[1, 4])]
        self.assertNoRuns([pb.ComputeRequest(inputs=[named]), pb.ComputeRequest(inputs=dup)], "input names")

    def test_input_count(self):
        def with_inputs(n):
            return pb.ComputeRequest(inputs=[pb.NamedTensor(name=f"in{i}", data=floats(1), shape=[1])
                                             for i in range(n)])
        # 64 passes the codec (the model then refuses names it does not take); 65 does not.
        details = self.assertCode(INVALID, with_inputs(65), "65 named inputs")
        self.assertIn("too many", details)
        try:
            self.stub.Compute(with_inputs(64), timeout=30)
            details64 = ""
        except grpc.RpcError as e:
            details64 = e.details() or ""
        self.assertNotIn("too many named inputs", details64)
        self.assertServing()

    def test_metadata(self):
        self.assertCode(OK, fx.float_request([1, 4], metadata={f"k{i:02d}": "v" for i in range(64)}), "64 entries")
        per_entry = 16384 // 4
        at_limit = {f"k{i}": "v" * (per_entry - 2) for i in range(4)}  # 4 × (2 + 4094) = 16384 bytes
        self.assertEqual(sum(len(k) + len(v) for k, v in at_limit.items()), 16384)
        self.assertCode(OK, fx.float_request([1, 4], metadata=at_limit), "16384 metadata bytes")
        over = dict(at_limit)
        over["k0"] += "v"
        self.assertNoRuns([fx.float_request([1, 4], metadata={f"k{i:02d}": "v" for i in range(65)}),
                           fx.float_request([1, 4], metadata=over)], "metadata over the limits")

    # --- KV cache entries ---

    def test_kv_entries(self):
        def kv(key_shape, value_shape, key_bytes=None, value_bytes=None, dtype=pb.DTYPE_FLOAT32):
            def size(s):
                n = 1
                for d in s:
                    n *= d
                return n
            return pb.KVCacheEntry(key_data=floats(size(key_shape)) if key_bytes is None else key_bytes,
                                   key_shape=key_shape,
                                   value_data=floats(size(value_shape)) if value_bytes is None else value_bytes,
                                   value_shape=value_shape, dtype=dtype)

        def req(entries):
            return fx.float_request([1, 1, 8], past_key_values=entries, use_cache=True)

        good = kv([1, 2, 3, 4], [1, 2, 3, 4])
        bad = [req([kv([1, 2, 3], [1, 2, 3])]),                     # rank 3
               req([kv([1, 2, 3, 4], [1, 2, 3, 4, 1])]),            # value rank 5
               req([kv([1, 2, 3, 4], [1, 2, 5, 4])]),               # key and value seq_len differ
               req([kv([1, 2, 3, 4], [2, 2, 3, 4])]),               # key and value batch differ
               req([good, kv([1, 2, 4, 4], [1, 2, 4, 4])]),         # entry 1 differs from entry 0
               req([kv([1, 2, 3, 4], [1, 2, 3, 4], key_bytes=floats(23))]),
               req([kv([1, 2, 3, 4], [1, 2, 3, 4], value_bytes=floats(24) + b"\0")]),
               req([kv([1, 2, 3, 4], [1, 2, 3, 4], dtype=42)]),
               req([kv([1, 2, 3, 0], [1, 2, 3, 0], floats(1), b"")]),  # no elements, 4 bytes
               req([kv([1, 1, 1, 1], [1, 1, 1, 1])] * 1025),        # one entry over the count limit
               fx.float_request([1, 1, 8], past_key_values=[good], session_id="s")]  # session and KV
        self.assertNoRuns(bad, "past_key_values")
        # 1024 consistent entries pass the codec; the model (which takes no cache) may
        # refuse them, but not as "too many".
        try:
            self.stub.Compute(req([kv([1, 1, 1, 1], [1, 1, 1, 1])] * 1024), timeout=30)
            details = ""
        except grpc.RpcError as e:
            details = e.details() or ""
        self.assertNotIn("too many", details)
        self.assertServing()

    # --- backward ---

    def test_backward_fields(self):
        def bw(**fields):
            base = dict(grad_output_data=floats(4), grad_output_shape=[1, 4], forward_id="f", model_id="trainable")
            base.update(fields)
            return pb.BackwardRequest(**base)

        def code(r):
            try:
                self.stub.ComputeBackward(r, timeout=30)
                return OK, ""
            except grpc.RpcError as e:
                return e.code(), e.details()

        before = self.daemon.requests_run()
        for what, r in [("empty forward_id", bw(forward_id="")),
                        ("257-byte forward_id", bw(forward_id="f" * (MAX_ID + 1))),
                        ("257-byte model_id", bw(model_id="m" * (MAX_ID + 1))),
                        ("257-byte model_id, default model", bw(model_id="m" * (MAX_ID + 1), forward_id="")),
                        ("byte count", bw(grad_output_data=floats(3))),
                        ("rank 9", bw(grad_output_shape=[1] * 8 + [4])),
                        ("negative learning rate", bw(learning_rate=-1.0)),
                        ("NaN learning rate", bw(learning_rate=float("nan"))),
                        ("accumulation_step 0", bw(accumulation_step=0))]:
            got, details = code(r)
            self.assertEqual(got, INVALID, f"{what}: {details}")
        self.assertEqual(self.daemon.requests_run(), before)
        # At the limit the forward id is simply unknown (no training forward ran).
        got, details = code(bw(forward_id="f" * MAX_ID))
        self.assertEqual(got, grpc.StatusCode.NOT_FOUND, details)
        # A model without training refuses backward whatever the request holds.
        got, details = code(bw(model_id="double"))
        self.assertEqual(got, grpc.StatusCode.FAILED_PRECONDITION, details)
        self.assertServing()

    # --- raw bytes ---

    # What a call may answer: bytes that do not parse are refused by gRPC itself (the
    # callback API answers UNIMPLEMENTED with no message when it cannot decode a
    # request); bytes that parse reach the service, which refuses them with a message
    # or serves them. A model error (INTERNAL) is never a valid answer here: the
    # models used cannot fail on any input the codec lets through.
    PARSED = {OK, INVALID, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
    UNPARSED = {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL, INVALID}

    def allowed(self, method, data):
        message = pb.ComputeRequest() if method is self.raw_compute else pb.BackwardRequest()
        # Python's protobuf here is libprotobuf underneath, like the daemon's; where it
        # only warns (a stray end-group tag) the C++ parser refuses, so warnings count.
        # Not thread-safe (the warnings filters): call it from the test's own thread.
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                consumed = message.MergeFromString(data)
            except Exception:  # DecodeError
                return self.UNPARSED
        return self.PARSED if consumed == len(data) and not seen else self.UNPARSED

    def raw_code(self, method, data):
        try:
            method(data, timeout=30)
            return OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""

    def test_garbage_protobuf(self):
        rng = random.Random(6)
        samples = [b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05\x01\x02", b"\x80" * 20,
                   b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\x42\x04\x0a\x02\x08"]
        samples += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))) for _ in range(200)]
        for data in samples:
            for method in (self.raw_compute, self.raw_backward):
                got, details = self.raw_code(method, data)
                self.assertIn(got, self.allowed(method, data) - {OK}, f"{data!r}: {details}")
        self.assertServing()

    def test_one_byte_messages(self):
        for b in range(256):
            for method in (self.raw_compute, self.raw_backward):
                got, details = self.raw_code(method, bytes([b]))
                self.assertIn(got, self.allowed(method, bytes([b])) - {OK}, f"byte {b}: {details}")
        # And the empty message: no tensor.
        self.assertEqual(self.raw_code(self.raw_compute, b"")[0], INVALID)
        self.assertServing()

    def test_message_size_limit(self):
        def message_of(total):
            """A ComputeRequest whose serialized size is exactly `total` bytes."""
            body = total - 100
            while True:
                data = pb.ComputeRequest(data=b"\1" * body, shape=[1, body], dtype=pb.DTYPE_BOOL).SerializeToString()
                if len(data) == total:
                    return data
                body += total - len(data)

        at_limit = message_of(MAX_MESSAGE)
        self.assertEqual(len(at_limit), MAX_MESSAGE)
        got, details = self.raw_code(self.raw_compute, at_limit)
        # gRPC lets it through; the codec refuses it (more elements than allowed).
        self.assertEqual(got, INVALID, details)
        over = message_of(MAX_MESSAGE + 1)
        got, details = self.raw_code(self.raw_compute, over)
        self.assertEqual(got, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        got, _ = self.raw_code(self.raw_compute, message_of(3 * fx.MIB))
        self.assertEqual(got, grpc.StatusCode.RESOURCE_EXHAUSTED)
        # The largest valid tensor fits in a message under the limit and is served.
        self.assertCode(OK, fx.float_request([1, MAX_ELEMENTS]), "largest tensor")
        self.assertServing()

    # --- random mutations ---

    def test_random_mutations(self):
        rng = random.Random(1234)
        seeds = [
            (self.raw_compute, fx.float_request([2, 8]).SerializeToString()),
            (self.raw_compute, fx.float_request([1, 3, 4], model_id="double", forward_id="f1",
                                                metadata={"a": "b"}).SerializeToString()),
            (self.raw_compute, pb.ComputeRequest(inputs=[pb.NamedTensor(name="x", data=floats(6), shape=[2, 3])],
                                                 output_dtype=pb.DTYPE_FLOAT16).SerializeToString()),
            (self.raw_compute, fx.float_request([1, 1, 8], use_cache=True, past_key_values=[
                pb.KVCacheEntry(key_data=floats(8), key_shape=[1, 2, 1, 4], value_data=floats(8),
                                value_shape=[1, 2, 1, 4])]).SerializeToString()),
            (self.raw_backward, pb.BackwardRequest(grad_output_data=floats(8), grad_output_shape=[2, 4],
                                                   forward_id="f1", learning_rate=0.1).SerializeToString()),
        ]

        def mutate(data):
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                op = rng.randrange(6)
                if op == 0 and b:      # flip a bit
                    i = rng.randrange(len(b))
                    b[i] ^= 1 << rng.randrange(8)
                elif op == 1 and b:    # replace a byte
                    b[rng.randrange(len(b))] = rng.getrandbits(8)
                elif op == 2:          # insert bytes
                    i = rng.randrange(len(b) + 1)
                    b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
                elif op == 3 and b:    # delete a run
                    i = rng.randrange(len(b))
                    del b[i:i + rng.randint(1, 8)]
                elif op == 4:          # truncate
                    del b[rng.randrange(len(b) + 1):]
                else:                  # duplicate a slice (repeated fields, overrides)
                    i = rng.randrange(len(b) + 1)
                    b[i:i] = b[i:i + rng.randint(1, 32)]
            return bytes(b)

        cases = []
        for _ in range(10000):
            method, seed = rng.choice(seeds)
            cases.append((method, mutate(seed)))

        counts = {}
        unexpected = []

        cases = [(method, data, self.allowed(method, data)) for method, data in cases]

        def one(case):
            method, data, allowed = case
            return data, allowed, self.raw_code(method, data)

        with ThreadPoolExecutor(max_workers=16) as pool:
            for data, allowed, (got, details) in pool.map(one, cases):
                counts[got] = counts.get(got, 0) + 1
                if got not in allowed or (got != OK and allowed is self.PARSED and not details):
                    unexpected.append((got, details, data[:64]))
        print("\nmutation statuses:", {k.name: v for k, v in counts.items()})
        self.assertEqual(sum(counts.values()), 10000)
        self.assertEqual(unexpected[:5], [], f"{len(unexpected)} unexpected statuses")
        self.assertServing()


if __name__ == "__main__":
    unittest.main()
