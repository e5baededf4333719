"""TensorLoader and InrDataModule without a Trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from nngraph_apps import InrDataModule, TensorLoader


def _loader(**kw: object) -> TensorLoader:
    data = {"x": torch.arange(10), "y": torch.arange(10) * 2}
    return TensorLoader(data, 3, **kw)  # type: ignore[arg-type]


def test_eval_order_and_lengths() -> None:
    batches = list(_loader())
    assert [len(b["x"]) for b in batches] == [3, 3, 3, 1]
    assert torch.equal(torch.cat([b["x"] for b in batches]), torch.arange(10))
    assert torch.equal(batches[1]["y"], batches[1]["x"] * 2)
    assert len(_loader(drop_last=True)) == 3


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    a = _loader(shuffle=True, seed=1)
    first = torch.cat([b["x"] for b in a])  # epoch 0
    assert sorted(first.tolist()) == list(range(10))
    again = torch.cat([b["x"] for b in _loader(shuffle=True, seed=1, position_fn=lambda: (0, 0))])
    assert torch.equal(first, again)
    assert not torch.equal(first, torch.cat([b["x"] for b in a]))  # epoch 1


def test_resume_skips_trained_batches() -> None:
    full = [b["x"] for b in _loader(shuffle=True, position_fn=lambda: (2, 0))]
    rest = [b["x"] for b in _loader(shuffle=True, position_fn=lambda: (2, 2))]
    assert len(rest) == 2 and all(torch.equal(u, v) for u, v in zip(rest, full[2:]))


def test_ddp_shards_are_disjoint_in_eval_and_equal_in_training() -> None:
    evals = [torch.cat([b["x"] for b in _loader(rank=r, world_size=2)]) for r in range(2)]
    assert sorted(torch.cat(evals).tolist()) == list(range(10))
    train = [_loader(shuffle=True, rank=r, world_size=3) for r in range(3)]
    assert len({len(t) for t in train}) == 1
    seen = torch.cat([torch.cat([b["x"] for b in t]) for t in train])
    assert (
        set(seen.tolist()) == set(range(10)) and len(seen) == 12
    )  # padded like DistributedSampler


def test_datamodule_reads_whole_splits(tiny_zoo: Path) -> None:
    dm = InrDataModule(source="digits", zoo_dir=str(tiny_zoo), targets="dilated", batch_size=8)
    dm.setup("fit")
    assert {k: len(v["params"]) for k, v in dm.splits.items()} == {
        "train": 97,
        "val": 12,
        "test": 11,
    }
    batch = next(iter(dm.train_dataloader()))
    assert batch["params"].shape == (8, 1185) and batch["target"].shape == (8, 8, 8)
    assert bool((batch["target"] >= batch["image"]).all())  # dilation never darkens
    assert dm.num_classes == 10
