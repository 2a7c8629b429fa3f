"""splitlearnd_client: a Python client for splitlearnd, with torch tensors in and out.

    from splitlearnd_client import Client

    with Client("127.0.0.1:50051") as client:
        y = client.compute(torch.randn(1, 10, 768), model_id="gpt2-trunk").output
        with client.open_session("gpt2-trunk") as session:      # server-side KV cache
            step = session.compute(hidden_states)
        r = client.compute(x, model_id="trunk", training=True)   # a training forward
        grad_x = client.backward(grad_y, r.forward_id, model_id="trunk").grad_input
        print(client.stats)                                      # calls, retries, failures, latency, bytes

SplitTrainer trains a model cut three ways (head and tail here, the trunk on the
daemon), sequentially or with several micro-batches in flight.

Failures raise SplitlearndError (with .code, a grpc.StatusCode). UNAVAILABLE and
RESOURCE_EXHAUSTED are retried with exponential backoff and jitter (RetryPolicy).
"""
from .client import (RETRYABLE, BackwardResult, Client, ClientStats, ComputeResult, NO_RETRY, RetryPolicy, Session,
                     SplitlearndError)
from .tensors import decode, dtype_code, encode, torch_dtype
from .training import SplitTrainer

__version__ = "0.1.0"

__all__ = [
    "BackwardResult", "Client", "ClientStats", "ComputeResult", "NO_RETRY", "RETRYABLE", "RetryPolicy", "Session",
    "SplitTrainer", "SplitlearndError", "decode", "dtype_code", "encode", "torch_dtype",
]
