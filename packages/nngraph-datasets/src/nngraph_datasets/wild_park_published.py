"""Reader of the CNN Wild Park layout of the paper's reference code (`mkofinas/neural-graphs`),
and its conversion to a wild park zoo ([`write_wild_park_zoo`][nngraph_datasets.write_wild_park_zoo]).

What the reference code reads (its `CNNParkCIFAR10` data set, its split generator and the Ray
Tune trainer that wrote the files), and so what this reader reads:

- a folder with a splits file, `cnn_park_splits.json` by default:
  `{"train" | "val" | "test": {"path": [...], "score": [...], "step": [...]}}`: one entry
  per checkpoint; `path` is relative to the folder (`<zoo>/<trial>/<checkpoint_dir>/checkpoint.pt`),
  `score` the checkpoint's test accuracy, `step` its training iteration (epoch);
- one `torch.save` file per checkpoint: a dict with `model` (the state dict: `layers.<i>.weight`
  `[c_{i+1}, c_i, k_i, k_i]`, `layers.<i>.bias`, `fc.weight`, `fc.bias`) and `config` (the
  sampled architecture: `channels` (input channels first), `kernel_size`, `stride`,
  `padding`, `residual`, `activation`, one entry per conv layer, and `n_classes`); other keys
  (`optimizer`, `iteration`, `last_result`, ...) are ignored.

The reference network: layer $i$ is `conv_i`, then when `residual[i] = r >= 0` the output of
layer $r$ (after its activation) is added to the first $\\min(c_r, c_i)$ channels, then the
activation (`relu`, `gelu`, `tanh`, `sigmoid`, `leaky_relu`, `none`); global average pooling
and `fc`. It converts exactly to a [`WildCnn`][nngraph_datasets.WildCnn]: where the two layers
have different widths, the shortcut's 1x1 projection is the rectangular identity (ones on the
diagonal of the first $\\min(c_r, c_i)$ channels), so the converted module computes the same
function.

Assumptions (where the code does not pin the files down): the network of a checkpoint is its
trial folder (the `path`'s grandparent, as the reference's split generator groups them); a
missing `step` list numbers the checkpoints of a network in the order of the file; `padding`
must be `kernel_size // 2` (the reference sampler's rule). Files are loaded with
`torch.load(weights_only=True)` only: a checkpoint whose `config` is an object rather than
plain containers (Ray / OmegaConf objects, as the trainer may have pickled it) is refused with
an [`UnsafeFileError`][nngraph_datasets.UnsafeFileError]; re-save such files with
`config` as a plain `dict` where you trust them. Every other problem (a path leaving the
folder, a truncated or oversized file, wrong keys or shapes, NaN weights, a score outside
[0, 1]) is a typed [`DatasetError`][nngraph_datasets.DatasetError] naming the file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CorruptFileError, FileTooLargeError, UnsafeFileError, ZooFormatError
from .wild_park import WildCnnArch, write_wild_park_zoo

__all__ = ["convert_cnn_wild_park", "read_cnn_wild_park"]

#: files above these sizes are refused before they are read
MAX_CHECKPOINT_BYTES = 64 << 20
MAX_SPLITS_BYTES = 256 << 20
_ACTS = ("relu", "gelu", "tanh", "sigmoid", "leaky_relu", "none")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise FileTooLargeError(f"{path}: larger than {MAX_CHECKPOINT_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not data.startswith(b"PK\x03\x04"):
        raise CorruptFileError(
            f"{path}: not a zip-form torch checkpoint (legacy pickle and tar formats are refused)"
        )
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"{path}: refused to unpickle (not plain tensors and containers; a config object "
            f"must be re-saved as a plain dict): {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # truncated zip, bad records, ...
        raise CorruptFileError(
            f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CorruptFileError(f"{path}: expected a dict with a 'model' state dict")
    if not isinstance(obj.get("config"), dict):
        raise CorruptFileError(f"{path}: expected a dict with a 'config' (the architecture)")
    return obj


def _int_list(cfg: Mapping[str, Any], key: str, n: int, path: Path) -> tuple[int, ...]:
    v = cfg.get(key)
    if (
        not isinstance(v, list | tuple)
        or len(v) != n
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        raise CorruptFileError(f"{path}: config.{key} must be a list of {n} integers, got {v!r}")
    return tuple(v)


def _architecture(cfg: Mapping[str, Any], path: Path) -> WildCnnArch:
    ch = cfg.get("channels")
    if not isinstance(ch, list | tuple) or not 2 <= len(ch) <= 17:
        raise CorruptFileError(f"{path}: config.channels must list 2 to 17 channel counts")
    n = len(ch) - 1
    channels = _int_list(cfg, "channels", n + 1, path)
    kernels = _int_list(cfg, "kernel_size", n, path)
    strides = _int_list(cfg, "stride", n, path)
    residual = _int_list(cfg, "residual", n, path)
    if "padding" in cfg and _int_list(cfg, "padding", n, path) != tuple(k // 2 for k in kernels):
        raise CorruptFileError(f"{path}: config.padding must be kernel_size // 2 per layer")
    acts = cfg.get("activation")
    if not isinstance(acts, list | tuple) or len(acts) != n or any(a not in _ACTS for a in acts):
        raise CorruptFileError(f"{path}: config.activation must list {n} of {_ACTS}, got {acts!r}")
    classes = cfg.get("n_classes", 10)
    if not isinstance(classes, int) or isinstance(classes, bool):
        raise CorruptFileError(f"{path}: config.n_classes must be an integer")
    try:
        return WildCnnArch(channels[0], channels[1:], kernels, strides, tuple(acts), residual,
                           classes)  # fmt: skip
    except ValueError as e:
        raise CorruptFileError(f"{path}: config is not a supported architecture ({e})") from e


def _flat_params(arch: WildCnnArch, sd: Mapping[str, Any], path: Path) -> Tensor:
    """The state dict as a flat vector in `arch`'s layout (projections: rectangular identity)."""
    shapes = dict(arch.param_shapes())
    proj = {f"shortcuts.{i}.weight" for i in arch.projections()}
    expected = set(shapes) - proj
    if set(sd) != expected:
        raise CorruptFileError(
            f"{path}: model keys {sorted(map(str, sd))[:8]} differ from the expected "
            f"{sorted(expected)[:8]}"
        )
    parts = []
    for key, shape in arch.param_shapes():
        if key in proj:
            w = torch.zeros(shape)
            c = min(shape[0], shape[1])
            w[torch.arange(c), torch.arange(c)] = 1.0
        else:
            w = sd[key]
            if (
                not isinstance(w, Tensor)
                or not w.is_floating_point()
                or w.layout != torch.strided
                or tuple(w.shape) != shape
            ):
                desc = f"{w.dtype} {tuple(w.shape)}" if isinstance(w, Tensor) else type(w).__name__
                raise CorruptFileError(f"{path}: {key} must be a float tensor {shape}, got {desc}")
        parts.append(w.detach().to(torch.float32).reshape(-1))
    flat = torch.cat(parts)
    if not bool(torch.isfinite(flat).all()):
        raise CorruptFileError(f"{path}: the weights hold NaN or infinite values")
    return flat


