#!/usr/bin/env python3
"""Split-learning client benchmarks for bench/shaped_link.sh: training steps per second
and generation tokens per second, one JSON line per run, and the report of them.

    split_link.py make-gpt --out gpt.pt [--blocks 1]
    split_link.py train --target HOST:PORT --kind cnn|gpt --model ID --encoding float32|float16|int8
                        [--depth N] [--steps N] [--warmup N]
    split_link.py generate --target HOST:PORT --model ID --mode legacy|session [--encoding float32|int8]
    split_link.py report --results RESULTS.jsonl --markdown OUT.md --plots DIR

Trunks: `cnn` is the Fashion-MNIST CNN of examples/python/fashion_mnist_split.py (batch 64
of real images; its head and tail here); `gpt` is a stack of GPT-2-style decoder blocks of
width 768 (12 heads, feed-forward 3072; examples/python/gpt2_split.py's Block) on random
hidden states of batch 8 x 128 tokens, with a LayerNorm as the head and as the tail and an
MSE loss. Training goes through splitlearnd_client.SplitTrainer.
"""
import argparse
import json
import os
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "python"))
from splitlearnd_client import Client, SplitTrainer  # noqa: E402

GPT_HIDDEN, GPT_HEADS, GPT_FFN = 768, 12, 3072
GPT_BATCH, GPT_TOKENS = 8, 128
INT8_BLOCK = 64


def make_gpt(out: str, blocks: int, seed: int = 7):
    import gpt2_split as g
    torch.manual_seed(seed)
    trunk = g.Trunk([g.Block(GPT_HIDDEN, GPT_HEADS, GPT_FFN) for _ in range(blocks)]).eval()
    torch.jit.script(trunk).save(out)


def parts(kind: str):
    """(head, tail, loss_fn, micro-batches generator) of a trunk kind."""
    if kind == "cnn":
        import fashion_mnist_split as fm
        head, _, tail = fm.build()
        x, y = fm.load(fm.DATA_DIR, "train", limit=64 * 64)

        def micro_batches():
            epoch = 0
            while True:
                yield from fm.batches(x, y, 64, epoch, fm.SEED)
                epoch += 1
        return head, tail, F.cross_entropy, micro_batches()
    torch.manual_seed(3)
    head, tail = nn.LayerNorm(GPT_HIDDEN), nn.LayerNorm(GPT_HIDDEN)
    x = torch.randn(GPT_BATCH, GPT_TOKENS, GPT_HIDDEN)
    target = torch.randn(GPT_BATCH, GPT_TOKENS, GPT_HIDDEN)

    def micro_batches():
        while True:
            yield x, target
    return head, tail, F.mse_loss, micro_batches()


def train(args) -> dict:
    head, tail, loss_fn, data = parts(args.kind)
    opt = torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=1e-3)
    wire = {"int8_block": INT8_BLOCK} if args.encoding == "int8" else {"wire_dtype": getattr(torch, args.encoding)}
    with Client(args.target, timeout=600) as client:
        trainer = SplitTrainer(client, args.model, head, tail, loss_fn, opt, depth=args.depth, timeout=600, **wire)
        for _ in range(args.warmup):
            trainer.step(*next(data))
        trainer.flush()
        client.reset_stats()
        started = time.monotonic()
        for _ in range(args.steps):
            trainer.step(*next(data))
        trainer.flush()
        seconds = time.monotonic() - started
        stats = client.stats
    return {"run": "train", "kind": args.kind, "encoding": args.encoding, "depth": args.depth, "steps": args.steps,
            "seconds": seconds, "steps_per_s": args.steps / seconds,
            "bytes_per_step": (stats.bytes_sent + stats.bytes_received) / args.steps}


def generate(args) -> dict:
    torch.manual_seed(5)
    prompt = torch.randn(1, args.prompt, GPT_HIDDEN)
    tokens = [torch.randn(1, 1, GPT_HIDDEN) for _ in range(args.tokens)]
    block = INT8_BLOCK if args.encoding == "int8" else 0
    with Client(args.target, timeout=600) as client:
        if args.mode == "session":
            with client.open_session(args.model) as session:
                session.compute(prompt, int8_block=block)
                client.reset_stats()
                started = time.monotonic()
                for t in tokens:
                    session.compute(t, int8_block=block)
                seconds = time.monotonic() - started
        else:
            cache = client.compute(prompt, args.model, use_cache=True, int8_block=block).present_key_values
            client.reset_stats()
            started = time.monotonic()
            for t in tokens:
                cache = client.compute(t, args.model, past_key_values=cache, use_cache=True,
                                       int8_block=block).present_key_values
            seconds = time.monotonic() - started
        stats = client.stats
    return {"run": "generate", "mode": args.mode, "encoding": args.encoding, "prompt": args.prompt,
            "tokens": args.tokens, "seconds": seconds, "tokens_per_s": args.tokens / seconds,
            "bytes_per_token": (stats.bytes_sent + stats.bytes_received) / args.tokens}


# ------------------------------------------------------------------ report

