"""What a GPU could do at best, and how close a measured figure comes: the helpers of
`benchmarks/gpu.py`, pure so that they are tested without a GPU.

Two bounds. Decoding one token for a batch is limited by memory bandwidth: every step reads all
the weights once (shared by the batch) and each sequence's KV cache, and does little arithmetic
per byte read. Training is limited by arithmetic: about 6 FLOPs per parameter per token, plus
attention. A measured throughput divided by the bound is the fraction printed beside each figure.

The figures in `GPU_SPECS` are the makers' datasheet numbers for dense 16-bit tensor-core math
(no structured sparsity) and peak memory bandwidth; a real kernel reaches part of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_course.hardware import T4_MEMORY_GB, emulate_t4

__all__ = [
    "GPU_SPECS", "GPUSpec", "Row", "T4", "T4_MEMORY_GB", "bandwidth_fraction", "decode_bytes_per_step",
    "dense_params", "emulate_t4", "flops_fraction", "format_fraction", "format_memory", "format_rate",
    "kv_cache_bytes", "kv_cache_bytes_per_token", "markdown_table", "mean_context", "parse_batches",
    "spec_for", "train_flops_per_token",
]


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet peaks of one GPU model."""

    label: str
    """Short name printed beside a fraction ("T4", "H100 SXM")."""
    bandwidth_gb_s: float
    """Peak memory bandwidth, GB/s (10^9 bytes per second)."""
    tflops: float
    """Peak dense 16-bit tensor-core throughput, TFLOP/s (fp16 on a T4, bf16 elsewhere; the two
    are equal on every GPU listed that has both)."""

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gb_s * 1e9

    @property
    def flops(self) -> float:
        """FLOP per second."""
        return self.tflops * 1e12


T4 = GPUSpec("T4", 320.0, 65.0)
"""NVIDIA T4: 320 GB/s GDDR6, 65 TFLOP/s fp16 with fp32 accumulation; no bf16."""

# First match wins, so variants come before the family; patterns are searched, case-insensitive,
# in `torch.cuda.get_device_name()`. `\b` keeps "L4" from matching "L40S" and "H200" from "GH200".
GPU_SPECS: tuple[tuple[str, GPUSpec], ...] = (
    (r"\bT4\b", T4),
    (r"\bL4\b", GPUSpec("L4", 300.0, 121.0)),
    (r"A100.*80GB.*PCIE", GPUSpec("A100 80GB PCIe", 1935.0, 312.0)),
    (r"A100.*80GB", GPUSpec("A100 80GB SXM", 2039.0, 312.0)),
    (r"A100", GPUSpec("A100 40GB", 1555.0, 312.0)),  # SXM and PCIe: both 1555 GB/s
    (r"H100.*NVL", GPUSpec("H100 NVL", 3900.0, 835.0)),
    (r"H100.*PCIE", GPUSpec("H100 PCIe", 2000.0, 756.0)),
    (r"\bH100\b", GPUSpec("H100 SXM", 3350.0, 989.0)),  # "NVIDIA H100 80GB HBM3"
    (r"\bH200\b.*NVL", GPUSpec("H200 NVL", 4800.0, 835.0)),
    (r"\bH200\b", GPUSpec("H200 SXM", 4800.0, 989.0)),
)


def spec_for(device_name: str | None, emulate_t4: bool = False) -> GPUSpec | None:
    """The datasheet spec for `device_name` (as `torch.cuda.get_device_name()` gives it), the T4's
    when emulating one, or None for a CPU (`None` or "cpu") and for GPUs not in `GPU_SPECS`
    (a fraction is then printed as "n/a")."""
    if emulate_t4:
        return T4
    if not device_name or device_name.lower() == "cpu":
        return None
    for pattern, spec in GPU_SPECS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return spec
    return None


# --------------------------------------------------------------------------------------------
# Decoding: the memory-bandwidth bound
# --------------------------------------------------------------------------------------------