def _splits(folder: Path, name: str) -> dict[str, dict[str, list[Any]]]:
    f = folder / name
    if not f.is_file():
        raise ZooFormatError(f"{folder}: no {name} (the CNN Wild Park splits file)")
    if f.stat().st_size > MAX_SPLITS_BYTES:
        raise FileTooLargeError(f"{f}: larger than {MAX_SPLITS_BYTES} bytes")
    try:
        obj = json.loads(f.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ZooFormatError(f"{f}: not a readable JSON file ({e})") from e
    if not isinstance(obj, dict) or not obj:
        raise ZooFormatError(f"{f}: expected an object of splits")
    out = {}
    for split, entry in obj.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), list):
            raise ZooFormatError(f"{f}: split {split!r} must hold a 'path' list")
        n = len(entry["path"])
        for key in ("score", "step"):
            if key in entry and (not isinstance(entry[key], list) or len(entry[key]) != n):
                raise ZooFormatError(f"{f}: {split}.{key} must be a list as long as its paths")
        if "score" not in entry:
            raise ZooFormatError(f"{f}: split {split!r} has no 'score' list")
        out[str(split)] = entry
    return out


def read_cnn_wild_park(
    folder: str | os.PathLike[str], *, splits_file: str = "cnn_park_splits.json"
) -> tuple[list[WildCnnArch], list[Tensor], dict[str, np.ndarray], dict[str, list[int]]]:
    """Read a CNN Wild Park folder in the layout of the reference code (see the module).

    Args:
        folder: the data set folder (the reference's `dataset_dir`).
        splits_file: the splits file inside it.

    Returns:
        `(architectures, params, metrics, splits)`: the distinct architectures; one flat
        parameter vector per checkpoint (in its architecture's
        [`WildCnn`][nngraph_datasets.WildCnn] layout); 1-D columns `network`, `epoch`,
        `architecture`, `test_acc`; split name -> network ids.
    """
    folder = Path(folder)
    root = folder.resolve()
    entries = _splits(folder, splits_file)
    records = []  # (split, relative path, score, step or None)
    for split, entry in entries.items():
        steps = entry.get("step")
        for j, (p, s) in enumerate(zip(entry["path"], entry["score"])):
            if not isinstance(p, str) or not p:
                raise ZooFormatError(f"{splits_file}: {split}.path[{j}] is not a path")
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= 1:
                raise ZooFormatError(f"{splits_file}: {split}.score[{j}] = {s!r} is not in [0, 1]")
            step = None if steps is None else steps[j]
            if step is not None and (
                isinstance(step, bool) or not isinstance(step, int) or step < 0
            ):
                raise ZooFormatError(f"{splits_file}: {split}.step[{j}] = {step!r} is not an epoch")
            records.append((split, p, float(s), step))
    if not records:
        raise ZooFormatError(f"{folder}: the splits list no checkpoints")
    trials = sorted({str(Path(p).parent.parent) for _, p, _, _ in records})
    network_of = {t: i for i, t in enumerate(trials)}
    archs: list[WildCnnArch] = []
    arch_ids: dict[WildCnnArch, int] = {}
    arch_of_net: dict[int, int] = {}
    params, cols = [], {"network": [], "epoch": [], "architecture": [], "test_acc": []}
    split_of: dict[int, str] = {}
    seen_paths: set[str] = set()
    order: dict[int, int] = {}
    for split, p, score, step in records:
        path = (folder / p).resolve()
        if Path(p).is_absolute() or not path.is_relative_to(root):
            raise ZooFormatError(f"{splits_file}: {p!r} points outside {folder}")
        if p in seen_paths:
            raise ZooFormatError(f"{splits_file}: {p!r} is listed twice")
        seen_paths.add(p)
        if not path.is_file():
            raise ZooFormatError(f"{folder}: {p} is missing")
        net = network_of[str(Path(p).parent.parent)]
        if split_of.setdefault(net, split) != split:
            raise ZooFormatError(f"{splits_file}: network {Path(p).parent.parent} is in two splits")
        ckpt = _load_checkpoint(path)
        arch = _architecture(ckpt["config"], path)
        a = arch_ids.setdefault(arch, len(archs))
        if a == len(archs):
            archs.append(arch)
        if arch_of_net.setdefault(net, a) != a:
            raise ZooFormatError(f"{path}: its config differs from the network's other checkpoints")
        params.append(_flat_params(arch, ckpt["model"], path))
        if step is None:
            step = order.get(net, 0)
            order[net] = step + 1
        cols["network"].append(net)
        cols["epoch"].append(step)
        cols["architecture"].append(a)
        cols["test_acc"].append(score)
    metrics = {k: np.asarray(v, dtype=np.float64 if k == "test_acc" else np.int64)
               for k, v in cols.items()}  # fmt: skip
    pairs = set(zip(metrics["network"].tolist(), metrics["epoch"].tolist()))
    if len(pairs) != len(records):
        raise ZooFormatError(f"{splits_file}: a network has two checkpoints of the same step")
    splits: dict[str, list[int]] = {s: [] for s in entries}
    for net, s in sorted(split_of.items()):
        splits[s].append(net)
    return archs, params, metrics, splits


