#!/usr/bin/env python3
"""Soak test: mixed load against the real splitlearnd for DURATION seconds.

16 client threads (--clients) each loop over a mix of valid Compute calls (a sample
checked against the same TorchScript file run here with torch), invalid ones (each with
the one status it must get), cancellations (short deadlines, cancelled futures and
streams), server-side sessions and Generate streams, and health/management calls. Every
30 s (--reload-every) the main thread edits the config (toggles the batching of one
model, adds or removes a secondary model, makes a third load a new version) and reloads
it, alternately by SIGHUP and by the ReloadConfig management call. Every 5 s the
daemon's VmRSS is read from /proc/<pid>/status.

It fails (exit 1) on any unexpected status, any wrong answer, a failed reload, the
daemon dying or not stopping cleanly on SIGTERM, or resident memory growth of 5% or more
from the sample at 60 s to the end of the load. Growth is only judged on runs of at
least 120 s (a shorter run, as in the ctest `soak_short`, reports it without judging:
the criterion starts after the first minute).

The models are written at test time with python3-torch and random weights (by
tests/support/torch_models.py and replica_models.py); the daemon is started and stopped
by tests/support/splitlearnd_launcher.py.

    soak.py --bin build/daemon/splitlearnd --stubs build/python [--duration 600] [--json out.json]

SPLITLEARND_BIN and SPLITLEARND_PY_STUBS (what ctest sets) stand in for --bin and --stubs.
"""
import argparse
import collections
import copy
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)

RSS_LIMIT_PERCENT = 5.0     # the criterion: growth after the first minute under 5%
RSS_BASELINE_S = 60.0
RSS_JUDGED_FROM_S = 120.0   # shortest run on which the growth is judged
VALID_TIMEOUT_S = 60.0      # deadline of every call that is expected to succeed


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--reload-every", type=float, default=30.0)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--bin", default=os.environ.get("SPLITLEARND_BIN"), help="the splitlearnd binary")
    p.add_argument("--stubs", default=os.environ.get("SPLITLEARND_PY_STUBS"),
                   help="folder of the generated compute_pb2/management_pb2 (BUILD/python)")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--keep", action="store_true", help="keep the work folder (config, models, daemon log)")
    args = p.parse_args()
    if not args.bin or not args.stubs:
        p.error("give --bin and --stubs (or SPLITLEARND_BIN and SPLITLEARND_PY_STUBS)")
    return args


ARGS = parse_args()
# The launcher reads these when imported.
os.environ["SPLITLEARND_BIN"] = os.path.abspath(ARGS.bin)
os.environ["SPLITLEARND_PY_STUBS"] = os.path.abspath(ARGS.stubs)
sys.path.insert(0, os.path.join(TESTS, "support"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import replica_models  # noqa: E402
import splitlearnd_launcher as launcher  # noqa: E402
import torch_models  # noqa: E402
from splitlearnd_launcher import MIB, model_entry  # noqa: E402

import compute_pb2 as pb  # noqa: E402  (generated; the launcher put its folder on sys.path)
import compute_pb2_grpc as pb_grpc  # noqa: E402
import management_pb2 as mpb  # noqa: E402
import management_pb2_grpc as mpb_grpc  # noqa: E402

torch.set_num_threads(1)
SC = grpc.StatusCode
OK = SC.OK
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 16 * MIB), ("grpc.max_receive_message_length", 16 * MIB)]

HIDDEN = 64        # lg, tiny and extra take [..., 64]
SESS_HIDDEN = 8    # sess (RunningSum) takes [1, t, 8]
BATCH_ON = {"max_batch_size": 8, "max_delay_us": 500}
BATCH_OFF = {"max_batch_size": 1, "max_delay_us": 0}


# --------------------------------------------------------------------------- models

class Models:
    """Writes the TorchScript files and keeps in-process copies as the reference."""

    def __init__(self, folder):
        self.files = {
            "lg": torch_models.make(torch_models.LinearGelu, os.path.join(folder, "lg.pt"), seed=1, dim=HIDDEN),
            "tiny": torch_models.make(torch_models.TinyBlock, os.path.join(folder, "tiny.pt"), seed=2,
                                      dim=HIDDEN, heads=4, ffn=128),
            "sess": replica_models.write(replica_models.RunningSum, os.path.join(folder, "sess.pt"), seed=3),
            "extra": replica_models.write(replica_models.Tiny, os.path.join(folder, "extra.pt"), seed=4),
        }
        self.ref = {name: torch.jit.load(path, map_location="cpu").eval() for name, path in self.files.items()}
        # A scripted module is not meant to be called from many threads at once.
        self.lock = threading.Lock()

    def forward(self, name, x, past=None, use_cache=False):
        with self.lock, torch.no_grad():
            if name == "sess":
                return self.ref[name](x, past, use_cache)
            return self.ref[name](x)


