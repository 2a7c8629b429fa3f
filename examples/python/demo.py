#!/usr/bin/env python3
"""Split learning against a running splitlearnd, end to end.

The client keeps the bottom (embeddings + block 0) and the top (block 5 + LM head) of
a small GPT-2-style model; the daemon serves the trunk (blocks 1-4). The demo shows:

  1. a split forward gives the whole model's logits;
  2. greedy generation, token for token equal to the whole model, three ways:
     (a) legacy KV cache: the client sends the trunk's cache every step,
     (b) server-side session: the cache stays on the server,
     (c) the Generate stream: one call for the whole generation;
     with the bytes sent per generated token for (a) and (b);
  3. split training: bottom and top trained here with SGD, the trunk on the server,
     against the same training of the whole model.

Set it up (paths are examples):

    python3 examples/python/gpt2_split.py --out /tmp/gpt2-split
    build/daemon/splitlearnd --config /tmp/gpt2-split/splitlearnd.yaml &
    python3 examples/python/demo.py --address 127.0.0.1:50051 --model-dir /tmp/gpt2-split

The training part changes the served trunk (model gpt2-trunk-train) and the daemon
checkpoints it; run gpt2_split.py again (and delete trunk.ckpt.pt) for a fresh start.
"""
import argparse
import copy
import os
import sys
import time
from typing import List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpt2_split as g  # noqa: E402
from splitlearn_client import SplitLearnClient  # noqa: E402


# ------------------------------------------------------------------ inference

def split_logits(client: SplitLearnClient, model: g.GPT2, ids: torch.Tensor, model_id: str) -> torch.Tensor:
    """bottom here -> trunk on the daemon -> top here."""
    with torch.no_grad():
        h, _ = model.bottom(ids)
        trunk_out = client.compute(h, model_id=model_id).output
        logits, _ = model.top(trunk_out)
    return logits


class Generation:
    """Tokens of one greedy generation and what it cost on the wire."""

    def __init__(self, mode: str):
        self.mode = mode
        self.tokens: List[int] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.trunk_calls = 0
        self.session_tokens: List[int] = []  # what the server said it holds after each step
        self.seconds = 0.0

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_sent / max(1, len(self.tokens))


def _generate(client: SplitLearnClient, model: g.GPT2, prompt: torch.Tensor, new_tokens: int, mode: str,
              run_trunk) -> Generation:
    """Shared loop: the client runs bottom and top with their own caches; `run_trunk`
    runs the trunk on the new tokens' hidden states however the mode does it."""
    gen = Generation(mode)
    sent0, recv0 = client.bytes_sent, client.bytes_received
    start = time.monotonic()
    bottom_cache = top_cache = None
    ids = prompt
    with torch.no_grad():
        while len(gen.tokens) < new_tokens:
            h, bottom_cache = model.bottom(ids, bottom_cache)
            out = run_trunk(h)
            gen.trunk_calls += 1
            logits, top_cache = model.top(out, top_cache)
            token = int(logits[0, -1].argmax())
            gen.tokens.append(token)
            ids = torch.tensor([[token]])
    gen.seconds = time.monotonic() - start
    gen.bytes_sent = client.bytes_sent - sent0
    gen.bytes_received = client.bytes_received - recv0
    return gen


