#!/usr/bin/env python3
"""A small GPT-2-style language model, cut in three for split learning.

    bottom  (client)  token + position embeddings, decoder block 0
    trunk   (server)  decoder blocks 1-4, exported with torch.jit.script for splitlearnd
    top     (client)  decoder block 5, final LayerNorm, LM head

The whole model is literally bottom -> trunk -> top: `GPT2.trunk` is the very module
that is scripted and served, so the daemon computes what the trunk inside the whole
model computes (same weights, no dropout anywhere).

Every decoder block takes an optional (key, value) cache and returns its own, so
generation with a cache is exact: the cache of a block holds keys and values of shape
[batch, heads, seq_len, head_dim], which is also what splitlearnd's KV-cache protocol
carries (past_key_values / present_key_values, or a server-side session).

Weights are random with a fixed seed: nothing is downloaded.

Run as a script to write everything a daemon needs into a folder:

    python3 gpt2_split.py --out /tmp/gpt2-split
    splitlearnd --config /tmp/gpt2-split/splitlearnd.yaml
"""
import argparse
import json
import math
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

VOCAB = 512
HIDDEN = 256
HEADS = 4
LAYERS = 6
MAX_POSITIONS = 128
FFN = 4 * HIDDEN
SEED = 1234

# Model ids used in the exported config (and by demo.py).
INFER_MODEL = "gpt2-trunk"
TRAIN_MODEL = "gpt2-trunk-train"
TRUNK_FILE = "trunk.pt"
WHOLE_FILE = "gpt2_whole.pt"
CHECKPOINT_FILE = "trunk.ckpt.pt"

KV = Tuple[Tensor, Tensor]


def _attend_sdpa(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)


def _attend_explicit(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, scale: float) -> Tensor:
    att = torch.matmul(q, k.transpose(-2, -1)) * scale
    att = att.masked_fill(visible.logical_not(), float("-inf"))
    return torch.matmul(torch.softmax(att, dim=-1), v)


# PyTorch 2.x's fused attention (aten::scaled_dot_product_attention, what its own
# modules and Hugging Face models call) where this PyTorch has it; the same product
# spelled out on PyTorch 1.x. The scripted trunk calls whichever is bound here, so a
# trunk saved by PyTorch 2.x needs splitlearnd built on libtorch 2.x.
attend = _attend_sdpa if hasattr(F, "scaled_dot_product_attention") else _attend_explicit


class Block(nn.Module):
    """Pre-LN decoder block: x + attn(ln1(x)); x + mlp(ln2(x)); causal, with a KV cache."""

    def __init__(self, hidden: int = HIDDEN, heads: int = HEADS, ffn: int = FFN):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, ffn)
        self.out = nn.Linear(ffn, hidden)

    def forward(self, x: Tensor, past: Optional[KV] = None) -> Tuple[Tensor, KV]:
        b, t, c = x.size(0), x.size(1), x.size(2)
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q = q.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        s = k.size(2)
        # Query i sits at absolute position (s - t + i) and sees keys 0 .. s - t + i.
        visible = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
        y = attend(q, k, v, visible, self.scale).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return x, (k, v)


