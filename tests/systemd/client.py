"""The clients of the booted-systemd test; runs inside the container, with the Python
client package of the checkout (PYTHONPATH=client/python) and the build's stubs
(SPLITLEARND_PY_STUBS). Every command prints one JSON object on stdout.

  client.py call  [--model M] [--request-id N] [--shape 1x10x768]   one forward
  client.py train --model M --steps N                            training forwards + backwards
  client.py load  --model M --stop-file F --max-s S [--concurrency C] [--shape ...]
      closed-loop forwards from C threads until F exists (or S seconds), no retries;
      prints every call's (start, end, code, details) and the counts per code.

Common: --target (default localhost:50051), --ca FILE (TLS), --token-file FILE.
"""
import argparse
import json
import os
import sys
import threading
import time

import grpc
import torch

from splitlearnd_client import NO_RETRY, Client, SplitlearndError


def make_client(args):
    kwargs = {}
    if args.ca:
        with open(args.ca, "rb") as f:
            kwargs["root_certificates"] = f.read()
    if args.token_file:
        with open(args.token_file) as f:
            kwargs["token"] = f.read().strip()
    return Client(args.target, timeout=args.timeout, retry=NO_RETRY, **kwargs)


def shape(text):
    return [int(d) for d in text.split("x")]


def one_call(client, fn):
    """(code name, details) of one call: OK or the error's."""
    try:
        fn()
        return "OK", ""
    except SplitlearndError as e:
        return e.code.name, e.details
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


def cmd_call(args):
    with make_client(args) as c:
        x = torch.randn(*shape(args.shape))
        code, details = one_call(c, lambda: c.compute(x, model_id=args.model, request_id=args.request_id))
    return {"code": code, "details": details}


def cmd_train(args):
    with make_client(args) as c:
        steps = 0
        for _ in range(args.steps):
            x = torch.randn(*shape(args.shape))
            r = c.compute(x, model_id=args.model, training=True)
            c.backward(torch.ones_like(r.output), r.forward_id, model_id=args.model)
            steps += 1
    return {"steps": steps}


def cmd_load(args):
    calls = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.max_s
    x = torch.randn(*shape(args.shape))

    def lane():
        with make_client(args) as c:
            while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
                start = time.time()
                code, details = one_call(c, lambda: c.compute(x, model_id=args.model))
                with lock:
                    calls.append((start, time.time(), code, details))
                if code != "OK":
                    time.sleep(0.05)  # the daemon is away: do not spin on refusals

    threads = [threading.Thread(target=lane) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {}
    for _, _, code, _ in calls:
        counts[code] = counts.get(code, 0) + 1
    return {"counts": counts, "calls": calls, "stopped_by_file": os.path.exists(args.stop_file)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["call", "train", "load"])
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--ca")
    p.add_argument("--token-file")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--model", default="")
    p.add_argument("--shape", default="1x10x768")
    p.add_argument("--request-id", type=int)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--stop-file")
    p.add_argument("--max-s", type=float, default=120)
    args = p.parse_args()
    result = {"call": cmd_call, "train": cmd_train, "load": cmd_load}[args.command](args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
