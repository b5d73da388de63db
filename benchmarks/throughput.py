"""Ground-truth throughput: the fast last-position forward against the plain TransformerLens forward.

Every path runs on the same sampled inputs in one process, one after the other, and each is checked to give
the same argmaxes as the plain forward (a row whose plain top-two margin is below float32 resolution is
reported as a float32 tie, which two float32 implementations may break differently), so the printed speed-ups
compare like with like. Absolute sequences
per second are context only (they depend on the machine and its load).

    python benchmarks/throughput.py                  # built-in models on three paper distributions, CPU
    python benchmarks/throughput.py --device cuda    # the same on a GPU
    python benchmarks/throughput.py --gelu-1l-shape  # adds a random-weight model of gelu-1l's shape
    python benchmarks/throughput.py --precisions fp16 bf16   # adds the certified low-precision unembedding
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from lowprob.api import compile_source, resolve_spec
from lowprob.core.certified_argmax import CertifiedUnembedding
from lowprob.core.distribution import Categorical, InputDistribution
from lowprob.core.fast_forward import FastForward, FirstLayerTable
from lowprob.ground_truth import ArgmaxPath
from lowprob.plugins import load_registry

TIE_MARGIN = 1e-5
"""A top-two logit margin below this is a float32 tie: two float32 implementations may pick either token."""


def _rate(fn: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor],
          device: str) -> tuple[float, torch.Tensor]:
    """Sequences per second of the argmax function ``fn`` over ``batches`` (after one warm-up batch) and the
    argmaxes it gives."""
    with torch.no_grad():
        fn(batches[0])
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = [fn(b) for b in batches]
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return sum(b.shape[0] for b in batches) / seconds, torch.cat(out).cpu()


def _certified(fast: FastForward, table: FirstLayerTable, precision: str) -> ArgmaxPath:
    """fast+tables with the unembedding in ``precision``, certified; it counts its float32 rechecks."""
    unembed = CertifiedUnembedding(fast.W_U, fast.b_U, precision)
    return ArgmaxPath("fast+tables", precision, lambda t: unembed.argmax(fast.last_normed(t, table)))


def compare(name: str, model: object, dist: InputDistribution, samples: int, batch: int, device: str,
            precisions: list[str]) -> None:
    """Print plain vs fast vs fast-with-tables (vs certified low-precision unembeddings) throughput for one model
    and distribution."""
    gen = torch.Generator().manual_seed(0)
    batches = [dist.sample(batch, gen).to(device) for _ in range(max(1, samples // batch))]
    fast = FastForward.from_model(model)
    if fast is None:
        print(f"{name}: no fast path for this architecture")
        return
    table = fast.first_layer_table((dist.dense_log_probs() > -float("inf")).to(device))
    plain_rate, reference = _rate(lambda t: model(t)[:, -1, :].argmax(-1), batches, device)  # type: ignore[operator]
    with torch.no_grad():  # the plain forward's top-two margins, to tell float32 ties from real disagreements
        top2 = torch.cat([model(b)[:, -1, :].topk(2, dim=-1).values.cpu() for b in batches])  # type: ignore[operator]
    margin = top2[:, 0] - top2[:, 1]
    paths: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("fast", lambda t: fast.last_logits(t).argmax(-1)),
        ("fast+tables", lambda t: fast.last_logits(t, table).argmax(-1))]
    certified = {p: _certified(fast, table, p) for p in precisions}
    paths += [(f"+{p}", path) for p, path in certified.items()]
    print(f"{name:<28} plain {plain_rate:>9.0f} seq/s", end="")
    for label, fn in paths:
        rate, argmax = _rate(fn, batches, device)
        differ = argmax != reference
        ties = int((differ & (margin < TIE_MARGIN)).sum())
        agree = "" if not differ.any() else f", {ties} float32 ties" if ties == int(differ.sum()) else \
            f", ARGMAX DIFFERS on {int(differ.sum()) - ties}"
        extra = ""
        if label.startswith("+"):  # the untimed warm-up batch counts too
            share = certified[label[1:]].rechecked / ((len(batches) + 1) * batch)
            extra = f", {100 * share:.0f}% rechecked"
        print(f" | {label} {rate:>9.0f} seq/s ({rate / plain_rate:4.1f}x{extra}{agree})",
              end="")
    print()


def gelu_1l_shape(device: str) -> object:
    """A random-weight TransformerLens-native model with the shape of the paper's gelu-1l."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=1, d_model=512, n_heads=8, d_head=64, d_mlp=2048, n_ctx=1024, d_vocab=48262,
               act_fn="gelu", normalization_type="LN", seed=0)
    return TransformerBridge.boot_native(cfg).to(device)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=4096, help="sequences per path")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--models", nargs="+", default=["lowprob-1l", "lowprob-2l", "lowprob-4l"])
    parser.add_argument("--distributions", nargs="+", default=["hex", "english", "colon"])
    parser.add_argument("--gelu-1l-shape", action="store_true", help="also a random model of gelu-1l's shape")
    parser.add_argument("--precisions", nargs="*", default=[], choices=["bf16", "fp16", "tf32"],
                        help="also fast+tables with the certified unembedding in these precisions (tf32: CUDA)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.samples} sequences per path")
    registry = load_registry()
    for model_name in args.models:
        for dist_name in args.distributions:
            compiled = compile_source(registry, resolve_spec(dist_name, registry), model=model_name)
            model = compiled.model.model.to(args.device)
            compare(f"{model_name}/{dist_name}", model, compiled.spec.distribution(None), args.samples, args.batch,
                    args.device, args.precisions)
    if args.gelu_1l_shape:
        model = gelu_1l_shape(args.device)
        ids = torch.randperm(48262, generator=torch.Generator().manual_seed(0))[:1024]
        position = Categorical.from_weights(ids, torch.ones(1024, dtype=torch.float64))
        dist = InputDistribution.independent([position] * 33, 48262, name="uniform-1024x33")
        compare("gelu-1l shape (random)/uniform-1024x33", model, dist, args.samples, args.batch, args.device,
                args.precisions)


if __name__ == "__main__":
    main()