def convert_cnn_wild_park(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    splits_file: str = "cnn_park_splits.json",
    input_size: int = 32,
    dataset: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CNN Wild Park folder of the reference layout into a wild park zoo
    (safetensors shards per architecture + manifest with checksums; the reference's splits).

    Args:
        src: the data set folder with the splits file and the checkpoints.
        out: the zoo folder to create.
        splits_file: the splits file inside `src`.
        input_size: the images' height and width (32: CIFAR-10).
        dataset: recorded name (default: the folder's name).
        overwrite: replace an existing zoo at `out`.
    """
    src = Path(src)
    archs, params, metrics, splits = read_cnn_wild_park(src, splits_file=splits_file)
    in_ch = {a.in_channels for a in archs}
    if len(in_ch) != 1:
        raise ZooFormatError(f"{src}: the networks take different input channels {sorted(in_ch)}")
    shape = [in_ch.pop(), input_size, input_size]
    for a in archs:
        try:
            a.check_input((input_size, input_size))
        except ValueError as e:
            raise ZooFormatError(f"{src}: {a.label}: {e}") from e
    return write_wild_park_zoo(
        out, archs, params, metrics, input_shape=shape, splits=splits, overwrite=overwrite,
        recipe={"name": "cnn-wild-park", "source": "CNN Wild Park, reference layout "
                "(Kofinas et al. 2024, mkofinas/neural-graphs)"},
        dataset=dataset or src.name,
        extra={"converted_from": {"layout": "cnn-wild-park", "folder": src.name,
                                  "splits_file": splits_file}},
    )  # fmt: skip
