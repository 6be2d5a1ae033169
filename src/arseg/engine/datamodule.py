"""Data for the engine: datasets from :mod:`arseg.data` built from a config, with exact resume.

Training randomness (shuffling, random scale/crop/flip) is a pure function of
``(seed, epoch, position)``: :class:`ResumableSampler` draws each epoch's permutation from
``seed + epoch`` and hands every sample its own seed, and :class:`SeededDataset` runs the
transform under that seed. So the data do not depend on the number of workers, and a run resumed
from a mid-epoch checkpoint (:class:`ResumableDataLoader` is *stateful* for Lightning) sees
exactly the batches that the uninterrupted run would have seen.

Each process of a distributed run takes every ``world_size``-th sample (no padding, no
duplicates), so validation metrics over all processes equal those of a single process.

Images of different sizes (a user's own folder) are evaluated at their own size: an evaluation
batch holds images of one size only (:class:`SizeGroupedBatchSampler`), so every image gives
the outputs it gives alone (padding a batch would change a network's outputs near the border:
its receptive field sees the padding) and the validation metrics do not depend on
``data.val_batch_size``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "ResumableDataLoader",
    "ResumableSampler",
    "SeedDataModule",
    "SeededDataset",
    "SizeGroupedBatchSampler",
    "build_eval_dataset",
    "build_eval_loader",
    "build_train_dataset",
    "dataset_arguments",
]

_SEED_MOD = 2**31 - 1


class SeededDataset(Dataset):
    """Wrap a dataset so that ``ds[(index, seed)]`` is computed under ``seed``.

    The global torch/numpy/random states of the calling process are restored afterwards.
    Plain integer indices pass through unchanged.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)  # noqa: NPY002 (legacy global RNG of user code)
                try:
                    return self.dataset[index]
                finally:
                    random.setstate(py_state)
                    np.random.set_state(np_state)  # noqa: NPY002
        return self.dataset[key]

    def __getattr__(self, name: str) -> Any:  # metadata (classes, palette, ...) of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(Sampler):
    """Deterministic per-epoch sampling, sharded over processes, resumable mid-epoch.

    Args:
        num_samples: length of the dataset.
        seed: base seed; epoch ``e`` uses permutation seed ``seed + e``.
        shuffle: permute (training) or keep the order (evaluation).
        rank, world_size: this process takes positions ``rank, rank + world_size, ...``.
        yield_seeds: yield ``(index, per-sample seed)`` for :class:`SeededDataset`.
        drop_last_to: if set, truncate each shard to a multiple of this (the batch size), and
            make all shards the same length (training under DDP needs equal batch counts).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        yield_seeds: bool = True,
        drop_last_to: int | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(
                f"ResumableSampler needs a non-empty dataset, got {num_samples} samples"
            )
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.yield_seeds = yield_seeds
        self.drop_last_to = drop_last_to
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples) to skip on resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, num_samples: int, epoch: int) -> None:
        """Skip ``num_samples`` in the next iteration, if that iteration is of ``epoch``.

        Tied to the epoch: a checkpoint taken after the last batch of epoch e is restored by
        Lightning as "epoch e done", and the skip must not eat epoch e + 1.
        """
        self._skip = (epoch, num_samples)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed + self.epoch) % _SEED_MOD)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.drop_last_to is not None:
            per_rank = self.num_samples // self.world_size
            per_rank -= per_rank % self.drop_last_to
            return order[self.rank :: self.world_size][:per_rank]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.drop_last_to is not None:
            per_rank = self.num_samples // self.world_size
            return per_rank - per_rank % self.drop_last_to
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[Any]:
        pending, self._skip = self._skip, None
        skip = pending[1] if pending is not None and pending[0] == self.epoch else 0
        indices = self._indices()
        for pos in range(skip, len(indices)):
            index = indices[pos]
            if self.yield_seeds:
                # One seed per (seed, epoch, index): independent of rank, position and workers.
                sample_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % _SEED_MOD
                yield index, sample_seed
            else:
                yield index


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (``state_dict``) for exact mid-epoch resume.

    ``progress`` returns how many batches of the current epoch are done (the engine passes the
    trainer's counter); the state is ``{"epoch", "batches_done"}`` and loading it makes the next
    iteration start after those batches.
    """

    def __init__(
        self, *args: Any, progress: Callable[[], tuple[int, int]] | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.progress() if self.progress is not None else (0, 0)
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if isinstance(sampler, ResumableSampler):
            epoch = int(state["epoch"])
            sampler.set_epoch(epoch)
            sampler.skip_next(int(state["batches_done"]) * int(self.batch_size or 1), epoch)


class SizeGroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices whose images have one size, in a fixed order.

    The indices are grouped by size (groups in the order of their first index, indices in
    their order within a group) and each group is cut into batches of ``batch_size``.

    Args:
        indices: the dataset positions to batch (a process's shard).
        sizes: ``(H, W)`` of each of ``indices``.
        batch_size: the most images a batch holds.

    Example:
        >>> list(SizeGroupedBatchSampler([0, 1, 2, 3], [(2, 3), (3, 2), (2, 3), (2, 3)], 2))
        [[0, 2], [3], [1]]
    """

    def __init__(self, indices: list[int], sizes: list[tuple[int, int]], batch_size: int) -> None:
        if len(indices) != len(sizes):
            raise ValueError(f"{len(indices)} indices but {len(sizes)} sizes")
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in zip(indices, sizes):
            groups.setdefault(tuple(size), []).append(index)
        self.batches = [
            group[i : i + batch_size]
            for group in groups.values()
            for i in range(0, len(group), batch_size)
        ]

    @property
    def order(self) -> list[int]:
        """The dataset indices in the order the batches yield them."""
        return [i for batch in self.batches for i in batch]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.batches])


def dataset_arguments(cfg: dict[str, Any], split: str, *, training: bool) -> dict[str, Any]:
    """``build_dataset``'s arguments for ``split`` of ``cfg['data']``: ``name``, ``root``,
    ``split`` and ``options`` (``data.options`` with ``data.train_options`` where the split is
    read for training, ``data.val_options`` where it is evaluated)."""
    data = cfg["data"]
    options = dict(data["options"])
    options.update(data["train_options"] if training else data["val_options"])
    return {"name": data["name"], "root": data["root"], "split": split, "options": options}


def build_train_dataset(cfg: dict[str, Any]) -> Dataset:
    """The training split of ``cfg['data']`` with the random training transform."""
    from arseg.data import build_dataset
    from arseg.data.transforms import build_train_transform

    data = cfg["data"]
    transform = build_train_transform(
        tuple(data["crop_size"]),
        scale_range=tuple(data["scale_range"]) if data["scale_range"] is not None else None,
        hflip=data["hflip"],
        min_short_side=data["min_short_side"],
        rotate_degrees=data["rotate_degrees"],
        blur_prob=data["blur_prob"],
    )
    args = dataset_arguments(cfg, data["train_split"], training=True)
    return build_dataset(
        args["name"], root=args["root"], split=args["split"], transform=transform, **args["options"]
    )


def build_eval_dataset(cfg: dict[str, Any], split: str | None = None) -> Dataset:
    """The evaluation split (default ``cfg['data']['val_split']``) with the evaluation transform.

    Args:
        cfg: a resolved config (e.g. the one :func:`arseg.engine.load_model` returns).
        split: the split name; ``None`` for the config's validation split.
    """
    from arseg.data import build_dataset
    from arseg.data.transforms import build_eval_transform

    data = cfg["data"]
    resize = tuple(data["eval_resize"]) if data["eval_resize"] else None
    args = dataset_arguments(cfg, split or data["val_split"], training=False)
    return build_dataset(
        args["name"],
        root=args["root"],
        split=args["split"],
        transform=build_eval_transform(resize),
        **args["options"],
    )


def build_eval_loader(
    cfg: dict[str, Any], dataset: Dataset, *, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, list[int]]:
    """The evaluation loader of ``dataset`` (process ``rank`` of ``world_size``'s share) and
    the dataset indices in the order it yields them.

    Without ``data.eval_resize`` the images are evaluated at their own sizes: a batch holds
    images of one size (:class:`SizeGroupedBatchSampler`, sizes from the file headers), which
    reorders the images when sizes are mixed; images of one size are batched in order, as is a
    dataset without ``image_size`` (its images must then share one size).
    """
    data = cfg["data"]
    indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    batch_size = int(data["val_batch_size"])
    common = {
        "num_workers": data["num_workers"],
        "persistent_workers": data["num_workers"] > 0,
        "generator": torch.Generator().manual_seed(0),
    }
    image_size = getattr(dataset, "image_size", None)
    if data["eval_resize"] is None and image_size is not None and batch_size > 1:
        sizes = [image_size(i) for i in indices]
        if len(set(sizes)) > 1:
            batches = SizeGroupedBatchSampler(indices, sizes, batch_size)
            return DataLoader(dataset, batch_sampler=batches, **common), batches.order
    sampler = ResumableSampler(
        len(dataset),  # type: ignore[arg-type]
        shuffle=False,
        rank=rank,
        world_size=world_size,
        yield_seeds=False,
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **common), indices


def _dist_info(trainer: L.Trainer | None) -> tuple[int, int]:
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


class SeedDataModule(L.LightningDataModule):
    """Training and validation loaders for a config (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = build_train_dataset(self.cfg)
        if stage in (None, "fit", "validate", "test") and self.val_set is None:
            self.val_set = build_eval_dataset(self.cfg)

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop
        epoch, batches = loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress
        if batches.is_last_batch:
            # Lightning restores a checkpoint taken after an epoch's last batch as the start of
            # the next epoch (fit_loop.reset): the loader must not skip into that one.
            return epoch + 1, 0
        return epoch, batches.current.ready

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        data = self.cfg["data"]
        rank, world = _dist_info(self.trainer)
        sampler = ResumableSampler(
            len(self.train_set),
            seed=int(self.cfg["seed"]),
            shuffle=True,
            rank=rank,
            world_size=world,
            yield_seeds=True,
            drop_last_to=data["batch_size"],
        )
        if self.trainer is not None:
            # A resume from an end-of-epoch checkpoint restores the loop's progress but not the
            # loader state, and worker processes start prefetching before Lightning sets the
            # sampler's epoch: start at the epochs already processed (0 on a fresh run).
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        if len(sampler) == 0:
            raise ValueError(
                f"the training split has {len(self.train_set)} samples, fewer than one batch of "
                f"{data['batch_size']} per process ({world} processes): lower data.batch_size"
            )
        return ResumableDataLoader(
            SeededDataset(self.train_set),
            batch_size=data["batch_size"],
            sampler=sampler,
            num_workers=data["num_workers"],
            drop_last=True,
            pin_memory=False,
            persistent_workers=data["num_workers"] > 0,
            generator=torch.Generator().manual_seed(0),
            progress=self._progress,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        rank, world = _dist_info(self.trainer)
        if len(self.val_set) < world:
            # a process without validation samples would fall out of step in the collectives
            raise ValueError(
                f"the validation split has {len(self.val_set)} samples for {world} processes: "
                "every process needs at least one (use fewer devices or a larger split)"
            )
        loader, _ = build_eval_loader(self.cfg, self.val_set, rank=rank, world_size=world)
        return loader
