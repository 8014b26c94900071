"""Training-time offline normalization layers. Imports nothing but torch.

    from unfold.nn import UnifiedNorm, PowerNorm, swap_norms, reset_warmup, create_norm
    from unfold.nn import from_pretrained  # a swapped Hugging Face model's directory, back
"""

from unfold.nn._base import OfflineNorm
from unfold.nn.factory import NORM_KINDS, create_norm
from unfold.nn.power_norm import PowerNorm, group_scaling
from unfold.nn.pretrained import from_pretrained
from unfold.nn.swap import reset_warmup, swap_norms
from unfold.nn.unified_norm import UnifiedNorm

__all__ = [
    "NORM_KINDS",
    "OfflineNorm",
    "PowerNorm",
    "UnifiedNorm",
    "create_norm",
    "from_pretrained",
    "group_scaling",
    "reset_warmup",
    "swap_norms",
]