def generate_legacy(client: SplitLearnClient, model: g.GPT2, prompt: torch.Tensor, new_tokens: int,
                    model_id: str, empty_first_cache: bool = False) -> Generation:
    """(a) The legacy KV cache: past_key_values out, present_key_values back, every step.
    With `empty_first_cache` the first step already sends a cache: one (key, value) pair
    per trunk layer, each of sequence length 0, as clients that always send one do."""
    cache: List[Tuple[torch.Tensor, torch.Tensor]] = []
    if empty_first_cache:
        empty = torch.zeros(prompt.size(0), g.HEADS, 0, g.HIDDEN // g.HEADS)
        cache = [(empty, empty) for _ in range(len(model.trunk.blocks))]
    held: List[int] = []

    def run_trunk(h):
        nonlocal cache
        r = client.compute(h, model_id=model_id, past_key_values=cache, use_cache=True)
        cache = r.present_key_values
        held.append(cache[0][0].size(2) if cache else 0)
        return r.output

    gen = _generate(client, model, prompt, new_tokens, "legacy", run_trunk)
    gen.session_tokens = held
    return gen


def generate_session(client: SplitLearnClient, model: g.GPT2, prompt: torch.Tensor, new_tokens: int,
                     model_id: str) -> Generation:
    """(b) A server-side session: each step sends only the new tokens' hidden states."""
    held: List[int] = []
    with client.open_session(model_id) as session:
        def run_trunk(h):
            r = session.step(h)
            held.append(r.session_tokens)
            return r.output

        gen = _generate(client, model, prompt, new_tokens, "session", run_trunk)
    gen.session_tokens = held
    return gen


def generate_stream(client: SplitLearnClient, model: g.GPT2, prompt: torch.Tensor, new_tokens: int,
                    model_id: str) -> Generation:
    """(c) The Generate stream: the whole generation on one bidirectional call."""
    held: List[int] = []
    with client.generate(model_id) as stream:
        def run_trunk(h):
            r = stream.step(h)
            held.append(r.session_tokens)
            return r.output

        gen = _generate(client, model, prompt, new_tokens, "stream", run_trunk)
    gen.session_tokens = held
    return gen


# ------------------------------------------------------------------ training

def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The optimizers the daemon offers, with PyTorch's defaults (as the daemon uses them)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


class WholeTrainer:
    """The reference: the whole model trained in this process."""

    def __init__(self, initial: g.GPT2, lr: float, optimizer: str = "sgd"):
        self.model = copy.deepcopy(initial).train()
        self.opt = make_optimizer(optimizer, self.model.parameters(), lr)

    def _loss(self, index: int) -> torch.Tensor:
        batch = g.language_batch(index)
        logits, _ = self.model(batch[:, :-1])
        return g.next_token_loss(logits, batch[:, 1:])

    def step(self, index: int) -> float:
        return self.accumulated_step([index])[0]

    def accumulated_step(self, indices: List[int]) -> List[float]:
        """Gradients of several batches summed, then one optimizer step."""
        self.opt.zero_grad()
        losses = []
        for index in indices:
            loss = self._loss(index)
            loss.backward()
            losses.append(float(loss))
        self.opt.step()
        return losses


class SplitTrainer:
    """Split training: bottom and top here with their own optimizer, the trunk on the daemon.

    One step: bottom forward here; trunk forward on the daemon in training mode (it
    keeps the graph under a forward_id); top forward, loss and backward here; the
    gradient of the trunk's output goes to ComputeBackward, which returns the gradient
    of the trunk's input (and steps the server's optimizer); that gradient finishes the
    backward through the bottom; then the local optimizer steps.
    """

    def __init__(self, initial: g.GPT2, lr: float, model_id: str, optimizer: str = "sgd"):
        self.bottom = copy.deepcopy(initial.bottom).train()
        self.top = copy.deepcopy(initial.top).train()
        self.lr = lr
        self.model_id = model_id
        self.opt = make_optimizer(optimizer, list(self.bottom.parameters()) + list(self.top.parameters()), lr)
        self.last_forward_id: Optional[str] = None

    def _forward_backward(self, client: SplitLearnClient, index: int, forward_id: Optional[str],
                          send_learning_rate: bool, accumulation: Optional[int]) -> float:
        batch = g.language_batch(index)
        h_in, _ = self.bottom(batch[:, :-1])
        r = client.compute(h_in, model_id=self.model_id, training=True, forward_id=forward_id)
        if not r.forward_id:
            raise RuntimeError("the daemon answered a training forward without a forward_id")
        if forward_id is not None and r.forward_id != forward_id:
            raise RuntimeError(f"the daemon changed the client's forward_id {forward_id!r} to {r.forward_id!r}")
        self.last_forward_id = r.forward_id
        h_out = r.output.requires_grad_(True)
        logits, _ = self.top(h_out)
        loss = g.next_token_loss(logits, batch[:, 1:])
        loss.backward()  # into the top's parameters and h_out.grad
        grad_in = client.backward(h_out.grad, r.forward_id, model_id=self.model_id,
                                  learning_rate=self.lr if send_learning_rate else None,
                                  accumulation_step=accumulation)
        if grad_in.shape != h_in.shape:
            raise RuntimeError(f"input gradient has shape {list(grad_in.shape)}, the input {list(h_in.shape)}")
        h_in.backward(grad_in)  # into the bottom's parameters
        return float(loss)

    def step(self, client: SplitLearnClient, index: int, forward_id: Optional[str] = None,
             send_learning_rate: bool = False) -> float:
        self.opt.zero_grad()
        loss = self._forward_backward(client, index, forward_id, send_learning_rate, None)
        self.opt.step()
        return loss

    def accumulated_step(self, client: SplitLearnClient, indices: List[int]) -> List[float]:
        """Several batches, gradients summed on both sides, one optimizer step: the
        daemon steps on every len(indices)-th backward (accumulation_step)."""
        self.opt.zero_grad()
        losses = [self._forward_backward(client, i, None, False, len(indices)) for i in indices]
        self.opt.step()
        return losses


# ------------------------------------------------------------------ the story

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="127.0.0.1:50051", help="the daemon's ComputeService")
    p.add_argument("--model-dir", help="folder written by gpt2_split.py (default: rebuild the model from --seed)")
    p.add_argument("--seed", type=int, default=g.SEED)
    p.add_argument("--infer-model", default=g.INFER_MODEL)
    p.add_argument("--train-model", default=g.TRAIN_MODEL)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--learning-rate", type=float, default=g.DEFAULT_LR,
                   help="must match the training model's learning_rate in the daemon's config")
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    if args.model_dir and os.path.exists(os.path.join(args.model_dir, g.WHOLE_FILE)):
        model = g.load_whole(args.model_dir)
    else:
        model = g.build_model(args.seed)
    client = SplitLearnClient(args.address)
    ok = True

    print(f"== 1. split forward through {args.address} ({args.infer_model})")
    ids = torch.randint(0, g.VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(ids)
    split = split_logits(client, model, ids, args.infer_model)
    diff = float((split - whole).abs().max())
    ok &= diff <= 1e-4
    print(f"   logits {list(split.shape)}, max |split - whole| = {diff:.3g}")

    print(f"== 2. greedy generation of {args.tokens} tokens")
    prompt = torch.randint(0, g.VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    want = g.greedy_generate(model, prompt, args.tokens)
    print(f"   whole model          {want}")
    per_token = {}
    for fn in (generate_legacy, generate_session, generate_stream):
        gen = fn(client, model, prompt, args.tokens, args.infer_model)
        per_token[gen.mode] = gen.bytes_per_token
        same = gen.tokens == want
        ok &= same
        print(f"   ({gen.mode:7s}) {'same' if same else 'DIFFERENT'}  {gen.bytes_per_token:10.0f} bytes sent/token, "
              f"{gen.bytes_received / len(gen.tokens):10.0f} received/token, {gen.seconds:.2f} s")
        if not same:
            print(f"   {gen.mode:20s} {gen.tokens}")
    print(f"   bytes sent per generated token: (a) legacy cache {per_token['legacy']:.0f}, "
          f"(b) server session {per_token['session']:.0f} ({per_token['legacy'] / per_token['session']:.0f}x less)")

    if not args.skip_training:
        print(f"== 3. {args.steps} steps of split training ({args.train_model}), SGD lr={args.learning_rate}")
        whole_t = WholeTrainer(model, args.learning_rate)
        split_t = SplitTrainer(model, args.learning_rate, args.train_model)
        print("   step   whole      split      |diff|")
        for i in range(args.steps):
            lw = whole_t.step(i)
            ls = split_t.step(client, i)
            ok &= abs(lw - ls) <= 1e-3
            print(f"   {i + 1:4d}   {lw:.6f}   {ls:.6f}   {abs(lw - ls):.2e}")
            if i == 0 and abs(lw - ls) > 1e-3:
                print("   (the served trunk is not the fresh one: a checkpoint of an earlier run? "
                      "delete trunk.ckpt.pt and restart the daemon)")
        try:
            path, steps = client.save_checkpoint(args.train_model)
            print(f"   checkpoint: {path} ({steps} optimizer steps)")
        except Exception as e:  # noqa: BLE001 - the demo goes on
            print(f"   checkpoint failed: {e}")
    client.close()
    print("all matched" if ok else "SOMETHING DIFFERED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
