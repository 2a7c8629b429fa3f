"""Small TorchScript models for the client tests, written with random weights, and
the same files loaded back in this process as the reference."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

torch.set_num_threads(1)
DIM = 16


class LinearGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DIM, DIM)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


class Echo(nn.Module):
    def forward(self, x):
        return x.clone()


class CacheLayer(nn.Module):
    """Keys and values of shape [batch, heads, seq, head_dim]; the output mixes in the
    mean of every value cached so far, so it depends on the whole past."""

    def __init__(self, heads: int = 2):
        super().__init__()
        self.dim = DIM  # TorchScript reads module attributes, not Python globals
        self.heads = heads
        self.head_dim = DIM // heads
        self.k = nn.Linear(DIM, DIM)
        self.v = nn.Linear(DIM, DIM)

    def forward(self, x: Tensor, past: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        b, t = x.size(0), x.size(1)
        k = self.k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        context = v.mean(dim=2).reshape(b, 1, self.dim)
        return x + torch.tanh(context + k.mean(dim=2).reshape(b, 1, self.dim)), (k, v)


class CacheTrunk(nn.Module):
    def __init__(self, layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([CacheLayer() for _ in range(layers)])

    def forward(self, hidden_states: Tensor, past_key_values: Optional[List[Tuple[Tensor, Tensor]]] = None,
                use_cache: bool = False) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        presents: List[Tuple[Tensor, Tensor]] = []
        x = hidden_states
        i = 0
        for layer in self.layers:
            past: Optional[Tuple[Tensor, Tensor]] = None
            if past_key_values is not None and len(past_key_values) > 0:
                past = past_key_values[i]
            x, present = layer(x, past)
            if use_cache:
                presents.append(present)
            i += 1
        return x, presents


class TanhLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DIM, DIM)

    def forward(self, x):
        return torch.tanh(self.fc(x))


def write_model(module, path, seed):
    torch.manual_seed(seed)
    m = module().eval()
    torch.jit.script(m).save(path)
    return path


def reference(path):
    m = torch.jit.load(path, map_location="cpu")
    m.eval()
    return m
