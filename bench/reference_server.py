#!/usr/bin/env python3
"""The reference: the Python serving design that splitlearnd replaces, rebuilt from its
description for side-by-side benchmarks.

- grpc.aio server speaking the legacy splitlearn.comm.ComputeService;
- numpy bytes codec: np.frombuffer -> torch.from_numpy on the way in,
  tensor.numpy().tobytes() on the way out;
- the forward runs under torch.no_grad() through loop.run_in_executor on a
  one-thread ThreadPoolExecutor;
- no batching: one request, one forward;
- training as the protocol defines it (the replaced server's backward returned the
  incoming gradient; this one runs autograd, so that training steps compare fairly):
  a training_mode forward keeps its graph under a forward_id, ComputeBackward runs it
  backward and takes a plain SGD step (--learning-rate), in the same executor;
- libtorch's thread settings left as torch sets them (intra-op threads = cores, and
  OpenBLAS's own pool beside it), as the replaced server ran; --threads N sets
  torch.set_num_threads(N) for a tuned variant.

Usage: reference_server.py --stubs BUILD/python --model shard.pt [--listen 127.0.0.1:0]
Prints "listening on HOST:PORT" when ready; stops on SIGTERM or SIGINT.
"""
import argparse
import asyncio
import concurrent.futures
import signal
import sys
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stubs", required=True, help="folder with compute_pb2.py and compute_pb2_grpc.py")
    ap.add_argument("--model", action="append", required=True,
                    help="ID=PATH or PATH (id = file name without .pt); repeatable; the first is the default")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (intra-op); 0 leaves torch's defaults, as the replaced server did")
    ap.add_argument("--learning-rate", type=float, default=1e-4, help="SGD step of ComputeBackward")
    args = ap.parse_args()

    sys.path.insert(0, args.stubs)
    import grpc
    import numpy as np
    import torch
    import compute_pb2 as pb
    import compute_pb2_grpc as pb_grpc

    # from_numpy over the request's read-only bytes warns once; the old server did this too.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    models = {}
    default_id = None
    for spec in args.model:
        mid, _, path = spec.rpartition("=")
        if not mid:
            mid = path.rsplit("/", 1)[-1].removesuffix(".pt")
        m = torch.jit.load(path)
        m.eval()
        models[mid] = m
        default_id = default_id or mid

    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, initializer=lambda: torch.set_num_threads(args.threads) if args.threads > 0 else None)
    started = time.time()
    counters = {"total": 0}

    def primary(y):
        return y[0] if isinstance(y, (tuple, list)) else y

    graphs = {}

    def forward(model, x, forward_id=None):
        t0 = time.perf_counter()
        if forward_id is None:
            with torch.no_grad():
                y = primary(model(x))
        else:
            x = x.clone().requires_grad_(True)
            with torch.enable_grad():
                y = primary(model(x))
            graphs[forward_id] = (model, x, y)
            y = y.detach()
        return y, (time.perf_counter() - t0) * 1e3

    def backward(forward_id, grad):
        t0 = time.perf_counter()
        model, x, y = graphs.pop(forward_id)
        y.backward(grad)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= args.learning_rate * p.grad
                    p.grad = None
        return x.grad, (time.perf_counter() - t0) * 1e3

    class Servicer(pb_grpc.ComputeServiceServicer):
        async def Compute(self, request, context):
            counters["total"] += 1
            model = models.get(request.model_id or default_id)
            if model is None:
                await context.abort(grpc.StatusCode.INTERNAL, f"unknown model {request.model_id}")
            try:
                arr = np.frombuffer(request.data, dtype=np.float32).reshape(tuple(request.shape))
                x = torch.from_numpy(arr)
                loop = asyncio.get_running_loop()
                forward_id = None
                if request.training_mode:
                    counters["forwards"] = counters.get("forwards", 0) + 1
                    forward_id = request.forward_id or f"ref-{counters['forwards']}"
                y, ms = await loop.run_in_executor(executor, forward, model, x, forward_id)
                out = y.contiguous().numpy()
            except Exception as e:  # the old server answered every failure with INTERNAL
                await context.abort(grpc.StatusCode.INTERNAL, str(e))
            resp = pb.ComputeResponse(data=out.tobytes(), shape=list(out.shape),
                                      compute_time_ms=ms)
            if forward_id:
                resp.forward_id = forward_id
            if request.HasField("request_id"):
                resp.request_id = request.request_id
            return resp

        async def ComputeBackward(self, request, context):
            if request.forward_id not in graphs:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown forward_id {request.forward_id}")
            try:
                arr = np.frombuffer(request.grad_output_data, dtype=np.float32).reshape(tuple(request.grad_output_shape))
                loop = asyncio.get_running_loop()
                g, ms = await loop.run_in_executor(executor, backward, request.forward_id, torch.from_numpy(arr))
                out = g.contiguous().numpy()
            except Exception as e:
                await context.abort(grpc.StatusCode.INTERNAL, str(e))
            return pb.BackwardResponse(grad_input_data=out.tobytes(), grad_input_shape=list(out.shape),
                                       forward_id=request.forward_id, backward_time_ms=ms)

        async def HealthCheck(self, request, context):
            return pb.HealthResponse(status="healthy", message="reference", version="ref",
                                     uptime_seconds=time.time() - started)

        async def GetServiceInfo(self, request, context):
            info = {"models": ",".join(models)}
            for mid, m in models.items():
                n = sum(p.numel() * p.element_size() for p in m.parameters())
                info[f"model.{mid}.parameter_bytes"] = str(n)
            return pb.ServiceInfoResponse(service_name="reference", version="ref", device="cpu",
                                          uptime_seconds=time.time() - started,
                                          total_requests=counters["total"], custom_info=info)

    async def serve():
        limit = 256 * 1024 * 1024
        server = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                          ("grpc.max_receive_message_length", limit)])
        pb_grpc.add_ComputeServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port(args.listen)
        if port == 0:
            print(f"reference: cannot listen on {args.listen}", file=sys.stderr)
            sys.exit(1)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host = args.listen.rsplit(":", 1)[0]
        print(f"listening on {host}:{port}", flush=True)
        await stop.wait()
        await server.stop(1)

    asyncio.run(serve())
    executor.shutdown(wait=False)


if __name__ == "__main__":
    main()
