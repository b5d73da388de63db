"""The float32 argmax of the unembedding, computed in a cheaper precision with a proof that it is the same.

The unembedding ``a @ W_U + b_U`` dominates a one-layer model's last-position forward (and the paper's gelu-1l:
48 262 logits per sequence). In bfloat16, float16 or TF32 it runs several times faster on a GPU, but its argmax
is not always the float32 one (measured on lowprob-1l/hex: 184 of 8192 bfloat16 argmaxes differ). This module
computes the cheap logits ``L̂ = [a, 1] @ [W_U; b_U]`` (bias folded into the GEMM) together with a rigorous
per-logit bound ``ε_j ≥ |L̂_j − L_j|`` on their distance from the float32 reference ``L``, and accepts the cheap
argmax ``t`` of a row only when

    L̂_t − ε_t  >  max_{j ≠ t} (L̂_j + ε_j),

which implies ``L_t > L_j`` for every ``j ≠ t``. Every other row is recomputed in float32. The bound follows
the standard floating-point analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1) with
unit roundoff ``u`` of the operand format, ``γ_n = n·u₃₂ / (1 − n·u₃₂)`` for float32 accumulation over ``n``
terms, ``N_j = ‖[a, 1]‖₂‖[w_j, b_j]‖₂ ≥ Σ_i |a_i w_ij| + |b_j|`` (Cauchy–Schwarz) and ``η`` the operand
format's underflow (absolute) error:

    ε⁰_j = (2u + u² + 2γ_{d+2})·N_j + η·(‖[a, 1]‖₁ + ‖[w_j, b_j]‖₁) + (d+1)·η² + η_out
    ε_j  = 1.01·(1 + u₃₂)·ε⁰_j + 1.01·(u_out/(1 − u_out) + u₃₂)·|L̂_j|

covering both products' operand rounding and float32 accumulation, the cheap GEMM's output rounding
(``u_out``, ``η_out``; none for TF32) and the reference's bias addition, inflated by 1 % for the rounding of
the bound's own arithmetic. The analysis assumes float32 accumulation inside the cheap GEMM: true of CPU
kernels; on CUDA the reduced-precision-reduction switches are turned off while it runs, and the float32
recheck runs with TF32 off. Exact float32 ties (a margin below float32's own rounding, where two float32
implementations may already disagree) are the one case the proof leaves to the recomputation's GEMM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lowprob.core.errors import LowprobError

U32 = 2.0**-24
"""float32 unit roundoff."""
BOUND_SLACK = 1.01
"""Inflation of the computed bound for the rounding of its own float32 arithmetic (relative ≈ 1e-5)."""


@dataclass(frozen=True)
class Precision:
    """How the cheap unembedding runs: operand dtype (``None``: float32 operands on TF32 tensor cores), the
    operands' unit roundoff and underflow error, and whether the GEMM output is rounded to the operand dtype."""

    name: str
    dtype: torch.dtype | None
    unit_roundoff: float
    underflow: float
    output_rounded: bool
    cuda_only: bool = False


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, U32, 2.0**-150, False),
    "bf16": Precision("bf16", torch.bfloat16, 2.0**-8, 2.0**-134, True),
    "fp16": Precision("fp16", torch.float16, 2.0**-11, 2.0**-25, True),
    # TF32 keeps 10 explicit mantissa bits; some hardware truncates instead of rounding, so a full ulp (2^-10).
    "tf32": Precision("tf32", None, 2.0**-10, 2.0**-127, False, cuda_only=True),
}
"""The precisions ``--precision`` accepts; ``fp32`` is the reference itself (no bound, no recheck)."""


def precision(name: str) -> Precision:
    """The named precision; an unknown name lists the known ones."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise LowprobError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}") from None


@contextlib.contextmanager
def matmul_mode(device: torch.device, tf32: bool) -> Iterator[None]:
    """float32 matmuls on true float32 (or TF32 when ``tf32``) and low-precision GEMMs accumulating in float32,
    whatever the process-wide switches say; restores them afterwards."""
    saved = torch.get_float32_matmul_precision()
    cuda = torch.backends.cuda.matmul
    flags = (cuda.allow_bf16_reduced_precision_reduction, cuda.allow_fp16_reduced_precision_reduction)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    if device.type == "cuda":
        cuda.allow_bf16_reduced_precision_reduction = False
        cuda.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
        cuda.allow_bf16_reduced_precision_reduction, cuda.allow_fp16_reduced_precision_reduction = flags


@dataclass(frozen=True)
class CertifiedArgmax:
    """Argmaxes ``[B]`` equal to the float32 unembedding's, and how many rows needed the float32 recheck."""

    argmax: torch.Tensor
    rechecked: int


