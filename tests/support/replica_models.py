"""TorchScript models for the replica tests, written with Debian's python3-torch."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

torch.set_num_threads(1)

HIDDEN = 64
CACHE_DIM = 8


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        return torch.tanh(self.fc(x))


class SlowToWarm(nn.Module):
    """Many large matrix products: each warm-up run takes a noticeable while."""

    def __init__(self, dim: int = 384, rounds: int = 12):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.rounds = rounds

    def forward(self, x):
        for _ in range(self.rounds):
            x = torch.tanh(self.fc(x))
        return x


class RunningSum(nn.Module):
    """A KV-cache model whose answer depends on everything the session has seen: the
    cache holds every token so far, and each output token is the input token plus the
    sum of all cached tokens. A step answered without the session's cache is wrong."""

    def forward(self, x: Tensor, past_key_values: Optional[List[Tuple[Tensor, Tensor]]] = None,
                use_cache: bool = False) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        # Cache layout as in Hugging Face models: [batch, heads, sequence, head_dim].
        # A new tensor, as a real model's key projection is: a cache that is a view of
        # the input would alias the request's buffer inside the daemon, which keeps the
        # cache past the request (a daemon bug found by this test, reported separately).
        keys = (x * 1.0).unsqueeze(1)
        if past_key_values is not None and len(past_key_values) > 0:
            keys = torch.cat([past_key_values[0][0], keys], dim=2)
        out = x + keys.sum(dim=2)
        presents: List[Tuple[Tensor, Tensor]] = []
        if use_cache:
            presents.append((keys, keys))
        return out, presents


def write(module_class, path, seed=0):
    torch.manual_seed(seed)
    torch.jit.script(module_class().eval()).save(path)
    return path