def report(args):
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    rates = sorted({r["rate"] for r in rows}, key=lambda s: -float(s.rstrip("mbit")))
    out = []
    for kind, title in (("cnn", "Fashion-MNIST CNN, batch 64"),
                        ("gpt", f"GPT-style trunk, batch {GPT_BATCH} x {GPT_TOKENS} tokens x {GPT_HIDDEN}")):
        out += [f"#### {title}: training steps per second", "",
                "| link | server | encoding | depth 1 | depth 2 | depth 4 | KiB per step |", "|---|---|---|---|---|---|---|"]
        for rate in rates:
            for server in ("splitlearnd", "reference"):
                for enc in ("float32", "float16", "int8"):
                    sel = {r["depth"]: r for r in rows if r["run"] == "train" and r["kind"] == kind
                           and r["rate"] == rate and r["server"] == server and r["encoding"] == enc}
                    if not sel:
                        continue
                    cells = [f"{sel[d]['steps_per_s']:.3f}" if d in sel else "—" for d in (1, 2, 4)]
                    kib = next(iter(sel.values()))["bytes_per_step"] / 1024
                    out.append(f"| {rate} | {server} | {enc} | " + " | ".join(cells) + f" | {kib:,.0f} |")
        out.append("")
        for rate in rates:
            def sps(enc, d, kind=kind, rate=rate):
                return next((r["steps_per_s"] for r in rows if r["run"] == "train" and r["kind"] == kind
                             and r["rate"] == rate and r["server"] == "splitlearnd" and r["encoding"] == enc
                             and r["depth"] == d), None)
            ratios = []
            for d in (1, 2, 4):
                f32, i8, f16 = sps("float32", d), sps("int8", d), sps("float16", d)
                if f32 and i8 and f16:
                    ratios.append(f"depth {d}: int8 {i8 / f32:.2f}×, float16 {f16 / f32:.2f}×")
            if ratios:
                out.append(f"- {rate}, against float32 at the same depth: " + "; ".join(ratios) + ".")
        out.append("")
    gens = [r for r in rows if r["run"] == "generate"]
    if gens:
        out += ["#### GPT-style trunk: generation, batch 1", "",
                "| link | cache | encoding | tokens/s | KiB per token |", "|---|---|---|---|---|"]
        for r in gens:
            cache = "server session" if r["mode"] == "session" else "legacy KV (client holds it)"
            out.append(f"| {r['rate']} | {cache} | {r['encoding']} | {r['tokens_per_s']:.2f} | "
                       f"{r['bytes_per_token'] / 1024:,.1f} |")
        out.append("")
    with open(args.markdown, "w") as f:
        f.write("\n".join(out))
    if args.plots:
        plot(rows, rates, args.plots)


def plot(rows, rates, folder):
    import shutil
    import subprocess
    if not shutil.which("gnuplot"):
        print("split_link.py: gnuplot not found; no plots", file=sys.stderr)
        return
    os.makedirs(folder, exist_ok=True)
    for kind in ("cnn", "gpt"):
        data = os.path.join(folder, f"shaped-{kind}.dat")
        labels = []
        with open(data, "w") as f:
            for rate in rates:
                for enc in ("float32", "float16", "int8"):
                    vals = {r["depth"]: r["steps_per_s"] for r in rows if r["run"] == "train" and r["kind"] == kind
                            and r["rate"] == rate and r["server"] == "splitlearnd" and r["encoding"] == enc}
                    if vals:
                        labels.append(f"{rate} {enc}")
                        f.write(f'"{rate} {enc}" {vals.get(1, 0)} {vals.get(2, 0)} {vals.get(4, 0)}\n')
        png = os.path.join(folder, f"shaped-link-{kind}.png")
        script = "\n".join([
            'set terminal pngcairo size 900,480 font "DejaVu Sans,10"', f'set output "{png}"',
            'set style data histogram', 'set style histogram cluster gap 1', 'set style fill solid 0.8 border -1',
            'set ylabel "training steps/s"', 'set yrange [0:*]', 'set xtics rotate by -30', 'set grid ytics', 'set key top left',
            f'set title "{kind.upper()} trunk on a shaped link: steps/s by encoding and micro-batches in flight"',
            f'plot "{data}" using 2:xtic(1) title "depth 1", "" using 3 title "depth 2", "" using 4 title "depth 4"'])
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
        os.remove(data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("make-gpt")
    g.add_argument("--out", required=True)
    g.add_argument("--blocks", type=int, default=1)
    t = sub.add_parser("train")
    t.add_argument("--target", required=True)
    t.add_argument("--kind", choices=("cnn", "gpt"), required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--encoding", choices=("float32", "float16", "int8"), default="float32")
    t.add_argument("--depth", type=int, default=1)
    t.add_argument("--steps", type=int, default=8)
    t.add_argument("--warmup", type=int, default=2)
    n = sub.add_parser("generate")
    n.add_argument("--target", required=True)
    n.add_argument("--model", required=True)
    n.add_argument("--mode", choices=("legacy", "session"), required=True)
    n.add_argument("--encoding", choices=("float32", "int8"), default="float32")
    n.add_argument("--prompt", type=int, default=64)
    n.add_argument("--tokens", type=int, default=32)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--markdown", required=True)
    r.add_argument("--plots")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.command == "make-gpt":
        make_gpt(args.out, args.blocks)
    elif args.command == "train":
        print(json.dumps(train(args)), flush=True)
    elif args.command == "generate":
        print(json.dumps(generate(args)), flush=True)
    else:
        report(args)


if __name__ == "__main__":
    main()