def base_models(files):
    names = {k: os.path.basename(v) for k, v in files.items()}
    return {
        "lg": model_entry("lg", names["lg"], warmup_shape=(1, 4, HIDDEN), default=True, batching=dict(BATCH_ON)),
        "tiny": model_entry("tiny", names["tiny"], warmup_shape=(1, 4, HIDDEN), batching=dict(BATCH_ON)),
        "sess": model_entry("sess", names["sess"], warmup_shape=(1, 2, SESS_HIDDEN),
                               sessions={"max_sessions": 64, "idle_timeout_s": 120}),
        "extra": model_entry("extra", names["extra"], warmup_shape=(1, HIDDEN)),
    }


# --------------------------------------------------------------------------- shared state

class ExtraState:
    """Whether the secondary model `extra` is served. While a reload that adds or removes
    it is under way (or a call overlapped one), NOT_FOUND and UNAVAILABLE are expected
    for it; outside, exactly OK (present) or NOT_FOUND (absent)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.generation = 0
        self.state = "present"

    def snapshot(self):
        with self.lock:
            return self.generation, self.state

    def set(self, state):
        with self.lock:
            self.generation += 1
            self.state = state


class Tally:
    """Per-thread counts of (kind, status), merged at the end."""

    def __init__(self):
        self.calls = collections.Counter()
        self.unexpected = collections.Counter()
        self.extra_expected = collections.Counter()   # (kind, status) expected only because extra was removed
        self.wrong = collections.Counter()
        self.checked = collections.Counter()
        self.notes = []

    def note(self, text):
        if len(self.notes) < 20:
            self.notes.append(text)


def code_name(code):
    return code.name if code is not None else "EXCEPTION"


# --------------------------------------------------------------------------- clients

def floats(x):
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


def as_array(data, shape, dtype=np.float32):
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))


def health_request(service):
    b = service.encode()
    return (b"\x0a" + bytes([len(b)]) + b) if b else b""


class Client(threading.Thread):
    MIX = [  # (weight, method)
        (30, "valid_lg"), (10, "valid_tiny"), (5, "valid_extra"),
        (18, "invalid"), (12, "cancel"), (8, "session"), (3, "generate"), (2, "cancel_stream"),
        (6, "health"), (6, "manage"),
    ]

    def __init__(self, index, daemon, models, extra, stop, check_every):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.rng = random.Random(ARGS.seed * 100 + index)
        self.nrng = np.random.default_rng(ARGS.seed * 100 + index)
        self.daemon_ = daemon
        self.models = models
        self.extra = extra
        self.stop = stop
        self.check_every = check_every
        self.tally = Tally()
        self.crashed = None
        self.counter = 0
        weights, methods = zip(*self.MIX)
        self.weights, self.methods = list(weights), list(methods)

    # -- bookkeeping

    def record(self, kind, code, expected, details=""):
        self.tally.calls[(kind, code_name(code))] += 1
        if code not in expected:
            self.tally.unexpected[(kind, code_name(code))] += 1
            self.tally.note(f"{self.name} {kind}: {code_name(code)} (expected {'/'.join(c.name for c in expected)}): "
                            f"{details}")
            return False
        return True

    def call(self, method, request, timeout=VALID_TIMEOUT_S):
        try:
            return OK, method(request, timeout=timeout), ""
        except grpc.RpcError as e:
            return e.code(), None, e.details() or ""

    def compare(self, kind, got, want, rtol=1e-4, atol=1e-4):
        self.tally.checked[kind] += 1
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            self.tally.wrong[kind] += 1
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) \
                if got.shape == want.shape else float("nan")
            self.tally.note(f"{self.name} {kind}: wrong answer (shape {got.shape} vs {want.shape}, max diff {diff})")

    def should_check(self):
        self.counter += 1
        return self.counter % self.check_every == 0

    # -- the loop

    def run(self):
        try:
            self.channel = grpc.insecure_channel(self.daemon_.address, options=CHANNEL_OPTIONS)
            self.stub = pb_grpc.ComputeServiceStub(self.channel)
            self.mchannel = grpc.insecure_channel(self.daemon_.management)
            self.mstub = mpb_grpc.ManagementServiceStub(self.mchannel)
            self.raw_health = self.channel.unary_unary("/grpc.health.v1.Health/Check")
            while not self.stop.is_set():
                getattr(self, self.rng.choices(self.methods, self.weights)[0])()
        except Exception:  # a bug of this script, or something grpc raised that we did not expect
            self.crashed = traceback.format_exc()
        finally:
            self.channel.close()
            self.mchannel.close()

    # -- valid compute

    def valid_lg(self):
        b, t = self.rng.randint(1, 4), self.rng.randint(1, 8)
        x = self.nrng.standard_normal((b, t, HIDDEN), dtype=np.float32)
        half = self.rng.random() < 0.2
        req = pb.ComputeRequest(data=floats(x), shape=[b, t, HIDDEN], request_id=self.rng.randint(0, 1 << 30),
                                model_id=self.rng.choice(["lg", ""]))
        if half:
            req.output_dtype = pb.DTYPE_FLOAT16
        code, resp, details = self.call(self.stub.Compute, req)
        kind = "compute lg" + (" f16" if half else "")
        if not self.record(kind, code, (OK,), details):
            return
        if resp.request_id != req.request_id:
            self.tally.wrong[kind] += 1
            self.tally.note(f"{self.name} {kind}: request_id {resp.request_id} != {req.request_id}")
        if self.should_check():
            want = self.models.forward("lg", torch.from_numpy(x)).numpy()
            if half:
                got = as_array(resp.data, resp.shape, np.float16).astype(np.float32)
                self.compare(kind, got, want.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
            else:
                self.compare(kind, as_array(resp.data, resp.shape), want)

    def valid_tiny(self):
        b, t = self.rng.randint(1, 3), self.rng.randint(1, 6)
        x = self.nrng.standard_normal((b, t, HIDDEN), dtype=np.float32)
        code, resp, details = self.call(self.stub.Compute,
                                        pb.ComputeRequest(data=floats(x), shape=[b, t, HIDDEN], model_id="tiny"))
        if self.record("compute tiny", code, (OK,), details) and self.should_check():
            self.compare("compute tiny", as_array(resp.data, resp.shape),
                         self.models.forward("tiny", torch.from_numpy(x)).numpy())

    def valid_extra(self):
        b = self.rng.randint(1, 4)
        x = self.nrng.standard_normal((b, HIDDEN), dtype=np.float32)
        gen0, state = self.extra.snapshot()
        code, resp, details = self.call(self.stub.Compute,
                                        pb.ComputeRequest(data=floats(x), shape=[b, HIDDEN], model_id="extra"))
        gen1, _ = self.extra.snapshot()
        settled = gen0 == gen1 and state in ("present", "absent")
        if settled:
            expected = (OK,) if state == "present" else (SC.NOT_FOUND,)
        else:
            expected = (OK, SC.NOT_FOUND, SC.UNAVAILABLE)
        if code != OK and code in expected:
            self.tally.extra_expected[("compute extra", code_name(code))] += 1
        if self.record("compute extra", code, expected, details) and code == OK and self.should_check():
            self.compare("compute extra", as_array(resp.data, resp.shape),
                         self.models.forward("extra", torch.from_numpy(x)).numpy())

    # -- invalid requests: each has one expected status

    def invalid(self):
        b, t = self.rng.randint(1, 3), self.rng.randint(1, 4)
        x = floats(self.nrng.standard_normal((b, t, HIDDEN), dtype=np.float32))
        what = self.rng.choice(["byte count", "shape", "unknown model", "dtype", "model shape", "unknown session"])
        if what == "byte count":
            cut = self.rng.choice([-4, -1, 1, 4])
            data = x[:cut] if cut < 0 else x + b"\0" * cut
            req, expected = pb.ComputeRequest(data=data, shape=[b, t, HIDDEN], model_id="lg"), SC.INVALID_ARGUMENT
        elif what == "shape":
            shape = self.rng.choice([[b, 0, HIDDEN], [-b, t, HIDDEN], [1] * 9, []])
            req, expected = pb.ComputeRequest(data=x, shape=shape, model_id="lg"), SC.INVALID_ARGUMENT
        elif what == "unknown model":
            req = pb.ComputeRequest(data=x, shape=[b, t, HIDDEN], model_id=f"no-such-model-{self.rng.randint(0, 99)}")
            expected = SC.NOT_FOUND
        elif what == "dtype":
            bad = self.rng.choice([("dtype", 7), ("dtype", 99), ("output_dtype", 42)])
            req = pb.ComputeRequest(data=x, shape=[b, t, HIDDEN], model_id="lg")
            setattr(req, bad[0], bad[1])
            expected = SC.INVALID_ARGUMENT
        elif what == "model shape":  # decodes fine; the Linear(64, 64) refuses 32 features
            y = floats(self.nrng.standard_normal((b, t, 32), dtype=np.float32))
            req, expected = pb.ComputeRequest(data=y, shape=[b, t, 32], model_id="lg"), SC.INVALID_ARGUMENT
        else:
            y = floats(self.nrng.standard_normal((1, 1, SESS_HIDDEN), dtype=np.float32))
            req = pb.ComputeRequest(data=y, shape=[1, 1, SESS_HIDDEN], model_id="sess",
                                    session_id=f"never-opened-{self.index}-{self.rng.randint(0, 1 << 30)}")
            expected = SC.NOT_FOUND
        code, _, details = self.call(self.stub.Compute, req)
        self.record(f"invalid {what}", code, (expected,), details)
        if code == expected and not details:
            self.tally.unexpected[(f"invalid {what}", "NO MESSAGE")] += 1
            self.tally.note(f"{self.name} invalid {what}: refused without a message")

    # -- cancellations

    def cancel(self):
        b, t = self.rng.randint(1, 4), self.rng.randint(1, 8)
        model = self.rng.choice(["lg", "tiny"])
        x = self.nrng.standard_normal((b, t, HIDDEN), dtype=np.float32)
        req = pb.ComputeRequest(data=floats(x), shape=[b, t, HIDDEN], model_id=model)
        allowed = (OK, SC.DEADLINE_EXCEEDED, SC.CANCELLED)
        if self.rng.random() < 0.5:
            code, resp, details = self.call(self.stub.Compute, req, timeout=self.rng.uniform(0.0002, 0.005))
            kind = "cancel deadline"
        else:
            future = self.stub.Compute.future(req, timeout=VALID_TIMEOUT_S)
            time.sleep(self.rng.uniform(0, 0.003))
            future.cancel()
            try:
                resp, code, details = future.result(timeout=VALID_TIMEOUT_S), OK, ""
            except grpc.FutureCancelledError:
                resp, code, details = None, SC.CANCELLED, ""
            except grpc.RpcError as e:
                resp, code, details = None, e.code(), e.details() or ""
            kind = "cancel future"
        if self.record(kind, code, allowed, details) and code == OK and self.should_check():
            self.compare(kind, as_array(resp.data, resp.shape), self.models.forward(model, torch.from_numpy(x)).numpy())

    def cancel_stream(self):
        """A Generate stream cancelled after its first answer: the server must drop its session."""
        steps = [self.nrng.standard_normal((1, self.rng.randint(1, 3), SESS_HIDDEN), dtype=np.float32)
                 for _ in range(4)]
        release = threading.Event()

        def requests():
            for i, x in enumerate(steps):
                yield pb.ComputeRequest(data=floats(x), shape=list(x.shape), model_id="sess" if i == 0 else "")
                if i == 0:
                    release.wait(VALID_TIMEOUT_S)  # the rest only after the cancel (they are not sent)
        responses = self.stub.Generate(requests(), timeout=VALID_TIMEOUT_S)
        try:
            next(responses)
            code = OK
        except grpc.RpcError as e:
            code = e.code()
        responses.cancel()
        release.set()
        if code == OK:
            try:
                for _ in responses:
                    pass
                code = OK
            except grpc.RpcError as e:
                code = e.code()
        self.record("cancel stream", code, (OK, SC.CANCELLED))

    # -- sessions

    def session(self):
        code, resp, details = self.call(self.stub.OpenSession, pb.OpenSessionRequest(model_id="sess"))
        if not self.record("session open", code, (OK,), details):
            return
        sid = resp.session_id
        past = None
        check = self.should_check()
        for _ in range(self.rng.randint(1, 5)):
            x = self.nrng.standard_normal((1, self.rng.randint(1, 3), SESS_HIDDEN), dtype=np.float32)
            code, r, details = self.call(self.stub.Compute, pb.ComputeRequest(
                data=floats(x), shape=list(x.shape), model_id="sess", session_id=sid))
            if not self.record("session step", code, (OK,), details):
                break
            if r.session_id != sid:
                self.tally.wrong["session step"] += 1
                self.tally.note(f"{self.name} session step: session_id {r.session_id!r} != {sid!r}")
            if check:
                want, past = self.models.forward("sess", torch.from_numpy(x), past, True)
                self.compare("session step", as_array(r.data, r.shape), want.numpy())
                if r.session_tokens != past[0][0].shape[2]:
                    self.tally.wrong["session step"] += 1
                    self.tally.note(f"{self.name} session step: session_tokens {r.session_tokens}, "
                                    f"expected {past[0][0].shape[2]}")
        code, _, details = self.call(self.stub.CloseSession, pb.CloseSessionRequest(session_id=sid, model_id="sess"))
        self.record("session close", code, (OK,), details)

    def generate(self):
        steps = [self.nrng.standard_normal((1, self.rng.randint(1, 3), SESS_HIDDEN), dtype=np.float32)
                 for _ in range(self.rng.randint(1, 5))]
        reqs = [pb.ComputeRequest(data=floats(x), shape=list(x.shape), model_id="sess" if i == 0 else "")
                for i, x in enumerate(steps)]
        try:
            answers = list(self.stub.Generate(iter(reqs), timeout=VALID_TIMEOUT_S))
            code, details = OK, ""
        except grpc.RpcError as e:
            answers, code, details = [], e.code(), e.details() or ""
        if not self.record("generate", code, (OK,), details):
            return
        if len(answers) != len(steps):
            self.tally.wrong["generate"] += 1
            self.tally.note(f"{self.name} generate: {len(answers)} answers to {len(steps)} steps")
            return
        if self.should_check():
            past = None
            for x, r in zip(steps, answers):
                want, past = self.models.forward("sess", torch.from_numpy(x), past, True)
                self.compare("generate", as_array(r.data, r.shape), want.numpy())

    # -- health and management

    def health(self):
        what = self.rng.choice(["HealthCheck", "GetServiceInfo", "health.v1", "health.v1 model"])
        if what == "HealthCheck":
            code, resp, details = self.call(self.stub.HealthCheck, pb.HealthRequest())
            if self.record("health legacy", code, (OK,), details) and resp.status != "ok":
                self.tally.unexpected[("health legacy", resp.status)] += 1
                self.tally.note(f"{self.name} HealthCheck: {resp.status} {resp.message}")
        elif what == "GetServiceInfo":
            code, resp, details = self.call(self.stub.GetServiceInfo, pb.ServiceInfoRequest())
            self.record("service info", code, (OK,), details)
        else:
            service = "" if what == "health.v1" else "splitlearn.model/" + self.rng.choice(["lg", "tiny", "sess"])
            code, resp, details = self.call(self.raw_health, health_request(service))
            if self.record("health.v1", code, (OK,), details) and resp != b"\x08\x01":
                self.tally.unexpected[("health.v1", "NOT SERVING")] += 1
                self.tally.note(f"{self.name} health.v1 {service!r}: answer {resp!r}, not SERVING")

    def manage(self):
        if self.rng.random() < 0.5:
            code, _, details = self.call(self.mstub.GetStatus, mpb.GetStatusRequest())
            self.record("manage status", code, (OK,), details)
        else:
            code, _, details = self.call(self.mstub.ListModels, mpb.ListModelsRequest())
            self.record("manage list", code, (OK,), details)


# --------------------------------------------------------------------------- RSS

def read_status(pid):
    """{VmRSS, RssAnon, RssFile (kB), Threads} of the process; {} once it is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                    fields[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return fields


class Sampler(threading.Thread):
    def __init__(self, pid, t0, every, stop):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.t0, self.every, self.stop = pid, t0, every, stop
        # (seconds since the load started, VmRSS kB, threads, RssAnon kB, RssFile kB)
        self.samples = []
        self.lock = threading.Lock()

    def sample(self):
        f = read_status(self.pid)
        if "VmRSS" in f:
            with self.lock:
                self.samples.append((time.monotonic() - self.t0, f["VmRSS"], f.get("Threads"),
                                     f.get("RssAnon"), f.get("RssFile")))
        return f.get("VmRSS")

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.sample()
            next_at += self.every
            self.stop.wait(max(0.0, next_at - time.monotonic()))


# --------------------------------------------------------------------------- reloads

class Reloader:
    """Reload k: lg's batching toggles every time; extra is removed at k = 0, 6, 12, …
    and added back at k = 3, 9, …; tiny gets a new version (warmup runs 1 <-> 2) at
    k = 1, 5, 9, …. Even k reload by SIGHUP, odd k by ReloadConfig."""

    def __init__(self, daemon, entries, extra, log):
        self.daemon, self.entries, self.extra, self.log = daemon, entries, extra, log
        self.k = 0
        self.batching_on = True
        self.extra_present = True
        self.tiny_runs = 1
        self.results = collections.Counter()
        self.failures = []

    def config(self):
        models = [self.entries["lg"], self.entries["tiny"], self.entries["sess"]]
        if self.extra_present:
            models.append(self.entries["extra"])
        cfg = copy.deepcopy(self.daemon.config)
        cfg["models"] = copy.deepcopy(models)
        cfg["models"][0]["batching"] = dict(BATCH_ON if self.batching_on else BATCH_OFF)
        cfg["models"][1]["warmup"]["runs"] = self.tiny_runs
        return cfg

    def wait_model(self, stub, model_id, present, timeout_s=60):
        def there():
            ids = {m.id: m for m in stub.ListModels(mpb.ListModelsRequest(), timeout=VALID_TIMEOUT_S).models}
            if present:
                return model_id in ids and ids[model_id].state == mpb.READY
            return model_id not in ids or ids[model_id].state in (mpb.UNLOADING, mpb.UNLOADED)
        try:
            return launcher.wait_until(there, timeout_s, model_id, interval_s=0.1)
        except AssertionError:
            return False

    def reload(self):
        k = self.k
        self.k += 1
        by_signal = k % 2 == 0
        self.batching_on = not self.batching_on
        extra_change = k % 3 == 0
        if extra_change:
            self.extra_present = not self.extra_present
            self.extra.set("changing")
        if k % 4 == 1:
            self.tiny_runs = 3 - self.tiny_runs
        self.daemon.write_config(self.config())
        stub = self.daemon.management_stub()
        started = time.monotonic()
        what = []
        try:
            if by_signal:
                try:
                    result = self.daemon.reload(timeout_s=60)
                except AssertionError:
                    result = None
            else:
                result = stub.ReloadConfig(mpb.ReloadConfigRequest(), timeout=VALID_TIMEOUT_S)
            if result is None:
                ok, msg = False, "no reload seen 60 s after SIGHUP"
            else:
                ok, msg = result.ok, result.message
                what = [f"+{a}" for a in result.added] + [f"-{r}" for r in result.removed] + \
                       [f"~{c}" for c in result.changed] + [f"={u}" for u in result.updated]
            if ok and extra_change and not self.wait_model(stub, "extra", self.extra_present):
                ok, msg = False, f"extra not {'READY' if self.extra_present else 'gone'} 60 s after the reload"
        except grpc.RpcError as e:
            ok, msg = False, f"{e.code().name}: {e.details()}"
        if extra_change:
            self.extra.set("present" if self.extra_present else "absent")
        trigger = "SIGHUP" if by_signal else "ReloadConfig"
        self.results[(trigger, "ok" if ok else "FAILED")] += 1
        if not ok:
            self.failures.append(f"reload {k} ({trigger}): {msg}")
        self.log(f"reload {k} by {trigger}: {'ok' if ok else 'FAILED'} in {time.monotonic() - started:.2f} s "
                 f"[{' '.join(what)}] {msg if not ok else ''}")


# --------------------------------------------------------------------------- main

def mib(kb):
    return kb / 1024.0 if kb is not None else float("nan")


def main():
    t_start = time.monotonic()

    def log(text):
        print(f"[{time.monotonic() - t_start:7.1f} s] {text}", flush=True)

    workdir = tempfile.mkdtemp(prefix="splitlearnd-soak-")
    models = Models(workdir)
    entries = base_models(models.files)
    daemon = launcher.Splitlearnd([entries["lg"], entries["tiny"], entries["sess"], entries["extra"]],
                                  workdir=workdir, server={"max_message_bytes": 16 * MIB, "drain_timeout_s": 5},
                                  devices={"cpu": {"intra_op_threads": 1, "queue_capacity": 256}})
    daemon.start()
    pid = daemon.proc.pid
    log(f"splitlearnd pid {pid} on {daemon.address}; {ARGS.clients} clients for {ARGS.duration:.0f} s; "
        f"work folder {workdir}")

    extra = ExtraState()
    stop = threading.Event()
    sampler_stop = threading.Event()
    t0 = time.monotonic()
    sampler = Sampler(pid, t0, ARGS.sample_every, sampler_stop)
    sampler.start()
    clients = [Client(i, daemon, models, extra, stop, check_every=4) for i in range(ARGS.clients)]
    for c in clients:
        c.start()
    reloader = Reloader(daemon, entries, extra, log)

    died = None
    next_reload = t0 + ARGS.reload_every
    end = t0 + ARGS.duration
    while True:
        now = time.monotonic()
        if not daemon.alive():
            died = daemon.proc.returncode
            log(f"splitlearnd DIED with status {died}")
            break
        if now >= end:
            break
        if now >= next_reload:
            reloader.reload()
            next_reload += ARGS.reload_every
            calls = sum(sum(c.tally.calls.values()) for c in clients)
            last = sampler.samples[-1] if sampler.samples else (None,) * 5
            log(f"{calls} calls so far, VmRSS {mib(last[1]):.1f} MiB, {last[2]} threads")
            continue
        time.sleep(min(0.5, max(0.0, min(end, next_reload) - now)))

    stop.set()
    for c in clients:
        c.join(timeout=2 * VALID_TIMEOUT_S)
    load_s = time.monotonic() - t0
    final_rss = sampler.sample() if died is None else None
    sampler_stop.set()
    sampler.join(timeout=10)
    hung = [c.name for c in clients if c.is_alive()]

    # After the load: still serving, and a clean stop.
    final_ok = False
    if died is None and daemon.alive():
        with grpc.insecure_channel(daemon.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ComputeServiceStub(channel)
            x = np.ones((2, 3, HIDDEN), dtype=np.float32)
            try:
                r = stub.Compute(pb.ComputeRequest(data=floats(x), shape=[2, 3, HIDDEN], model_id="lg"),
                                 timeout=VALID_TIMEOUT_S)
                final_ok = np.allclose(as_array(r.data, r.shape), models.forward("lg", torch.from_numpy(x)).numpy(),
                                       rtol=1e-4, atol=1e-4)
            except grpc.RpcError as e:
                log(f"valid request after the load: {e.code().name} {e.details()}")
    stop_rc = None
    try:
        stop_rc = daemon.stop()
    except AssertionError as e:
        log(str(e))
    if died is None and stop_rc is not None and stop_rc < 0:
        died = stop_rc

    # ---- figures
    total = Tally()
    for c in clients:
        for field in ("calls", "unexpected", "extra_expected", "wrong", "checked"):
            getattr(total, field).update(getattr(c.tally, field))
        total.notes.extend(c.tally.notes)
    crashed = [f"{c.name}:\n{c.crashed}" for c in clients if c.crashed]

    samples = list(sampler.samples)
    baseline_s = min(RSS_BASELINE_S, load_s / 3)
    none = (None,) * 5
    base = next((s for s in samples if s[0] >= baseline_s), samples[-1] if samples else none)
    last = samples[-1] if samples else none
    rss_base, threads_base = base[1], base[2]
    rss_end = final_rss if final_rss is not None else last[1]
    threads_end = last[2]
    after = [s[1] for s in samples if s[0] >= baseline_s]
    rss_max_after = max(after) if after else None
    growth = (rss_end - rss_base) * 100.0 / rss_base if rss_base and rss_end else float("nan")
    judged = load_s >= RSS_JUDGED_FROM_S

    by_kind = collections.defaultdict(collections.Counter)
    for (kind, status), n in total.calls.items():
        by_kind[kind][status] += n
    print()
    print(f"splitlearnd soak: {ARGS.clients} clients, {load_s:.0f} s of load, {reloader.k} reloads")
    print(f"{'kind':<22} {'calls':>8}  statuses")
    for kind in sorted(by_kind):
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(by_kind[kind].items(), key=lambda kv: -kv[1]))
        print(f"{kind:<22} {sum(by_kind[kind].values()):>8}  {statuses}")
    print(f"{'total':<22} {sum(total.calls.values()):>8}")
    for (trigger, outcome), n in sorted(reloader.results.items()):
        print(f"reloads {trigger:<14} {outcome:<8} {n}")
    extra_exp = ", ".join(f"{k} {s} {n}" for (k, s), n in sorted(total.extra_expected.items())) or "none"
    print(f"expected only because extra was removed or loading: {extra_exp}")
    print(f"unexpected statuses: {sum(total.unexpected.values())}"
          + (" (" + ", ".join(f"{k} {s} {n}" for (k, s), n in sorted(total.unexpected.items())) + ")"
             if total.unexpected else ""))
    print(f"answers checked against torch: {sum(total.checked.values())}; wrong answers: {sum(total.wrong.values())}")
    print(f"RSS at {baseline_s:.0f} s: {mib(rss_base):.1f} MiB; at end: {mib(rss_end):.1f} MiB; "
          f"max after {baseline_s:.0f} s: {mib(rss_max_after):.1f} MiB; samples: {len(samples)}; "
          f"daemon threads {threads_base} -> {threads_end}")
    print(f"of which anonymous (RssAnon): {mib(base[3]):.1f} -> {mib(last[3]):.1f} MiB; "
          f"file-backed (RssFile): {mib(base[4]):.1f} -> {mib(last[4]):.1f} MiB")
    print(f"RSS growth (end - rss@{baseline_s:.0f}s) / rss@{baseline_s:.0f}s: {growth:+.2f}%"
          + ("" if judged else f" (not judged: the run is shorter than {RSS_JUDGED_FROM_S:.0f} s)"))
    print(f"daemon: {'died (' + str(died) + ')' if died is not None else 'alive through the load'}; "
          f"valid request after the load: {'ok' if final_ok else 'FAILED'}; exit status after SIGTERM: {stop_rc}")

    failures = []
    if died is not None:
        failures.append(f"splitlearnd died ({died})")
    if stop_rc != 0:
        failures.append(f"splitlearnd exited with {stop_rc} after SIGTERM")
    if not final_ok:
        failures.append("the valid request after the load failed")
    if total.unexpected:
        failures.append(f"{sum(total.unexpected.values())} unexpected statuses")
    if total.wrong:
        failures.append(f"{sum(total.wrong.values())} wrong answers")
    if reloader.failures:
        failures.append(f"{len(reloader.failures)} failed reloads")
    if crashed:
        failures.append(f"{len(crashed)} client threads raised")
    if hung:
        failures.append(f"client threads did not finish: {', '.join(hung)}")
    if judged and not growth < RSS_LIMIT_PERCENT:
        failures.append(f"RSS grew {growth:.2f}% (limit {RSS_LIMIT_PERCENT}%)")
    for line in total.notes[:20] + reloader.failures + crashed:
        print("  " + line.rstrip())
    print("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)), flush=True)

    if ARGS.json:
        figures = {
            "clients": ARGS.clients, "duration_s": ARGS.duration, "load_s": round(load_s, 1),
            "reloads": {f"{t} {o}": n for (t, o), n in reloader.results.items()},
            "calls": {k: dict(v) for k, v in by_kind.items()},
            "total_calls": sum(total.calls.values()),
            "expected_for_removed_model": {f"{k} {s}": n for (k, s), n in total.extra_expected.items()},
            "unexpected": {f"{k} {s}": n for (k, s), n in total.unexpected.items()},
            "unexpected_total": sum(total.unexpected.values()),
            "answers_checked": sum(total.checked.values()), "wrong_answers": sum(total.wrong.values()),
            "rss_baseline_s": round(baseline_s, 1), "rss_baseline_kb": rss_base, "rss_end_kb": rss_end,
            "rss_max_after_baseline_kb": rss_max_after,
            "rss_growth_percent": round(growth, 3), "rss_growth_judged": judged,
            "rss_limit_percent": RSS_LIMIT_PERCENT,
            "threads_baseline": threads_base, "threads_end": threads_end,
            "rss_anon_baseline_kb": base[3], "rss_anon_end_kb": last[3],
            "rss_file_baseline_kb": base[4], "rss_file_end_kb": last[4],
            "rss_samples_fields": ["s", "VmRSS_kb", "threads", "RssAnon_kb", "RssFile_kb"],
            "rss_samples": [[round(s[0], 1)] + list(s[1:]) for s in samples],
            "daemon_died": died, "exit_status_after_sigterm": stop_rc,
            "notes": total.notes[:20] + reloader.failures,
            "pass": not failures, "failures": failures,
        }
        with open(ARGS.json, "w") as f:
            json.dump(figures, f, indent=2)

    if failures or ARGS.keep:
        print(f"work folder kept: {workdir} (config, models, splitlearnd.log)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
