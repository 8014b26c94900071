"""The numeric limits unfold decides by, in one place: what the fold refuses to divide by,
what fp16 and bf16 can hold, and the bound `--fp16` puts on a post-norm stream. Plain floats:
importing this loads nothing (the CLI's --help reads it)."""

# A per-channel scale whose |value| is below this is treated as 0: dividing another operand
# by it (a residual branch, a pad, a concatenated input) would not be finite, so the fold
# stops there instead (unfold/fold/transfer/*, algebra.py).
MIN_ABS_SCALE = 1e-12

FP16_MAX = 65504.0  # the largest finite float16
FP16_SMALLEST_NORMAL = 2.0**-14  # 6.1e-5: below it fp16 is subnormal
FP16_SMALLEST_SUBNORMAL = 2.0**-24  # 6.0e-8: below half of it a value becomes 0
FP16_SIGNIFICANT_BITS = 11
BF16_MAX = float((2 - 2**-7) * 2.0**127)  # 3.39e38
BF16_SMALLEST_NORMAL = 2.0**-126  # 1.18e-38, as fp32's
BF16_SIGNIFICANT_BITS = 8

# --fp16's bound on the scale a post-norm stream carries (transfer/residual.py, norm.py):
# folded weights grow by at most this factor, the stream's values by about a third of it
# (benchmarks/fold_numerics.py: a calibrated 24-layer post-norm encoder keeps 280x of fp16's
# range at 64, 63x at 256, for one Mul more than at 256)
FP16_MAX_SCALE = 64.0


def stream_bound(max_scale: float | None, fp16: bool) -> float | None:
    """The bound on a post-norm stream's carried scale: the one given, else FP16_MAX_SCALE for
    a result an fp16 engine runs (`--fp16`, `--precision fp16`), else none."""
    return FP16_MAX_SCALE if fp16 and max_scale is None else max_scale
