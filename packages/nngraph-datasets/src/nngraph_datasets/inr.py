"""The INR of the MNIST / Fashion-MNIST INR benchmarks (DWSNet lineage) and its recipes.

Architecture `2 -> 32 -> 32 -> 1`: two hidden layers `sin(30 (W x + b))`, a plain linear output
layer, and `+0.5` on the output. Coordinates are an `H x W` grid in `[-1, 1]^2` (x along the
columns, y along the rows), pixels are in `[0, 1]`. See `docs/inr-convention.md`.

Flat parameter vectors follow the state-dict order `seq.0.weight, seq.0.bias, seq.1.weight,
seq.1.bias, seq.2.weight, seq.2.bias` (1,185 numbers for width 32).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "BENCHMARK",
    "FASHION_MNIST_BENCHMARK",
    "RECIPES",
    "SIREN_INIT",
    "InrRecipe",
    "Siren",
    "grid",
    "init_params",
    "inr_seed",
    "num_params",
    "param_slices",
    "psnr",
    "render",
]

FirstLayerInit = Literal["benchmark", "siren"]


@dataclasses.dataclass(frozen=True)
class InrRecipe:
    """How an INR zoo is fitted. Every field is written to the zoo's manifest.

    Args:
        name: recipe name (`"benchmark"`, `"siren-init"` or your own).
        steps: maximum Adam steps per INR.
        lr: Adam learning rate (betas 0.9 / 0.999, eps 1e-8, no weight decay).
        stop_psnr: an INR stops (and stops changing) once its PSNR reaches this, in dB.
        first_layer_init: `"benchmark"` — every sine layer W ~ U(±sqrt(6/fan_in)/w0) (the
            published zoos); `"siren"` — the original SIREN first layer U(±1/fan_in).
        hidden: hidden width.
        w0: sine frequency.
    """

    name: str = "benchmark"
    steps: int = 1000
    lr: float = 5e-4
    stop_psnr: float = 40.0
    first_layer_init: FirstLayerInit = "benchmark"
    hidden: int = 32
    w0: float = 30.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> InrRecipe:
        kw = dict(d)
        if "betas" in kw:
            b = kw["betas"]
            assert isinstance(b, (list, tuple))
            kw["betas"] = (float(b[0]), float(b[1]))
        return cls(**kw)  # type: ignore[arg-type]


BENCHMARK = InrRecipe()
"""The published benchmark recipe (DESIGN §5): reproduces the MNIST / Fashion-MNIST INR zoos."""
#: Original SIREN first-layer init U(±1/fan_in): fits to 40 dB in ~500-1,000 steps. For own zoos.
SIREN_INIT = InrRecipe(name="siren-init", first_layer_init="siren")
#: The benchmark recipe with the step count chosen for Fashion-MNIST (see docs/inr-convention.md):
#: the published Fashion-MNIST INRs were fitted much longer than 1,000 steps.
FASHION_MNIST_BENCHMARK = InrRecipe(name="benchmark", steps=5000)
RECIPES: dict[str, InrRecipe] = {"benchmark": BENCHMARK, "siren-init": SIREN_INIT}


def num_params(hidden: int = 32) -> int:
    """Parameters of a `2 -> hidden -> hidden -> 1` INR (1,185 for 32)."""
    return hidden * hidden + 5 * hidden + 1


def param_slices(hidden: int = 32) -> dict[str, slice]:
    """State-dict key -> slice of the flat parameter vector."""
    shapes = {
        "seq.0.weight": hidden * 2,
        "seq.0.bias": hidden,
        "seq.1.weight": hidden * hidden,
        "seq.1.bias": hidden,
        "seq.2.weight": hidden,
        "seq.2.bias": 1,
    }
    out, start = {}, 0
    for k, n in shapes.items():
        out[k] = slice(start, start + n)
        start += n
    return out


def grid(height: int = 28, width: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel-centre coordinates `[H*W, 2]` in `[-1, 1]`, row-major, `(x, y)` per pixel.

    `x = linspace(-1, 1, W)[col]`, `y = linspace(-1, 1, H)[row]` — the reference code's
    `meshgrid` of two `linspace(-1, 1, 28)`.
    """
    width = height if width is None else width
    ys = torch.linspace(-1, 1, height, dtype=dtype)
    xs = torch.linspace(-1, 1, width, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)