class CertifiedUnembedding:
    """``argmax(a @ W_U + b_U)`` in float32 semantics, computed in ``precision`` where the bound proves it.

    The cheap GEMM folds the bias in (``[a, 1] @ [W_U; b_U]``), so its output is ``L̂`` directly. Certifying a
    row needs only its ``candidates + 1`` largest cheap logits: the top ones get their own bound, and every
    logit below them is at most ``g(L̂_(k+1)) + ε̄`` with ``g(x) = x + c|x|`` increasing and ``ε̄`` the bound's
    column-independent part at its largest column norm — no ``[B, V]`` pass besides the GEMM and the top-k.
    """

    def __init__(self, W_U: torch.Tensor, b_U: torch.Tensor, precision_name: str,  # noqa: N803
                 candidates: int = 8) -> None:
        self.precision = precision(precision_name)
        if self.precision.cuda_only and W_U.device.type != "cuda":
            raise LowprobError(f"precision {precision_name!r} is a CUDA tensor-core mode; on {W_U.device.type} "
                               f"use fp32, bf16 or fp16")
        self.W_U, self.b_U = W_U.float(), b_U.float()
        d, vocab = self.W_U.shape
        self.candidates = max(1, min(candidates, vocab - 1))
        augmented = torch.cat([self.W_U, self.b_U.unsqueeze(0)])  # [d + 1, V]
        # Stored [V, d + 1] and used transposed: CPU half-precision GEMMs are ~15x faster in this layout (measured).
        self.W_cheap_t = augmented.T.to(self.precision.dtype or torch.float32).contiguous()
        self.col_norm2 = augmented.norm(dim=0)  # ‖[w_j, b_j]‖₂
        self.col_norm1 = augmented.abs().sum(dim=0)  # ‖[w_j, b_j]‖₁
        gamma = (d + 2) * U32 / (1 - (d + 2) * U32)
        u, eta = self.precision.unit_roundoff, self.precision.underflow
        self._c_norm = 2 * u + u * u + 2 * gamma
        self._c_const = (d + 1) * eta * eta + (eta if self.precision.output_rounded else 0.0)
        c_out = u / (1 - u) if self.precision.output_rounded else 0.0
        self._c_abs = BOUND_SLACK * (c_out + U32)  # coefficient of |L̂_j|; < 1, so x + c|x| increases with x

    def reference_logits(self, a: torch.Tensor) -> torch.Tensor:
        """The float32 logits the argmax must reproduce."""
        with matmul_mode(a.device, tf32=False):
            return a.float() @ self.W_U + self.b_U

    def _cheap(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L̂ [B, V] in the cheap dtype, ‖[a, 1]‖₂ [B, 1], ‖[a, 1]‖₁ [B, 1])``."""
        a = a.float()
        with matmul_mode(a.device, tf32=self.precision.name == "tf32"):
            augmented = torch.cat([a, torch.ones_like(a[:, :1])], dim=1).to(self.W_cheap_t.dtype)
            cheap = augmented @ self.W_cheap_t.T
        return cheap, (a.square().sum(dim=1, keepdim=True) + 1).sqrt(), a.abs().sum(dim=1, keepdim=True) + 1

    def _bound(self, logits: torch.Tensor, norm2: torch.Tensor, norm1: torch.Tensor, col_norm2: torch.Tensor,
               col_norm1: torch.Tensor) -> torch.Tensor:
        """``ε`` for cheap logits ``L̂`` (float32) whose columns have norms ``col_norm2``/``col_norm1``."""
        first = self._c_norm * norm2 * col_norm2 + self.precision.underflow * (norm1 + col_norm1) + self._c_const
        return BOUND_SLACK * (1 + U32) * first + self._c_abs * logits.abs()

    def cheap_logits(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L̂, ε)``: the cheap logits ``[B, V]`` in float32 and the proved bound on their distance from the
        float32 reference, for every logit (``inf``/``nan`` where the cheap arithmetic overflowed)."""
        cheap, norm2, norm1 = self._cheap(a)
        logits = cheap.float()
        return logits, self._bound(logits, norm2, norm1, self.col_norm2, self.col_norm1)

    def argmax(self, a: torch.Tensor) -> CertifiedArgmax:
        """The float32 argmax of each row of ``a [B, d]``: the cheap one where the bound separates the top logit
        from all others, the float32 recomputation elsewhere (float32 ties go to the lowest id, as in torch)."""
        if self.precision.name == "fp32":
            return CertifiedArgmax(self.reference_logits(a).argmax(dim=-1), 0)
        cheap, norm2, norm1 = self._cheap(a)
        values, ids = cheap.topk(self.candidates + 1, dim=1)  # NaN sorts first, so such rows fail below
        values = values.float()
        k = self.candidates
        eps = self._bound(values[:, :k], norm2, norm1, self.col_norm2[ids[:, :k]], self.col_norm1[ids[:, :k]])
        low = values[:, 0] - eps[:, 0]
        rest = self._bound(values[:, k:], norm2, norm1, self.col_norm2.max(), self.col_norm1.max()).squeeze(1)
        high = values[:, k] + rest
        if k > 1:
            high = torch.maximum(high, (values[:, 1:k] + eps[:, 1:k]).amax(dim=1))
        certified = low > high  # False wherever a nan appears
        result = ids[:, 0].clone()
        redo = (~certified).nonzero().squeeze(1)
        if redo.numel():
            result[redo] = self.reference_logits(a[redo]).argmax(dim=-1)
        return CertifiedArgmax(result, int(redo.numel()))
