"""Per-channel statistics shared by the offline norms, optionally summed over ranks.

Inputs have shape (..., C); every index but the last is a *position*. Reductions avoid
materialising input-sized temporaries where torch allows it (vector_norm reduces the squares
in one kernel) and never synchronise with the host.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype otherwise."""
    return torch.promote_types(dtype, torch.float32)


def position_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(x.dim() - 1))


def num_positions(x: Tensor) -> int:
    return x.numel() // x.shape[-1]


def check_pad_mask(x: Tensor, pad_mask: Tensor | None) -> None:
    if pad_mask is None:
        return
    if pad_mask.dtype != torch.bool:
        raise TypeError(
            f"pad_mask must be a bool tensor (True = padding), got dtype {pad_mask.dtype}"
        )
    if tuple(pad_mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"pad_mask must have the input's shape without the channel axis, "
            f"{tuple(x.shape[:-1])}, got {tuple(pad_mask.shape)}"
        )


def sum_of_squares(x: Tensor, pad_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Σ x² per channel over the non-padding positions, and how many positions that is."""
    acc = accumulation_dtype(x.dtype)
    dims = position_dims(x)
    if pad_mask is None:
        total = torch.linalg.vector_norm(x, 2, dim=dims, dtype=acc).square()
        count = torch.full((), num_positions(x), dtype=acc, device=x.device)
    else:
        keep = (~pad_mask).unsqueeze(-1)
        total = torch.linalg.vector_norm(x * keep, 2, dim=dims, dtype=acc).square()
        count = keep.sum(dtype=acc)
    return total, count


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def global_mean(total: Tensor, count: Tensor, sync: bool) -> Tensor:
    """total / count, with both summed over the torch.distributed ranks when `sync` is set.

    One all-reduce carries the C sums and the count together. With no process group (or a
    single rank) this is the local mean, so a `sync_stats` model also runs on one device.
    """
    if sync and _world_size() > 1:
        import torch.distributed as dist

        packed = torch.cat([total.reshape(-1), count.reshape(1).to(total.dtype)])
        dist.all_reduce(packed)
        total, count = packed[:-1], packed[-1]
    return total / count.clamp_min(1)
