"""Train lowprob's built-in transformers (1, 2 and 4 layers) on the corpus with the built-in tokenizer.

Deterministic for a given corpus, tokenizer, seed and device: fixed window offsets from a seeded generator,
fixed step counts. Uses a GPU when one is present. Writes ``<name>.safetensors`` and ``<name>.json`` (config,
training metadata, validation loss per slice) into the package's weights folder.

    python scripts/train_models.py --corpus data/corpus --layers 1 2 4 --steps 800
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from train_tokenizer import SLICES, slice_files  # scripts/ is on sys.path when a script in it runs

from lowprob.plugins.builtin.hf_vocab import builtin_tokenizer_path
from lowprob.plugins.builtin.trained import build_bridge, native_config, save_weights, weights_folder

BOS, EOS = 0, 1


def token_streams(corpus: Path, val_fraction: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per slice: ``[BOS] doc [EOS]`` streams for training and validation (the last documents are held out)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(builtin_tokenizer_path()))
    train, val = {}, {}
    for name in SLICES:
        docs = [path.read_text(encoding="utf-8") for path in slice_files(corpus, name)]
        encoded = [enc.ids for enc in tokenizer.encode_batch(docs, add_special_tokens=False)]
        cut = max(1, int(len(encoded) * (1 - val_fraction)))
        for target, part in ((train, encoded[:cut]), (val, encoded[cut:] or encoded[-1:])):
            target[name] = torch.tensor([t for ids in part for t in (BOS, *ids, EOS)], dtype=torch.int64)
    return train, val


def windows(stream: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``length`` tokens, each starting with BOS (as lowprob's input distributions do)."""
    starts = torch.randint(0, stream.numel() - length, (n,), generator=generator)
    body = torch.stack([stream[s:s + length - 1] for s in starts.tolist()])
    return torch.cat([torch.full((n, 1), BOS, dtype=torch.int64), body], dim=1)


def loss_of(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    """Mean next-token loss (nats) per slice on 64 fixed windows of each held-out stream."""
    model.eval()
    out = {}
    for name, stream in val.items():
        batch = windows(stream, 64, 64, torch.Generator().manual_seed(1234)).to(device)
        out[name] = round(float(loss_of(model, batch)), 4)
    model.train()
    return out


def train(n_layers: int, train_streams: dict[str, torch.Tensor], val: dict[str, torch.Tensor], steps: int,
          batch_size: int, lr: float, seed: int, device: torch.device, out: Path) -> dict[str, object]:
    """Train one model with AdamW (warm-up then cosine decay) on an even mix of the slices; save it."""
    name = f"lowprob-{n_layers}l"
    config = native_config(n_layers, d_vocab=8192, seed=seed)
    bridge = build_bridge(config)
    model = bridge.original_model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    names = sorted(train_streams)
    t0 = time.perf_counter()
    for step in range(steps):
        per = [batch_size // len(names) + (i < batch_size % len(names)) for i in range(len(names))]
        batch = torch.cat([windows(train_streams[n], k, 64, generator) for n, k in zip(names, per, strict=True)])
        loss = loss_of(model, batch.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"{name} step {step:5d} loss {loss.item():.3f} {time.perf_counter() - t0:7.1f}s", flush=True)
    seconds = time.perf_counter() - t0
    meta = {
        "training": {"steps": steps, "batch_size": batch_size, "window": 64, "tokens": steps * batch_size * 64,
                     "lr": lr, "seed": seed, "device": str(device), "seconds": round(seconds, 1),
                     "torch": torch.__version__, "machine": platform.machine()},
        "validation_loss": validation_loss(model, val, device),
    }
    save_weights(bridge.to("cpu") if device.type != "cpu" else bridge, out, name, config, meta)
    print(f"{name}: {json.dumps(meta)}", flush=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="default: the package's weights folder")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    train_streams, val = token_streams(args.corpus, args.val_fraction)
    print({k: v.numel() for k, v in train_streams.items()}, "training tokens per slice", flush=True)
    for n_layers in args.layers:
        train(n_layers, train_streams, val, args.steps, args.batch_size, args.lr, args.seed, device,
              args.out or weights_folder())
    return 0


if __name__ == "__main__":
    sys.exit(main())
