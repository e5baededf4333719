from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from nngraph_datasets import (
    CorruptFileError,
    FileTooLargeError,
    Limits,
    Siren,
    UnsafeFileError,
    convert_published,
    load_zoo,
    read_published,
    verify_zoo,
)


def _pth(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _siren_sd(seed: int) -> dict[str, torch.Tensor]:
    return Siren(generator=torch.Generator().manual_seed(seed)).state_dict()


def _mnist_zip(
    path: Path, n_train: int = 4, n_test: int = 2, bad: dict[str, bytes] | None = None
) -> dict[str, torch.Tensor]:
    flat = {}
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("training", n_train), ("testing", n_test)):
            for i in range(n):
                name = f"mnist-inrs/mnist_png_{split}_{i % 10}_{i}/checkpoints/model_final.pth"
                sd = _siren_sd(i + (100 if split == "testing" else 0))
                flat[name] = torch.cat([v.reshape(-1) for v in sd.values()])
                zf.writestr(name, _pth(sd))
        for name, data in (bad or {}).items():
            zf.writestr(name, data)
    return flat


def test_read_mnist_zip(tmp_path: Path) -> None:
    flat = _mnist_zip(tmp_path / "m.zip", 12, 3)
    pub = read_published(tmp_path / "m.zip")
    assert pub.kind == "mnist" and pub.params.shape == (15, 1185)
    assert pub.image_ids.tolist() == [*range(12), 60000, 60001, 60002]
    assert pub.labels.tolist() == [i % 10 for i in range(12)] + [0, 1, 2]
    assert pub.split.count("test") == 3 and pub.split.count("val") == 1
    name = "mnist-inrs/mnist_png_training_3_3/checkpoints/model_final.pth"
    assert torch.equal(pub.params[3], flat[name])
    # the parameters load back into Siren
    m = Siren()
    m.load_flat(pub.params[3])
    assert torch.equal(m.state_dict()["seq.1.weight"], _siren_sd(3)["seq.1.weight"])


def test_convert_fmnist_with_splits_json(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "f.zip", "w") as zf:
        for split, n in (("train", 5), ("test", 2)):
            for i in range(n):
                sd = dict(_siren_sd(i))
                sd["label"] = torch.tensor(7 - i)
                zf.writestr(f"fmnist_inrs/{split}/model_{i}.pth", _pth(sd))
    splits = {
        "train": {
            "path": [f"x/fmnist_inrs/train/model_{i}.pth" for i in (0, 1, 2)],
            "label": [7, 6, 5],
        },
        "val": {"path": [f"x/fmnist_inrs/train/model_{i}.pth" for i in (3, 4)], "label": [4, 3]},
        "test": {"path": [f"x/fmnist_inrs/test/model_{i}.pth" for i in (0, 1)], "label": [7, 6]},
    }
    (tmp_path / "s.json").write_text(json.dumps(splits))
    out = convert_published(tmp_path / "f.zip", tmp_path / "zoo", splits_json=tmp_path / "s.json")
    m = verify_zoo(out)
    assert m["source"] == "fashion-mnist" and m["splits"] == {
        "train": [0, 3],
        "val": [3, 5],
        "test": [5, 7],
    }
    ds = load_zoo(out)
    assert [int(ds["val"][i]["label"]) for i in range(2)] == [4, 3]
    assert int(ds["test"][1]["image_id"]) == 60001


def test_malicious_pickle_is_rejected_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    bad = "mnist-inrs/mnist_png_training_1_99/checkpoints/model_final.pth"
    _mnist_zip(tmp_path / "m.zip", bad={bad: _pth({"seq.0.weight": Evil()})})
    with pytest.raises(UnsafeFileError, match="model_final"):
        read_published(tmp_path / "m.zip")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (lambda: _pth(_siren_sd(0))[:-40], CorruptFileError, "cannot be read"),
        (
            lambda: _pth({**_siren_sd(0), "seq.1.weight": torch.zeros(32, 31)}),
            CorruptFileError,
            "shape",
        ),
        (
            lambda: _pth({k: v for k, v in _siren_sd(0).items() if k != "seq.2.bias"}),
            CorruptFileError,
            "keys",
        ),
        (lambda: _pth([1, 2, 3]), CorruptFileError, "state dict"),
    ],
)
def test_bad_checkpoints_raise_typed_errors(tmp_path: Path, payload, error, match) -> None:  # type: ignore[no-untyped-def]
    bad = "mnist-inrs/mnist_png_training_1_99/checkpoints/model_final.pth"
    _mnist_zip(tmp_path / "m.zip", bad={bad: payload()})
    with pytest.raises(error, match=match):
        read_published(tmp_path / "m.zip")


def test_size_limits_checked_before_reading(tmp_path: Path) -> None:
    _mnist_zip(tmp_path / "m.zip")
    with pytest.raises(FileTooLargeError):
        read_published(tmp_path / "m.zip", limits=Limits(max_member_bytes=1000))
    with pytest.raises(FileTooLargeError):
        read_published(tmp_path / "m.zip", limits=Limits(max_members=3))
    (tmp_path / "not.zip").write_bytes(b"nope")
    with pytest.raises(CorruptFileError):
        read_published(tmp_path / "not.zip")
