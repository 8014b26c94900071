"""sync_stats=True: two processes on the gloo backend, over loopback, each holding a shard of a
batch, must compute what ONE process computes on the whole batch: outputs, input gradients and
every buffer equal, and the ranks' weight/bias gradients summing to the whole batch's."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unfold.nn import PowerNorm, UnifiedNorm

from .reference_norms import assert_pairs_close

WORLD = 2
# Unequal shards, so a mean of per-rank means would be wrong: statistics must be pooled.
SHARD_BATCH = (2, 3)
TOKENS, CHANNELS, STEPS = 5, 6, 8
LAYERS = {
    "un": lambda sync: UnifiedNorm(CHANNELS, window_size=2, warmup_iters=3,
                                   outlier_filtration=True, sync_stats=sync,
                                   dtype=torch.float64),
    "pn": lambda sync: PowerNorm(CHANNELS, warmup_iters=3, group_num=2, sync_stats=sync,
                                 dtype=torch.float64),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, kind: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        synced, whole = LAYERS[kind](True), LAYERS[kind](False)
        gen = torch.Generator().manual_seed(0)  # same stream on both ranks: same full batch
        lo = sum(SHARD_BATCH[:rank])
        hi = lo + SHARD_BATCH[rank]
        for step in range(1, STEPS + 1):
            shape = (sum(SHARD_BATCH), TOKENS, CHANNELS)
            x = torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + step % 3)
            dy = torch.randn(shape, generator=gen, dtype=torch.float64)
            mask = torch.rand(shape[:-1], generator=gen) < 0.3
            mask[:, 0] = False

            x_whole = x.clone().requires_grad_(True)
            whole.zero_grad()
            y_whole = whole(x_whole, pad_mask=mask)
            y_whole.backward(dy)
            x_shard = x[lo:hi].clone().requires_grad_(True)
            synced.zero_grad()
            y_shard = synced(x_shard, pad_mask=mask[lo:hi])
            y_shard.backward(dy[lo:hi])

            pairs = {"output": (y_shard, y_whole[lo:hi]),
                     "input grad": (x_shard.grad, x_whole.grad[lo:hi])}
            whole_params = dict(whole.named_parameters())
            for name, param in synced.named_parameters():
                total = param.grad.clone()
                dist.all_reduce(total)  # what DDP's gradient all-reduce would sum
                pairs[f"{name} grad summed over ranks"] = (total, whole_params[name].grad)
            whole_buffers = dict(whole.named_buffers())
            pairs.update({f"buffer {n}": (b, whole_buffers[n])
                          for n, b in synced.named_buffers()})
            assert_pairs_close(pairs, where=f"{kind}, rank {rank}, step {step}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(LAYERS))
def test_sync_stats_two_ranks_equal_one_process_on_the_whole_batch(kind: str) -> None:
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    mp.spawn(_worker, args=(_free_port(), kind), nprocs=WORLD, join=True)