class Bottom(nn.Module):
    """Client side, first part: embeddings and block 0."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, HIDDEN)
        self.wpe = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.block = Block()

    def forward(self, ids: Tensor, past: Optional[KV] = None) -> Tuple[Tensor, KV]:
        start = 0 if past is None else past[0].size(2)
        positions = torch.arange(start, start + ids.size(1), device=ids.device)
        x = self.wte(ids) + self.wpe(positions).unsqueeze(0)
        return self.block(x, past)


class Trunk(nn.Module):
    """Server side: blocks 1-4, with the forward() signature splitlearnd serves.

    splitlearnd matches `hidden_states` to the request's data, passes the request's
    past_key_values (or a session's cache) to the List[Tuple[Tensor, Tensor]]
    argument and the request's use_cache flag to `use_cache`. The first tensor of
    the answer is the output; the list becomes present_key_values.
    """

    def __init__(self, blocks: List[Block]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, hidden_states: Tensor, past_key_values: Optional[List[Tuple[Tensor, Tensor]]] = None,
                use_cache: bool = False) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        presents: List[Tuple[Tensor, Tensor]] = []
        x = hidden_states
        i = 0
        for block in self.blocks:
            past: Optional[Tuple[Tensor, Tensor]] = None
            if past_key_values is not None and len(past_key_values) > 0:
                past = past_key_values[i]
            x, present = block(x, past)
            if use_cache:
                presents.append(present)
            i += 1
        return x, presents


class Top(nn.Module):
    """Client side, last part: block 5, final LayerNorm and the LM head."""

    def __init__(self):
        super().__init__()
        self.block = Block()
        self.ln_f = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, x: Tensor, past: Optional[KV] = None) -> Tuple[Tensor, KV]:
        x, present = self.block(x, past)
        return self.head(self.ln_f(x)), present


class GPT2(nn.Module):
    """The whole model: bottom -> trunk -> top."""

    def __init__(self):
        super().__init__()
        self.bottom = Bottom()
        self.trunk = Trunk([Block() for _ in range(LAYERS - 2)])
        self.top = Top()

    def forward(self, ids: Tensor, past_key_values: Optional[List[KV]] = None,
                use_cache: bool = False) -> Tuple[Tensor, List[KV]]:
        """Logits for `ids`; with a cache of all LAYERS blocks, ids are the new tokens only."""
        pb = pt = None
        pm: Optional[List[KV]] = None
        if past_key_values:
            pb, pm, pt = past_key_values[0], past_key_values[1:-1], past_key_values[-1]
        h, cb = self.bottom(ids, pb)
        h, cm = self.trunk(h, pm, use_cache)
        logits, ct = self.top(h, pt)
        return logits, ([cb] + cm + [ct] if use_cache else [])


def init_weights(module: nn.Module):
    """GPT-2's scheme: normal(0, 0.02) weights, zero biases, unit LayerNorms; the LM
    head is drawn wider (0.1) so that greedy decoding has clear winners, which keeps
    token-for-token comparisons meaningful."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, Top):
            nn.init.normal_(m.head.weight, 0.0, 0.1)


def build_model(seed: int = SEED) -> GPT2:
    """The reference model: random weights drawn from `seed`, eval mode."""
    torch.manual_seed(seed)
    model = GPT2()
    init_weights(model)
    return model.eval()


def script_trunk(model: GPT2) -> torch.jit.ScriptModule:
    """The trunk as TorchScript (a copy of the model's current trunk weights)."""
    return torch.jit.script(model.trunk.eval())


def language_batch(step: int, batch: int = 8, length: int = 33, seed: int = SEED) -> Tensor:
    """Training data with something to learn: each row counts up by a fixed stride
    (mod VOCAB) from a random start, so the next token follows from the last two."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    start = torch.randint(0, VOCAB, (batch, 1), generator=g)
    stride = torch.randint(1, 8, (batch, 1), generator=g)
    return (start + stride * torch.arange(length).unsqueeze(0)) % VOCAB


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def greedy_generate(model: GPT2, prompt: Tensor, new_tokens: int) -> List[int]:
    """Reference: the whole model in this process, with its own KV cache."""
    out: List[int] = []
    with torch.no_grad():
        logits, cache = model(prompt, None, True)
        for i in range(new_tokens):
            token = int(logits[0, -1].argmax())
            out.append(token)
            if i + 1 == new_tokens:
                break
            logits, cache = model(torch.tensor([[token]]), cache, True)
    return out


def greedy_generate_no_cache(model: GPT2, prompt: Tensor, new_tokens: int) -> List[int]:
    """The same without any cache (whole sequence every step): a check of the cache."""
    ids = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            logits, _ = model(ids, None, False)
            token = int(logits[0, -1].argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return ids[0, prompt.size(1):].tolist()


def daemon_config(model_root: str, learning_rate: float, listen: str = "127.0.0.1:50051",
                  sessions: Optional[dict] = None) -> dict:
    """A splitlearnd config serving the trunk twice: for inference (sessions on) and
    for training (SGD, checkpointed next to the shard)."""
    warmup = {"inputs": [{"shape": [1, 8, HIDDEN], "dtype": "float32"}], "runs": 1}
    infer = {"id": INFER_MODEL, "path": TRUNK_FILE, "device": "cpu", "default": True, "warmup": warmup,
             "batching": {"max_batch_size": 1, "max_delay_us": 0}}
    if sessions:
        infer["sessions"] = sessions
    train = {"id": TRAIN_MODEL, "path": TRUNK_FILE, "device": "cpu", "warmup": warmup,
             "batching": {"max_batch_size": 1, "max_delay_us": 0},
             "training": {"enabled": True, "optimizer": "sgd", "learning_rate": learning_rate,
                          "checkpoint_path": CHECKPOINT_FILE}}
    return {
        "server": {"listen": listen, "drain_timeout_s": 10, "watch_config": False, "log_level": "info"},
        "model_root": model_root,
        "devices": {"cpu": {"intra_op_threads": 1, "queue_capacity": 256}},
        "models": [infer, train],
    }


DEFAULT_LR = 0.05


def export(out_dir: str, seed: int = SEED, learning_rate: float = DEFAULT_LR, listen: str = "127.0.0.1:50051"):
    """Writes trunk.pt, the whole model's weights and splitlearnd.yaml into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    model = build_model(seed)
    script_trunk(model).save(os.path.join(out_dir, TRUNK_FILE))
    torch.save(model.state_dict(), os.path.join(out_dir, WHOLE_FILE))
    config_path = os.path.join(out_dir, "splitlearnd.yaml")
    with open(config_path, "w") as f:
        # JSON is valid YAML.
        json.dump(daemon_config(os.path.abspath(out_dir), learning_rate, listen), f, indent=2)
    return config_path


def load_whole(model_dir: str) -> GPT2:
    model = GPT2()
    model.load_state_dict(torch.load(os.path.join(model_dir, WHOLE_FILE)))
    return model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for trunk.pt, gpt2_whole.pt and splitlearnd.yaml")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--learning-rate", type=float, default=DEFAULT_LR)
    p.add_argument("--listen", default="127.0.0.1:50051")
    args = p.parse_args()
    config = export(args.out, args.seed, args.learning_rate, args.listen)
    print(f"wrote {args.out}/{TRUNK_FILE}, {args.out}/{WHOLE_FILE} and {config}")
    print(f"start the daemon:  splitlearnd --config {config}")


if __name__ == "__main__":
    main()
