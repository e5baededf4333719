"""Base test classes that every graph model's test suite subclasses.

Subclass, implement [`GraphModelTests.make_model`][nngraph_testing.GraphModelTests.make_model], and
pytest collects the inherited property tests (drawn by Hypothesis, run in float32 and float64, eval
and train mode):

```python
class TestMyModel(InvariantModelTests):
    kinds = ("mlp", "cnn")

    def make_model(self, template, dtype):
        return MyModel.for_graphs(template, num_outputs=3, dropout=0.0).to(dtype)
```

The model takes a [`GraphBatch`][nngraph_core.GraphBatch] built by `template.batch(params)` and
returns `[B, k]` (invariant models) or flat parameters `[B, P]` (equivariant models). In train
mode the tests expect a deterministic model (dropout 0): a dropout mask is not permuted along.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import nngraph_core as ngc

from .asserts import assert_close_by_dtype, assert_differs, assert_sensitive
from .permutations import partial_permutation_index
from .strategies import SMOOTH_ACTIVATIONS, network_recipes, nontrivial_hidden_permutations, seeds

__all__ = ["EquivariantModelTests", "GraphModelTests", "InvariantModelTests"]


def _property(fn: Callable[..., None]) -> Callable[..., None]:
    """Mark a property test of a base class. Every subclass gets its own `@given`-wrapped copy
    (see `GraphModelTests.__init_subclass__`), so the settings come from the profile that
    is active when the tests run, and Hypothesis sees one test function per test class."""
    fn._nngraph_property = True  # type: ignore[attr-defined]
    return fn


def _wrap(raw: Callable[..., None], owner: type) -> Callable[..., None]:
    def test(self: object, data: st.DataObject) -> None:
        raw(self, data)

    test.__name__ = raw.__name__
    test.__qualname__ = f"{owner.__qualname__}.{raw.__name__}"
    test.__doc__ = raw.__doc__
    test.__module__ = owner.__module__
    wrapped = given(data=st.data())(test)
    wrapped._nngraph_raw = raw  # type: ignore[attr-defined]
    return wrapped


class GraphModelTests:
    """Shared machinery: draw an architecture, a zoo of networks, and permutations."""

    #: which architectures to draw: any of "mlp", "cnn".
    kinds: ClassVar[tuple[str, ...]] = ("mlp",)
    #: the dtypes every property runs in.
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float64)
    #: modes every property runs in.
    modes: ClassVar[tuple[str, ...]] = ("eval", "train")
    #: networks per drawn batch.
    batch_size: ClassVar[int] = 3
    #: limits on drawn architectures (keep models fast).
    max_width: ClassVar[int] = 6
    max_layers: ClassVar[int] = 3
    #: tolerance multiplier for deep models (sums over many terms).
    scale: ClassVar[float] = 10.0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            if not name.startswith("test_"):
                continue
            attr = getattr(cls, name)
            raw = getattr(attr, "_nngraph_raw", None)
            if raw is None and getattr(attr, "_nngraph_property", False):
                raw = attr
            if raw is not None:  # an inherited base-class property (not a subclass override)
                setattr(cls, name, _wrap(raw, cls))

    def make_model(self, template: ngc.GraphTemplate, dtype: torch.dtype) -> nn.Module:
        """Build the model under test for graphs of `template`, in `dtype`."""
        raise NotImplementedError

    def run_model(self, model: nn.Module, template: ngc.GraphTemplate, params: Tensor) -> Tensor:
        """Call the model on flat parameters; override if the model needs more than a batch."""
        out: Tensor = model(template.batch(params))
        return out

    # -- drawing ------------------------------------------------------------------------------
    def _recipes(self, min_hidden_width: int = 1) -> st.SearchStrategy:
        options = []
        for kind in self.kinds:
            kwargs: dict[str, object] = {
                "min_hidden_width": min_hidden_width,
                "activations": SMOOTH_ACTIVATIONS,
            }
            if kind == "mlp":
                kwargs.update(max_width=self.max_width, max_layers=self.max_layers, min_layers=2)
            else:
                kwargs.update(max_channels=self.max_width, max_conv=2, max_linear=1, max_kernel=3)
            options.append(network_recipes(kind, **kwargs))
        return st.one_of(*options)

    def _draw_setup(
        self, data: st.DataObject, min_hidden_width: int = 2, *, sensitivity: bool = False
    ) -> tuple[ngc.GraphTemplate, Tensor, torch.dtype, str]:
        recipe = data.draw(self._recipes(min_hidden_width), label="architecture")
        # Sensitivity checks ("an illegal permutation changes the output") run in float64,
        # where the noise floor is far below any real change; a small model at random
        # initialisation may react to an uncoupled permutation by less than float32's
        # equivariance tolerance, which would make the check undecidable there.
        dtypes = (torch.float64,) if sensitivity and torch.float64 in self.dtypes else self.dtypes
        dtype = data.draw(st.sampled_from(dtypes), label="dtype")
        mode = data.draw(st.sampled_from(self.modes), label="mode")
        seed = data.draw(seeds, label="seed")
        nets = [recipe.build(seed + i, torch.float64) for i in range(self.batch_size)]
        template = ngc.GraphTemplate.from_module(nets[0], input_shape=recipe.input_shape)
        params = torch.stack([template.flatten(m) for m in nets]).to(dtype)
        return template, params, dtype, mode

    def _draw_uncoupled_index(self, data: st.DataObject, template: ngc.GraphTemplate) -> Tensor:
        """Index `pi` [P] of an illegal permutation: the first hidden layer that a drawn
        non-trivial permutation moves is permuted in its incoming weights and biases only."""
        perm = data.draw(nontrivial_hidden_permutations(template.spec), label="permutation")
        layer = next(
            i for i, p in enumerate(perm.perms, start=1) if not p.equal(torch.arange(p.numel()))
        )
        return partial_permutation_index(
            template, layer, perm.perms[layer - 1], incoming=True, outgoing=False
        )

    def _model(
        self, template: ngc.GraphTemplate, dtype: torch.dtype, mode: str, seed: int
    ) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.make_model(template, dtype)
        return model.train(mode == "train")


class InvariantModelTests(GraphModelTests):
    """Properties of a model whose output must not change under hidden permutations."""

    @_property
    def test_invariant_to_hidden_permutations(self, data: st.DataObject) -> None:
        template, params, dtype, mode = self._draw_setup(data)
        perm = data.draw(nontrivial_hidden_permutations(template.spec), label="permutation")
        model = self._model(template, dtype, mode, data.draw(seeds))
        with torch.no_grad():
            out = self.run_model(model, template, params)
            out_p = self.run_model(model, template, template.permute(params, perm))
        assert_close_by_dtype(
            out_p, out, "invariant model changed under a hidden permutation", scale=self.scale
        )

    @_property
    def test_sensitive_to_uncoupled_permutation(self, data: st.DataObject) -> None:
        template, params, dtype, mode = self._draw_setup(data, sensitivity=True)
        pi = self._draw_uncoupled_index(data, template)
        model = self._model(template, dtype, mode, data.draw(seeds))
        with torch.no_grad():
            assert_sensitive(
                lambda p: self.run_model(model, template, p), params, lambda p: p[..., pi]
            )

    @_property
    def test_output_neurons_keep_identity(self, data: st.DataObject) -> None:
        template, params, dtype, mode = self._draw_setup(data, sensitivity=True)
        n_out = template.spec.widths[-1]
        if n_out < 2:
            return
        last = template.spec.num_layers
        swap = torch.arange(n_out)
        swap[0], swap[1] = 1, 0
        pi = partial_permutation_index(template, last, swap, incoming=True, outgoing=False)
        model = self._model(template, dtype, mode, data.draw(seeds))
        with torch.no_grad():
            assert_sensitive(
                lambda p: self.run_model(model, template, p), params, lambda p: p[..., pi]
            )


class EquivariantModelTests(GraphModelTests):
    """Properties of a model that maps networks to networks (e.g. an editing head)."""

    @_property
    def test_equivariant_to_hidden_permutations(self, data: st.DataObject) -> None:
        template, params, dtype, mode = self._draw_setup(data)
        perm = data.draw(nontrivial_hidden_permutations(template.spec), label="permutation")
        model = self._model(template, dtype, mode, data.draw(seeds))
        with torch.no_grad():
            out = self.run_model(model, template, params)
            out_p = self.run_model(model, template, template.permute(params, perm))
        expected = template.permute(out.double(), perm).to(out.dtype)
        assert_close_by_dtype(
            out_p,
            expected,
            "equivariant model does not commute with the permutation",
            scale=self.scale,
        )

    @_property
    def test_sensitive_to_uncoupled_permutation(self, data: st.DataObject) -> None:
        template, params, dtype, mode = self._draw_setup(data, sensitivity=True)
        pi = self._draw_uncoupled_index(data, template)
        model = self._model(template, dtype, mode, data.draw(seeds))
        with torch.no_grad():
            # An uncoupled permutation is not a symmetry: the output on the illegally permuted
            # input must differ from the illegally permuted output.
            out = self.run_model(model, template, params)
            out_illegal = self.run_model(model, template, params[..., pi])
        assert_differs(
            out_illegal,
            out[..., pi],
            "equivariant model treats an uncoupled permutation as a symmetry",
        )
