"""Small TorchScript models written at test time with random weights, and the
in-process PyTorch reference that the daemon's answers are compared with."""
import numpy as np
import torch
from torch import nn

# The tests share two CPU cores with the daemon; one thread is plenty for these sizes.
torch.set_num_threads(1)

HIDDEN = 768


class LinearGelu(nn.Module):
    def __init__(self, dim: int = HIDDEN):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.fc(x))


class TinyBlock(nn.Module):
    """Pre-norm self-attention plus MLP, with the attention spelled out."""

    def __init__(self, dim: int = 128, heads: int = 4, ffn: int = 256):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / float(self.head_dim) ** 0.5
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x):
        b, t, d = x.size(0), x.size(1), x.size(2)
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class ThrowsOnThreeRows(nn.Module):
    """Fine for any input except one whose first dimension is 3."""

    def forward(self, x):
        if x.size(0) == 3:
            raise RuntimeError("boom: this test model refuses three rows")
        return x * 2.0 + 1.0


class ThrowsOnMarker(nn.Module):
    """Fine for any input except one that holds the value 13 somewhere."""

    def forward(self, x):
        if bool((x == 13.0).any()):
            raise RuntimeError("marker: this test model refuses the value 13")
        return x * 2.0 + 1.0


class ZeroDivision(nn.Module):
    """Fails on every input with an error that is not the input's fault, from code that
    mentions shapes (TorchScript's traceback shows that code before the error)."""

    def forward(self, x):
        d = (x.reshape(x.shape) * 0).to(torch.int64)
        return (torch.ones_like(d) // d).to(torch.float32)


class Identity(nn.Module):
    def forward(self, x):
        return x


def make(cls, path, seed=0, **kwargs):
    """Build `cls` with weights drawn from `seed`, script it and save it to `path`."""
    torch.manual_seed(seed)
    module = cls(**kwargs).eval()
    torch.jit.script(module).save(path)
    return path


class Reference:
    """The same .pt file run in this process, the way a user would check it."""

    def __init__(self, path):
        self.module = torch.jit.load(path, map_location="cpu")
        self.module.eval()

    def __call__(self, array):
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))).numpy()