def inr_seed(seed: int, index: int) -> int:
    """The seed of INR number `index` of a zoo fitted with `seed`.

    Each INR gets its own generator, so its initialisation does not depend on how the zoo is
    batched, sharded or resumed.
    """
    digest = hashlib.sha256(f"nngraph-inr:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_params(
    generator: torch.Generator,
    *,
    hidden: int = 32,
    w0: float = 30.0,
    first_layer_init: FirstLayerInit = "benchmark",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One INR's initial flat parameters `[P]` (state-dict order).

    Sine layers: `W ~ U(±sqrt(6/fan_in)/w0)`, `b = 0`; with `first_layer_init="siren"` the
    first layer is `U(±1/fan_in)` instead. Last layer: `nn.Linear` default, i.e.
    `W, b ~ U(±1/sqrt(fan_in))`. Draw order: W0, W1, W2, b2.
    """

    def uniform(n: int, bound: float) -> Tensor:
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    if first_layer_init == "siren":
        b0 = 1.0 / 2
    elif first_layer_init == "benchmark":
        b0 = math.sqrt(6.0 / 2) / w0
    else:
        raise ValueError(
            f"first_layer_init must be 'benchmark' or 'siren', got {first_layer_init!r}"
        )
    w_0 = uniform(hidden * 2, b0)
    w_1 = uniform(hidden * hidden, math.sqrt(6.0 / hidden) / w0)
    k = 1.0 / math.sqrt(hidden)
    w_2 = uniform(hidden, k)
    b_2 = uniform(1, k)
    zeros = torch.zeros(hidden, dtype=torch.float64)
    return torch.cat([w_0, zeros, w_1, zeros, w_2, b_2]).to(dtype)


class Siren(nn.Module):
    r"""The benchmark INR: $f(x) = W_2 \sin(w_0 (W_1 \sin(w_0 (W_0 x + b_0)) + b_1)) + b_2 + 0.5$.

    Args:
        hidden: hidden width (32 in the benchmarks).
        w0: sine frequency (30).
        first_layer_init: `"benchmark"` (published zoos) or `"siren"` (original SIREN).
        generator: random generator for the initialisation (global RNG if `None`).

    Shapes:
        - input: coordinates `[..., 2]` in `[-1, 1]`
        - output: intensities `[...]`

    The state-dict keys are `seq.{0,1,2}.{weight,bias}`, so published checkpoints load into it,
    and `nngraph_layers` lets [`nngraph_core.from_module`][nngraph_core.from_module] read it as a
    neural graph.
    """

    def __init__(
        self,
        hidden: int = 32,
        w0: float = 30.0,
        *,
        first_layer_init: FirstLayerInit = "benchmark",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.w0 = w0
        self.first_layer_init: FirstLayerInit = first_layer_init
        self.seq = nn.Sequential(
            nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        )
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        flat = init_params(
            generator, hidden=self.hidden, w0=self.w0, first_layer_init=self.first_layer_init
        )
        self.load_flat(flat)

    def load_flat(self, flat: Tensor) -> None:
        """Copy a flat parameter vector `[P]` into the module."""
        sd = {
            k: flat[s].reshape(v.shape)
            for (k, s), v in zip(param_slices(self.hidden).items(), self.state_dict().values())
        }
        self.load_state_dict(sd)

    def flat(self) -> Tensor:
        """The flat parameter vector `[P]` (state-dict order)."""
        return torch.cat([p.detach().reshape(-1) for p in self.state_dict().values()])

    def forward(self, coords: Tensor) -> Tensor:
        h = torch.sin(self.w0 * self.seq[0](coords))
        h = torch.sin(self.w0 * self.seq[1](h))
        out: Tensor = self.seq[2](h).squeeze(-1) + 0.5
        return out

    def nngraph_layers(self) -> list[nn.Module]:
        """Layer order for [`nngraph_core.from_module`][nngraph_core.from_module] (the sines are
        parameter-free)."""
        from nngraph_core import Sine

        return [self.seq[0], Sine(self.w0), self.seq[1], Sine(self.w0), self.seq[2]]

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, w0={self.w0}, first_layer_init={self.first_layer_init!r}"


def render(
    params: Tensor, height: int = 28, width: int | None = None, *, w0: float = 30.0
) -> Tensor:
    """Evaluate a batch of flat INRs `[B, P]` on the pixel grid -> images `[B, H, W]`."""
    width = height if width is None else width
    if params.dim() == 1:
        return render(params[None], height, width, w0=w0)[0]
    b, p = params.shape
    hidden = round((-5 + math.sqrt(25 - 4 * (1 - p))) / 2)
    if num_params(hidden) != p:
        raise ValueError(f"{p} parameters is not a 2 -> h -> h -> 1 INR")
    s = param_slices(hidden)
    x = grid(height, width, dtype=params.dtype)
    w_0 = params[:, s["seq.0.weight"]].reshape(b, hidden, 2)
    w_1 = params[:, s["seq.1.weight"]].reshape(b, hidden, hidden)
    w_2 = params[:, s["seq.2.weight"]].reshape(b, hidden, 1)
    h = torch.sin(w0 * (torch.matmul(x, w_0.transpose(1, 2)) + params[:, None, s["seq.0.bias"]]))
    h = torch.sin(w0 * (torch.bmm(h, w_1.transpose(1, 2)) + params[:, None, s["seq.1.bias"]]))
    y = torch.bmm(h, w_2)[..., 0] + params[:, s["seq.2.bias"]] + 0.5
    return y.reshape(b, height, width)


def psnr(mse: Tensor) -> Tensor:
    """PSNR in dB for pixels in `[0, 1]`: `10 log10(1 / mse)`."""
    out: Tensor = -10.0 * torch.log10(mse)
    return out
