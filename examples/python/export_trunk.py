#!/usr/bin/env python3
"""Export a trunk both ways splitlearnd serves it.

    trunk.pt    TorchScript (torch.jit.script): inference, batching, KV caches,
                sessions, training. Any PyTorch; a file from PyTorch 2.x needs
                splitlearnd built on libtorch 2.x (docs/models.md).
    trunk.pt2   AOTInductor package (torch.export + aoti_compile_and_package):
                inference and batching only, compiled ahead of time. PyTorch 2.6 or
                later, and splitlearnd built on libtorch 2.6 or later.

The trunk is a stack of PyTorch's own nn.TransformerEncoderLayer (random weights,
fixed seed): what a user who splits a transformer serves. Run as a script to write
both files and a config that serves them:

    python3 export_trunk.py --out /tmp/trunk [--layers 4 --hidden 768 --heads 12]
    splitlearnd --config /tmp/trunk/splitlearnd.yaml

For your own model, use `save_torchscript` and `save_aoti_package` below:
save_aoti_package writes the `splitlearnd.inputs` metadata that the daemon needs to
check requests against the package (a compiled package does not check its inputs).
"""
import argparse
import json
import os

import torch
from torch import nn

SEED = 1234


def encoder_trunk(layers=4, hidden=768, heads=12, ffn=None, seed=SEED):
    """nn.TransformerEncoder of `layers` nn.TransformerEncoderLayer, batch first, in
    eval mode (no dropout)."""
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model=hidden, nhead=heads, dim_feedforward=ffn or 4 * hidden, dropout=0.0,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False).eval()


def save_torchscript(module, path):
    torch.jit.script(module).save(path)


_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
           torch.int64: "int64", torch.int32: "int32", torch.bool: "bool"}


def inputs_metadata(example_inputs, dynamic):
    """The `splitlearnd.inputs` text: name:dtype:dims for each input, where a dynamic
    dimension is SYMBOL=MIN..MAX (docs/models.md)."""
    items = []
    for name, t in example_inputs.items():
        dims = []
        for d, size in enumerate(t.shape):
            spec = dynamic.get(name, {}).get(d)
            dims.append(f"{spec[0]}={spec[1]}..{spec[2]}" if spec else str(size))
        items.append(f"{name}:{_DTYPES[t.dtype]}:{'x'.join(dims)}")
    return ";".join(items)


def save_aoti_package(module, example_inputs, dynamic, path, output_names=None):
    """Exports `module` with torch.export and compiles it into an AOTInductor package.

    example_inputs: {argument name: example tensor}, in forward()'s order.
    dynamic: {argument name: {dimension: (symbol, min, max)}}; dimensions that share a
        symbol are one dimension (the batch dimension of every input, say). An example
        size of a dynamic dimension must be at least 2 (export specialises 0 and 1).
    """
    symbols = {}
    shapes = {}
    for name in example_inputs:
        shapes[name] = {}
        for d, (symbol, lo, hi) in dynamic.get(name, {}).items():
            if symbol not in symbols:
                symbols[symbol] = torch.export.Dim(symbol, min=lo, max=hi)
            shapes[name][d] = symbols[symbol]
    program = torch.export.export(module, args=tuple(example_inputs.values()),
                                  dynamic_shapes=tuple(shapes[n] or None for n in example_inputs))
    metadata = {"splitlearnd.inputs": inputs_metadata(example_inputs, dynamic)}
    if output_names:
        metadata["splitlearnd.outputs"] = ",".join(output_names)
    return torch._inductor.aoti_compile_and_package(program, package_path=os.path.abspath(path),
                                                    inductor_configs={"aot_inductor.metadata": metadata})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for trunk.pt, trunk.pt2 and splitlearnd.yaml")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128, help="sequence length the package is compiled for")
    ap.add_argument("--max-batch", type=int, default=64, help="largest batch the package accepts")
    ap.add_argument("--no-pt2", action="store_true", help="TorchScript only (PyTorch before 2.6)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    trunk = encoder_trunk(args.layers, args.hidden, args.heads)
    save_torchscript(trunk, os.path.join(args.out, "trunk.pt"))
    models = [{"id": "trunk", "path": "trunk.pt", "device": "cpu", "default": True,
               "batching": {"max_batch_size": 8, "max_delay_us": 2000}}]
    if not args.no_pt2:
        example = {"src": torch.randn(2, args.seq, args.hidden)}
        save_aoti_package(trunk, example, {"src": {0: ("B", 1, args.max_batch)}}, os.path.join(args.out, "trunk.pt2"))
        models.append({"id": "trunk-aoti", "path": "trunk.pt2", "device": "cpu",
                       "batching": {"max_batch_size": 8, "max_delay_us": 2000}})
    config = {"server": {"listen": "127.0.0.1:50051"}, "model_root": os.path.abspath(args.out),
              "devices": {"cpu": {}}, "models": models}
    with open(os.path.join(args.out, "splitlearnd.yaml"), "w") as f:
        json.dump(config, f, indent=2)  # JSON is YAML
    print(f"wrote {', '.join(m['path'] for m in models)} and splitlearnd.yaml to {args.out}")


if __name__ == "__main__":
    main()
