"""Label your own INRs with a trained classifier: [`predict`][nngraph_apps.predict] and
`nngraph-train predict`.

Inputs are state-dict files of single INRs (`.pth` / `.pt`, read with
`torch.load(weights_only=True)` and checked key by key; `.safetensors` with the state-dict keys)
or batches of flat parameters (`.safetensors` holding one `params` tensor `[B, P]`, the layout of
our zoo shards). The task's own forward runs on them, so whatever the model was trained with —
canonicalisation of the networks, probe features, the probe readout — is applied exactly as in
`fit` and `test`.

```python
from nngraph_apps import predict

result = predict("runs/mnist5k_ngnn/checkpoints/best.ckpt", ["my_inr.pth"])
print(result.labels, result.probabilities.max(1).values)
```
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import nngraph_core as ngc

from .errors import ConfigError

__all__ = ["InputFileError", "Predictions", "load_inputs", "predict"]

#: Largest input file read (a 1,185-parameter INR is ~6 KiB; a 70k-INR shard ~330 MB).
MAX_INPUT_BYTES = 2 << 30


class InputFileError(ngc.NNGraphError, ValueError):
    """An input file of `predict` that cannot be read as INRs of the model's architecture."""


@dataclass
class Predictions:
    """What [`predict`][nngraph_apps.predict] returns: one row per input network."""

    sources: list[str]
    logits: Tensor
    probabilities: Tensor
    labels: Tensor

    def to_json(self) -> list[dict[str, object]]:
        """One record per network: source, label, probability of that label, all probabilities."""
        return [
            {
                "source": src,
                "label": int(lab),
                "probability": float(prob[lab]),
                "probabilities": [round(float(v), 6) for v in prob],
            }
            for src, lab, prob in zip(self.sources, self.labels, self.probabilities, strict=True)
        ]


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    if size > MAX_INPUT_BYTES:
        raise InputFileError(f"{path}: {size} bytes, more than the limit of {MAX_INPUT_BYTES}")
    return path.read_bytes()


def _from_state_dict(state: dict[str, object], template: ngc.GraphTemplate, name: str) -> Tensor:
    keys = set(template.spec.param_keys)
    # published Fashion-MNIST checkpoints carry their label next to the weights
    sd = {k: v for k, v in state.items() if k != "label" or k in keys}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise InputFileError(f"{name}: entries {bad} are not tensors")
    try:
        return template.flatten(sd).float()  # type: ignore[arg-type]
    except ngc.NNGraphError as e:
        raise InputFileError(f"{name}: not an INR of the model's architecture: {e}") from e


def load_inputs(
    paths: Sequence[str | os.PathLike[str]], template: ngc.GraphTemplate
) -> tuple[Tensor, list[str]]:
    """Flat parameters `[B, P]` and one source name per row from state-dict / safetensors files.

    Raises:
        InputFileError: a file that is missing, too large, unreadable, not plain tensors (a
            pickle with code in it), of another architecture, or with NaN / inf weights.
    """
    rows: list[Tensor] = []
    names: list[str] = []
    for raw in paths:
        path = Path(raw)
        data = _read_bytes(path)
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load as load_safetensors

            try:
                tensors = load_safetensors(data)
            except (SafetensorError, ValueError, RuntimeError) as e:
                raise InputFileError(f"{path}: not a readable safetensors file ({e})") from e
            if set(tensors) == {"params"}:
                params = tensors["params"]
                if params.dim() != 2 or params.shape[1] != template.num_params:
                    raise InputFileError(
                        f"{path}: 'params' has shape {tuple(params.shape)}, expected "
                        f"[B, {template.num_params}]"
                    )
                if not params.is_floating_point():
                    raise InputFileError(f"{path}: 'params' has dtype {params.dtype}")
                rows.extend(params.float())
                names.extend(f"{path}[{i}]" for i in range(len(params)))
                continue
            rows.append(_from_state_dict(dict(tensors), template, str(path)))
            names.append(str(path))
            continue
        try:
            obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as e:  # an unpickling refusal, a truncated or foreign file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputFileError(
                f"{path}: not a plain-tensor torch checkpoint (read with weights_only=True): {first}"
            ) from e
        if not isinstance(obj, dict):
            raise InputFileError(f"{path}: expected a state dict, got {type(obj).__name__}")
        rows.append(_from_state_dict(obj, template, str(path)))
        names.append(str(path))
    if not rows:
        raise InputFileError("no input networks given")
    params = torch.stack(rows)
    try:
        ngc.check_finite(params, "input INR parameters")
    except ngc.NNGraphError as e:
        raise InputFileError(str(e)) from e
    return params, names


def predict(
    checkpoint: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]] | Tensor,
    *,
    batch_size: int = 256,
) -> Predictions:
    """Classify INRs with a trained [`InrClassificationTask`][nngraph_apps.InrClassificationTask].

    Args:
        checkpoint: a checkpoint written by `nngraph-train fit` (`checkpoints/*.ckpt`).
        inputs: files (see [`load_inputs`][nngraph_apps.load_inputs]) or flat
            parameters `[B, P]`.
        batch_size: networks per forward pass.

    The task's forward applies what the model was trained with (canonicalisation, probes), so
    the result is what `nngraph-train test` computes for the same networks.
    """
    from .tasks import InrClassificationTask

    try:
        task = InrClassificationTask.load_from_checkpoint(
            str(checkpoint), map_location="cpu", weights_only=True
        )
    except FileNotFoundError as e:
        raise ConfigError(f"no checkpoint at {checkpoint}") from e
    task.eval()
    if isinstance(inputs, Tensor):
        params = inputs.float()
        sources = [f"params[{i}]" for i in range(len(params))]
    else:
        params, sources = load_inputs(inputs, task.template)
    logits = []
    with torch.inference_mode():
        for start in range(0, len(params), batch_size):
            logits.append(task(params[start : start + batch_size]))
    out = torch.cat(logits)
    probs = out.softmax(-1)
    return Predictions(sources, out, probs, probs.argmax(-1))


def write_predictions(path: Path, result: Predictions) -> None:
    """Write the predictions as JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result.to_json(), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
