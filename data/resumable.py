"""Training batches in an order a resumed run can rebuild: the same batches, from the exact batch it stopped at.

Lightning restores a data loader that has `state_dict` / `load_state_dict` before it starts iterating it (its
"resumable loader" interface); without one, a run resumed mid-epoch would see a different order. Here the order
is a pure function of (seed, epoch, rank), by torch's `DistributedSampler` on every run (one process is a world of
one; under DDP Lightning keeps it and each rank reads its own share), so the state is two numbers: the epoch and
the batches of it already trained on.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (a seeded permutation per epoch, split across ranks) that can start mid-epoch.

    The epoch is this sampler's own count of passes, not Lightning's `set_epoch` (ignored): Lightning counts an
    epoch cut short by `max_steps` as done, so after resuming from the checkpoint written at the end of `fit` its
    count runs one ahead of the uninterrupted run's.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        rank, size = world()
        super().__init__(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.next_epoch = 0  # the epoch the next pass draws
        self.skip = 0  # indices of that epoch already trained on (a resumed run)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[int]:
        self.epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # the epochs after the resumed one start from their beginning
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """The training loader: EpochSampler order, and the state Lightning stores in each checkpoint.

    `batches_done()` answers how many batches of the current epoch the model has trained on; the loader cannot
    count that itself because Lightning fetches one batch ahead. Worker seeds are drawn from a generator
    re-seeded per epoch, so they too depend on (seed, epoch) only.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, batches_done: Callable[[], int],
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, seed), drop_last=False,
                         generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.batches_done = batches_done

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.sampler.next_epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": max(self.sampler.next_epoch - 1, 0), "batches": self.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue `state["epoch"]` after its first `state["batches"]` batches. Saved after the epoch's last batch,
        the next pass is empty and the one after it starts the next epoch: Lightning either ends that epoch without
        reading (a checkpoint from the end of `fit`) or finds it exhausted at once (one from its last batch)."""
        self.sampler.next_epoch = state["epoch"]
        self.sampler.skip = state["batches"] * self.batch_size  # only the last batch of an epoch can be short


def batches_done(trainer) -> int:
    """Batches of the current epoch that `trainer` has trained on (Lightning's loop progress)."""
    from model.compat import batches_processed

    return batches_processed(trainer)
