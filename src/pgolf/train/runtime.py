"""Process and device setup for 1 process, torchrun (NCCL on GPU) or gloo on CPU.

    pgolf train ...                                   # one process
    torchrun --nproc_per_node=8 -m pgolf train ...    # one process per GPU

No import-time side effects: call `init_runtime()` once, `shutdown()` at the end.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

# Collectives wait this long before the watchdog aborts: rank 0 exports alone (GPTQ, the budget fitter's trials,
# 47 s each on an H100 at #1855's size) while the others wait at a barrier; NCCL's default of 10 minutes could cut
# a long export short.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_agree(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (all-reduce MAX): ranks stop on the same step."""
        return bool(self.max_int(int(flag)))

    def max_int(self, value: int) -> int:
        """The largest of the ranks' `value` (all-reduce MAX), on every rank."""
        if not self.distributed:
            return value
        t = torch.tensor(value, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())


def init_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK, pick the device and start the process group."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ and world > 1
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if distributed and not dist.is_initialized():
        if use_cuda:
            dist.init_process_group(backend="nccl", device_id=dev, timeout=PROCESS_GROUP_TIMEOUT)
        else:
            dist.init_process_group(backend="gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return Runtime(rank=rank, local_rank=local_rank, world_size=world, device=dev, distributed=distributed)


def shutdown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