def kv_cache_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """Bytes of KV cache one token of context holds, from a transformers config:
    layers x 2 (keys and values) x KV heads x head size x bytes per number.

    SmolLM2-135M (30 layers, 3 KV heads of 64, fp16): 30 x 2 x 3 x 64 x 2 = 23,040 bytes.
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes


def mean_context(prompt_len: int, new_tokens: int) -> float:
    """Mean context length over the decoding steps of one batch: the prompt, plus on average
    half the reply written so far."""
    return prompt_len + new_tokens / 2


def kv_cache_bytes(config, batch: int, context: float, dtype_bytes: int = 2) -> float:
    """KV cache of `batch` sequences of `context` tokens each (see `kv_cache_bytes_per_token`)."""
    return kv_cache_bytes_per_token(config, dtype_bytes) * batch * context


def decode_bytes_per_step(weight_bytes: float, kv_cache_bytes: float) -> float:
    """Bytes one decoding step must read from GPU memory at least: every weight once (the whole
    batch shares them) plus the KV cache of every sequence in the batch (`kv_cache_bytes`, the
    batch's total). Activations and logits are small beside these and left out."""
    return weight_bytes + kv_cache_bytes


def bandwidth_fraction(tokens_per_s: float, batch: int, bytes_per_step: float,
                       bandwidth_bytes_per_s: float | None) -> float | None:
    """Share of the memory-bandwidth bound a decoding throughput reaches, or None without a bound.

    A step adds one token to each of the `batch` sequences, so steps/s = tokens_per_s / batch,
    and the bytes it moves per second are steps/s x `bytes_per_step`:

        fraction = (tokens_per_s / batch) x bytes_per_step / bandwidth

    Worked number: SmolLM2-135M in fp16 holds 134,515,008 x 2 = 269.0 MB of weights. At batch 64,
    a 64-token prompt and 128 new tokens (mean context 128), its KV cache is
    23,040 x 64 x 128 = 188.7 MB, so a step reads 457.8 MB; a T4's 320 GB/s allows at most
    699 steps/s, 44,700 tokens/s. Measuring 12,000 tokens/s (187.5 steps/s) is 26.8% of the bound.
    """
    if bandwidth_bytes_per_s is None:
        return None
    if batch <= 0 or bandwidth_bytes_per_s <= 0:
        raise ValueError(f"bandwidth_fraction: batch={batch} and bandwidth={bandwidth_bytes_per_s} "
                         "must both be positive")
    return tokens_per_s / batch * bytes_per_step / bandwidth_bytes_per_s


# --------------------------------------------------------------------------------------------
# Training: the arithmetic bound
# --------------------------------------------------------------------------------------------


def dense_params(model) -> int:
    """Parameters that every token meets in a matrix product (each counted once): all of them
    less the input embedding, which is a lookup, unless it doubles as the output layer (tied
    embeddings, as in SmolLM2 and Qwen2.5-0.5B). The N of `train_flops_per_token`, and the
    weights a decoding step reads in full."""
    total = sum(p.numel() for p in model.parameters())
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is inp
    return total if tied else total - inp.numel()


def train_flops_per_token(n_params: int, n_layers: int, d_attn: int, seq_len: int) -> float:
    """Model FLOPs of one trained token (forward + backward), as the PaLM paper counts them for
    its model FLOPs utilisation (Chowdhery et al. 2022, appendix B): 6N for the weight matrix
    products (2N forward, 4N backward), plus 12 x L x d x T for attention's two products with
    the T-token context (QK^T and the weighted sum of V), d = heads x head size.

    Causal masking, which halves the useful attention work, is not discounted, and activations
    recomputed by gradient checkpointing are not counted (that would be hardware FLOPs).
    SmolLM2-135M at T = 1024: 6 x 134,515,008 + 12 x 30 x 576 x 1024 = 1.019 GFLOP per token.
    """
    return 6.0 * n_params + 12.0 * n_layers * d_attn * seq_len


def flops_fraction(tokens_per_s: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Share of the peak FLOP/s a training throughput reaches (model FLOPs utilisation), or
    None without a peak: tokens/s x FLOPs per token / peak. SmolLM2-135M at T = 1024 training at
    12,750 tokens/s on a T4 (65 TFLOP/s) is 12,750 x 1.019e9 / 65e12 = 20.0%."""
    if peak_flops is None:
        return None
    if peak_flops <= 0:
        raise ValueError(f"flops_fraction: peak_flops={peak_flops} must be positive")
    return tokens_per_s * flops_per_token / peak_flops


# --------------------------------------------------------------------------------------------
# The result table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One measured figure of `benchmarks/gpu.py`: a line of the Markdown table."""

    stage: str
    setting: str
    """Batch, lengths and precision it was measured at."""
    throughput: str
    """The figure, with its unit (`format_rate`), or what stopped it ("out of memory")."""
    bound: str
    """The share of the relevant bound (`format_fraction`), "n/a" where there is none."""
    memory: str
    """Peak memory of the stage (`format_memory`)."""


COLUMNS = ("stage", "setting", "throughput", "fraction of bound", "peak memory")


def format_rate(value: float, unit: str) -> str:
    """A throughput with thousands separators ("12,345 tok/s"), or three significant figures
    below 100 ("3.42 samples/s")."""
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def format_fraction(fraction: float | None, bound: str = "") -> str:
    """"26.8% of 320 GB/s (T4)" for `fraction`=0.268 and `bound`="320 GB/s (T4)"; "n/a" for None."""
    if fraction is None:
        return "n/a"
    return f"{100 * fraction:.1f}% of {bound}" if bound else f"{100 * fraction:.1f}%"


def format_memory(peak_bytes: float | None, capacity_bytes: float | None = None) -> str:
    """"3.21 GiB", with its share of `capacity_bytes` when given ("3.21 GiB (21% of 15 GiB)");
    "n/a" for None."""
    if peak_bytes is None:
        return "n/a"
    text = f"{peak_bytes / 2**30:.2f} GiB"
    if capacity_bytes:
        text += f" ({100 * peak_bytes / capacity_bytes:.0f}% of {capacity_bytes / 2**30:.0f} GiB)"
    return text


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub Markdown table (header, separator, a line per row; "|" in a cell is
    escaped), ready to paste into benchmarks/RESULTS.md."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(COLUMNS), line(["---"] * len(COLUMNS))]
    out += [line((r.stage, r.setting, r.throughput, r.bound, r.memory)) for r in rows]
    return "\n".join(out) + "\n"


def parse_batches(text: str) -> list[int]:
    """"16,64" -> [16, 64]: the decoding batch sizes of `--batch`, each a whole number >= 1."""
    try:
        batches = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"--batch {text!r}: give comma-separated batch sizes >= 1, such as 16,64")
    return batches
