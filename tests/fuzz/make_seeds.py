"""Writes the seed corpora of tests/fuzz (a few valid and nearly valid inputs).

Run from anywhere with the generated Python stubs on the path:
  PYTHONPATH=BUILD/python /usr/bin/python3 tests/fuzz/make_seeds.py
The first byte of a fuzz_compute_request input picks the message: even for
ComputeRequest, odd for BackwardRequest.
"""
import os
import struct

import compute_pb2 as pb
import management_pb2 as mpb

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def floats(n):
    return struct.pack(f"<{n}f", *([0.5] * n))


def compute_seeds():
    r = pb.ComputeRequest(data=floats(2 * 3 * 4), shape=[2, 3, 4], model_id="trunk")
    write("fuzz_compute_request", "legacy_float32", b"\0" + r.SerializeToString())
    r = pb.ComputeRequest(data=b"\1\0" * 6, shape=[1, 6], dtype=pb.DTYPE_BFLOAT16,
                          output_dtype=pb.DTYPE_FLOAT32, metadata={"client": "seed"})
    write("fuzz_compute_request", "bfloat16_metadata", b"\0" + r.SerializeToString())
    r = pb.ComputeRequest(inputs=[
        pb.NamedTensor(name="input_ids", data=struct.pack("<4q", 1, 2, 3, 4), shape=[1, 4], dtype=pb.DTYPE_INT64),
        pb.NamedTensor(name="attention_mask", data=b"\1" * 4, shape=[1, 4], dtype=pb.DTYPE_BOOL)])
    write("fuzz_compute_request", "named_inputs", b"\0" + r.SerializeToString())
    kv = pb.KVCacheEntry(key_data=floats(16), key_shape=[1, 2, 2, 4], value_data=floats(16),
                         value_shape=[1, 2, 2, 4])
    r = pb.ComputeRequest(data=floats(8), shape=[1, 1, 8], past_key_values=[kv, kv], use_cache=True)
    write("fuzz_compute_request", "kv_cache", b"\0" + r.SerializeToString())
    r = pb.ComputeRequest(data=floats(8), shape=[1, 1, 8], session_id="s-1", forward_id="f")
    write("fuzz_compute_request", "session_step", b"\0" + r.SerializeToString())
    r = pb.ComputeRequest(data=floats(8), shape=[1, 8], training_mode=True, forward_id="f-1")
    write("fuzz_compute_request", "training_forward", b"\0" + r.SerializeToString())
    r = pb.BackwardRequest(grad_output_data=floats(8), grad_output_shape=[1, 8], forward_id="f-1",
                           model_id="trunk", learning_rate=0.01, accumulation_step=2)
    write("fuzz_compute_request", "backward", b"\1" + r.SerializeToString())


def config_seeds():
    write("fuzz_config", "minimal.yaml", b"models:\n  - id: m\n    path: m.pt\n")
    write("fuzz_config", "full.yaml", b"""server:
  cpus: [0, 1]
  listen: "127.0.0.1:0"
  management_listen: "unix:/tmp/x.sock"
  metrics_listen: "127.0.0.1:0"
  max_message_bytes: 1048576
  drain_timeout_s: 5
  watch_config: false
  log_level: debug
  max_tensor_elements: 4096
model_root: .
devices:
  cpu: {intra_op_threads: 2, queue_capacity: 16, max_models: 4, memory_budget_bytes: 1000000, evict_lru: true, cpus: "0-1,3"}
  "cuda:0": {queue_capacity: 8}
models:
  - id: trunk
    path: m.pt
    device: cpu
    default: true
    sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    warmup: {inputs: [{name: x, shape: [1, 4, 8], dtype: float32}], runs: 2}
    batching: {max_batch_size: 8, max_delay_us: 500}
    timeout_ms: 5000
    blas_threads: 1
    compute_dtype: bfloat16
    sessions: {max_sessions: 4, idle_timeout_s: 30, max_bytes: 1000000}
    training: {enabled: true, optimizer: adam, learning_rate: 0.001, momentum: 0.9,
               checkpoint_path: ck.pt, max_graphs: 4, max_graph_bytes: 100000, graph_ttl_s: 60}
  - id: other
    path: ./m.pt
    device: "cuda:0"
    optimize: true
""")
    write("fuzz_config", "bad_key.yaml", b"models:\n  - id: m\n    path: m.pt\n    colour: blue\n")


def management_seeds():
    seeds = {
        "by_path": mpb.LoadModelRequest(path="ok.pt"),
        "with_id": mpb.LoadModelRequest(id="mine", path="sub/deep.pt", device="cpu"),
        "alias": mpb.LoadModelRequest(path="alias.pt", no_wait=True),
        "escape": mpb.LoadModelRequest(path="escape-dir/secret.pt"),
        "dotdot": mpb.LoadModelRequest(path="../secret.pt"),
        "absolute": mpb.LoadModelRequest(path="/etc/passwd"),
        "cuda": mpb.LoadModelRequest(path="ok.pt", device="cuda:1", id="x.y-z_1"),
    }
    for name, msg in seeds.items():
        write("fuzz_management", name, msg.SerializeToString())


if __name__ == "__main__":
    compute_seeds()
    config_seeds()
    management_seeds()
