#!/usr/bin/env python3
"""Split learning on real data: a small CNN for Fashion-MNIST, cut in three.

    head   (client)  conv 1->16, ReLU, max-pool            -> 16 x 14 x 14 activations
    trunk  (daemon)  conv 16->32, ReLU, max-pool, conv 32->32, ReLU  -> 32 x 7 x 7
    tail   (client)  flatten, linear 1568 -> 10, cross-entropy

The same model, with the same initial weights (one seed), the same batches and the same
optimizer (SGD with momentum on both sides, the learning rate decaying linearly to zero
over the run), is trained locally in one process and split
across splitlearnd with the activations and gradients on the wire as float32, float16 or
int8 blockwise. The data is Debian's `dataset-fashion-mnist` package (70,000 labelled
28x28 images; 60,000 to train, 10,000 to test).

    python3 fashion_mnist_split.py export --out /tmp/fmnist       # trunk.pt + splitlearnd.yaml
    splitlearnd --config /tmp/fmnist/splitlearnd.yaml &
    python3 fashion_mnist_split.py compare --target 127.0.0.1:50061 --json /tmp/fmnist/results.json
    python3 fashion_mnist_split.py plot --json /tmp/fmnist/results.json --out loss.png

`compare` runs the local baseline and the three encodings (2 epochs, batch 64 by
default) and prints test accuracy, bytes on the wire per step and time; `train` runs one
of them. `--depth N` keeps N micro-batches in flight (pipelined training, see
splitlearnd_client.SplitTrainer). The config serves one copy of the trunk per encoding,
so that each split run starts from the same weights as the local one.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))
from splitlearnd_client import Client, SplitTrainer  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"  # where dataset-fashion-mnist puts it
SEED = 20261202
LEARNING_RATE = 0.05
MOMENTUM = 0.9
INT8_BLOCK = 64
ENCODINGS = ("float32", "float16", "int8")
MODEL_PREFIX = "fmnist-"
TRUNK_FILE = "trunk.pt"
LISTEN = "127.0.0.1:50061"
MEAN, STD = 0.2860, 0.3530  # of the training images


# ------------------------------------------------------------------ data

def read_idx(path: str) -> torch.Tensor:
    """An IDX file (gzip'ed) as a uint8 tensor."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def load(data_dir: str, split: str, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised images [N, 1, 28, 28] and labels [N] of "train" or "t10k"."""
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = (images.float().div(255).sub(MEAN).div(STD)).unsqueeze(1)
    return x, labels.long()


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, epoch: int, seed: int):
    """The same shuffled batches for every run of the same seed and epoch."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    for i in range(0, len(x), batch):
        idx = order[i:i + batch]
        yield x[idx], y[idx]


# ------------------------------------------------------------------ the model

def build(seed: int = SEED) -> Tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    trunk = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
    tail = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    return head, trunk, tail


def daemon_config(model_root: str, listen: str = LISTEN) -> dict:
    """One copy of the trunk per encoding, each trained by SGD as the local run is."""
    models = []
    for enc in ENCODINGS:
        models.append({
            "id": MODEL_PREFIX + enc, "path": TRUNK_FILE, "device": "cpu",
            "compute_dtype": "float32",  # float16 arrives on the wire, the trunk computes in float32
            "warmup": {"inputs": [{"shape": [1, 16, 14, 14], "dtype": "float32"}], "runs": 1},
            "training": {"enabled": True, "optimizer": "sgd", "learning_rate": LEARNING_RATE,
                         "momentum": MOMENTUM, "max_graphs": 16},
        })
    return {
        "server": {"listen": listen, "drain_timeout_s": 10, "watch_config": False, "log_level": "info"},
        "model_root": model_root,
        "devices": {"cpu": {"intra_op_threads": 1, "queue_capacity": 256}},
        "models": models,
    }


def export(out_dir: str, seed: int = SEED, listen: str = LISTEN) -> str:
    """Writes trunk.pt (the trunk's initial weights) and splitlearnd.yaml; returns the config's path."""
    os.makedirs(out_dir, exist_ok=True)
    _, trunk, _ = build(seed)
    torch.jit.script(trunk).save(os.path.join(out_dir, TRUNK_FILE))
    path = os.path.join(out_dir, "splitlearnd.yaml")
    with open(path, "w") as f:
        json.dump(daemon_config(os.path.abspath(out_dir), listen), f, indent=2)  # JSON is valid YAML
    return path


# ------------------------------------------------------------------ training

def accuracy(forward, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((forward(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def learning_rate(step: int, total: int) -> float:
    """Linear decay to zero over the run, the same on the client and on the daemon."""
    return LEARNING_RATE * (1.0 - step / total)


def set_learning_rate(opt: torch.optim.Optimizer, lr: float):
    for group in opt.param_groups:
        group["lr"] = lr


def train_local(train, test, epochs: int, batch: int, seed: int = SEED) -> Dict:
    head, trunk, tail = build(seed)
    model = nn.Sequential(head, trunk, tail)
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    total = epochs * -(-len(train[0]) // batch)
    losses, started = [], time.monotonic()
    for epoch in range(epochs):
        for xb, yb in batches(*train, batch, epoch, seed):
            set_learning_rate(opt, learning_rate(len(losses), total))
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    seconds = time.monotonic() - started
    return {"encoding": "local", "losses": losses, "steps": len(losses), "train_seconds": seconds,
            "accuracy": accuracy(model, *test), "bytes_per_step": 0}


def train_split(client: Client, encoding: str, train, test, epochs: int, batch: int, depth: int = 1,
                seed: int = SEED, model_id: Optional[str] = None) -> Dict:
    head, _, tail = build(seed)  # the daemon serves the trunk of the same build
    model_id = model_id or MODEL_PREFIX + encoding
    opt = torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=LEARNING_RATE, momentum=MOMENTUM)
    wire = {"int8_block": INT8_BLOCK} if encoding == "int8" else {"wire_dtype": getattr(torch, encoding)}
    trainer = SplitTrainer(client, model_id, head, tail, F.cross_entropy, opt, depth=depth, timeout=120, **wire)
    total = epochs * -(-len(train[0]) // batch)
    client.reset_stats()
    losses, sent, started = [], 0, time.monotonic()
    for epoch in range(epochs):
        for xb, yb in batches(*train, batch, epoch, seed):
            # The rate of the step this micro-batch makes on each side (with pipelining,
            # the client's step comes later, and takes the rate of its turn).
            trainer.learning_rate = learning_rate(sent, total)
            set_learning_rate(opt, learning_rate(trainer.steps, total))
            sent += 1
            losses += trainer.step(xb, yb)
    losses += trainer.flush()
    seconds = time.monotonic() - started
    stats = client.stats

    def forward(xb):  # the trained split model, with the same encoding on the wire
        h = head(xb)
        if encoding == "int8":
            z = client.compute(h, model_id, int8_block=INT8_BLOCK, timeout=120).output
        else:
            z = client.compute(h.to(getattr(torch, encoding)), model_id, timeout=120).output.float()
        return tail(z)

    return {"encoding": encoding, "depth": depth, "losses": losses, "steps": len(losses), "train_seconds": seconds,
            "accuracy": accuracy(forward, *test),
            "bytes_per_step": (stats.bytes_sent + stats.bytes_received) / max(1, len(losses)),
            "bytes_sent_per_step": stats.bytes_sent / max(1, len(losses)),
            "bytes_received_per_step": stats.bytes_received / max(1, len(losses))}


def summary(results: List[Dict]) -> str:
    local = next((r for r in results if r["encoding"] == "local"), None)
    lines = ["| run | test accuracy | vs local | bytes on the wire per step | train time |",
             "|---|---|---|---|---|"]
    for r in results:
        delta = "" if local is None or r is local else f"{r['accuracy'] - local['accuracy']:+.2f} pt"
        wire = "—" if r["encoding"] == "local" else f"{r['bytes_per_step'] / 1024:,.1f} KiB"
        name = "local (whole model)" if r["encoding"] == "local" else f"split, {r['encoding']} on the wire"
        lines.append(f"| {name} | {r['accuracy']:.2f} % | {delta} | {wire} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def plot(results: List[Dict], png: str, window: int = 50):
    """The loss curves (a moving average over `window` steps) as a PNG, with gnuplot."""
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("gnuplot"):
        raise SystemExit("plot: gnuplot is not installed (Debian: gnuplot-nox)")
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for i, r in enumerate(results):
            losses = torch.tensor(r["losses"])
            smooth = losses.unfold(0, window, 1).mean(1) if len(losses) >= window else losses
            data = os.path.join(tmp, f"{i}.dat")
            with open(data, "w") as f:
                f.writelines(f"{step + window} {v:.5f}\n" for step, v in enumerate(smooth.tolist()))
            name = "local" if r["encoding"] == "local" else f"split, {r['encoding']}"
            lines.append(f'"{data}" using 1:2 with lines lw 2 title "{name} ({r["accuracy"]:.2f} %)"')
        script = "\n".join([
            'set terminal pngcairo size 900,520 font "DejaVu Sans,11"', f'set output "{png}"',
            f'set title "Fashion-MNIST CNN, training loss (moving average of {window} steps), test accuracy in brackets"',
            'set xlabel "step (batch 64)"', 'set ylabel "cross-entropy"', 'set grid', 'set key top right',
            "plot " + ", ".join(lines)])
        subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write trunk.pt and splitlearnd.yaml")
    e.add_argument("--out", required=True)
    e.add_argument("--listen", default=LISTEN)
    pl = sub.add_parser("plot", help="the loss curves of a --json file as a PNG (gnuplot)")
    pl.add_argument("--json", required=True)
    pl.add_argument("--out", required=True)
    for name in ("train", "compare"):
        s = sub.add_parser(name)
        s.add_argument("--target", default=LISTEN)
        s.add_argument("--data", default=DATA_DIR, help="folder of the IDX files")
        s.add_argument("--epochs", type=int, default=2)
        s.add_argument("--batch", type=int, default=64)
        s.add_argument("--depth", type=int, default=1, help="micro-batches in flight")
        s.add_argument("--limit", type=int, default=0, help="use only the first N training images")
        s.add_argument("--threads", type=int, default=1, help="torch threads of this process")
        s.add_argument("--json", help="write the results (loss curves included) here")
        if name == "train":
            s.add_argument("--encoding", choices=("local",) + ENCODINGS, default="float32")
    args = p.parse_args()
    if args.command == "export":
        print(export(args.out, listen=args.listen))
        return
    if args.command == "plot":
        with open(args.json) as f:
            plot(json.load(f), args.out)
        return
    torch.set_num_threads(args.threads)
    train = load(args.data, "train", args.limit or None)
    test = load(args.data, "t10k")
    runs = ("local",) + ENCODINGS if args.command == "compare" else (args.encoding,)
    results = []
    with Client(args.target, timeout=120) as client:
        for enc in runs:
            if enc == "local":
                r = train_local(train, test, args.epochs, args.batch)
            else:
                r = train_split(client, enc, train, test, args.epochs, args.batch, args.depth)
            print(f"{enc}: accuracy {r['accuracy']:.2f} %, {r['steps']} steps in {r['train_seconds']:.1f} s, "
                  f"{r['bytes_per_step']:,.0f} bytes per step", flush=True)
            results.append(r)
    print(summary(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
