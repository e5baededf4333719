"""Hidden-neuron permutations: the symmetry that neural graphs respect.

Permuting the neurons (channels) of hidden layer `l` -- the rows of `W_l` and `b_l` and the
columns of `W_{l+1}` -- leaves the network's function unchanged. Inputs and outputs have fixed
identities and are never permuted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ShapeMismatchError
from .spec import NetworkSpec, network_spec

__all__ = ["HiddenPermutation", "permute_hidden", "random_hidden_permutation"]


@dataclass(frozen=True)
class HiddenPermutation:
    """One permutation per hidden node layer.

    `perms[l - 1][j] = i` means: neuron `j` of hidden layer `l` in the permuted network is
    neuron `i` of the original (`W'_l = W_l[perm]`, `b'_l = b_l[perm]`,
    `W'_{l+1} = W_{l+1}[:, perm]`).
    """

    perms: tuple[Tensor, ...]

    @classmethod
    def identity(cls, spec: NetworkSpec) -> HiddenPermutation:
        return cls(tuple(torch.arange(hs.size) for hs in spec.hidden_sets))

    @classmethod
    def from_lists(cls, perms: Sequence[Sequence[int]]) -> HiddenPermutation:
        return cls(tuple(torch.as_tensor(list(p), dtype=torch.long) for p in perms))

    def check(self, spec: NetworkSpec) -> None:
        """Raise [`ShapeMismatchError`][nngraph_core.ShapeMismatchError] unless this is a valid permutation for `spec`."""
        sets = spec.hidden_sets
        what = "hidden layers" if spec.is_chain else "hidden node sets"
        if len(self.perms) != len(sets):
            raise ShapeMismatchError(f"{len(self.perms)} permutations for {len(sets)} {what}")
        for k, (p, hs) in enumerate(zip(self.perms, sets, strict=True)):
            n = hs.size
            where = f"layer {k + 1}" if spec.is_chain else f"node set {hs.name!r}"
            if (
                p.dim() != 1
                or p.numel() != n
                or not torch.equal(p.sort().values.cpu(), torch.arange(n))
            ):
                raise ShapeMismatchError(
                    f"entry {k} is not a permutation of the {n} neurons of {where}"
                )
            if hs.parent is None:
                continue
            moved = torch.div(p.cpu(), hs.block, rounding_mode="floor").view(-1, hs.block)
            owners = moved[:, 0]
            parent = torch.arange(n // hs.block) if hs.parent < 0 else self.perms[hs.parent].cpu()
            if not bool((moved == owners[:, None]).all()) or not torch.equal(owners, parent):
                raise ShapeMismatchError(
                    f"entry {k} moves the nodes of {where} out of their blocks of {hs.block} "
                    "(attention heads / normalization groups) or not with their owners"
                )

    def inverse(self) -> HiddenPermutation:
        return HiddenPermutation(tuple(torch.argsort(p) for p in self.perms))

    def compose(self, other: HiddenPermutation) -> HiddenPermutation:
        """The permutation that applies `self` first, then `other`."""
        return HiddenPermutation(tuple(p[q] for p, q in zip(self.perms, other.perms, strict=True)))

    def is_identity(self) -> bool:
        return all(torch.equal(p, torch.arange(p.numel())) for p in self.perms)


def _spec_of(source: NetworkSpec | nn.Module) -> NetworkSpec:
    return source if isinstance(source, NetworkSpec) else network_spec(source)


def random_hidden_permutation(
    spec: NetworkSpec | nn.Module, generator: torch.Generator | None = None
) -> HiddenPermutation:
    """A uniformly random hidden permutation, drawn from `generator` (seed it for repeatability)."""
    s = _spec_of(spec)
    sets = s.hidden_sets
    perms: list[Tensor | None] = [None] * len(sets)

    def draw(k: int) -> Tensor:
        done = perms[k]
        if done is not None:
            return done
        hs = sets[k]
        if hs.parent is None:
            p = torch.randperm(hs.size, generator=generator)
        else:
            owners = draw(hs.parent) if hs.parent >= 0 else torch.arange(hs.size // hs.block)
            p = torch.cat(
                [o * hs.block + torch.randperm(hs.block, generator=generator) for o in owners]
            )
        perms[k] = p
        return p

    return HiddenPermutation(tuple(draw(k) for k in range(len(sets))))


def permute_hidden(
    source: nn.Module | Mapping[str, Tensor],
    perm: HiddenPermutation,
    spec: NetworkSpec | None = None,
) -> nn.Module | dict[str, Tensor]:
    """Apply `perm` to a module (returns a permuted deep copy) or a state dict (returns a new one).

    The result computes the same function as `source`.

    Args:
        source: a module, or a state dict (then `spec` is required).
        perm: the permutation, e.g. from
            [`random_hidden_permutation`][nngraph_core.random_hidden_permutation].
        spec: the architecture of a state dict.
    """
    import copy

    from .template import GraphTemplate

    if isinstance(source, nn.Module):
        module_spec = network_spec(source) if spec is None else spec
        template = GraphTemplate(module_spec)
        sd = source.state_dict()
        flat = template.flatten(sd, allow_nonfinite=True)
        new_sd = template.state_dict(template.permute(flat, perm), sd)
        clone = copy.deepcopy(source)
        clone.load_state_dict(new_sd)
        return clone
    if spec is None:
        raise TypeError("permute_hidden(state_dict, perm) needs spec=NetworkSpec")
    template = GraphTemplate(spec)
    flat = template.flatten(source, allow_nonfinite=True)
    permuted = template.state_dict(template.permute(flat, perm), source)
    return {k: v.clone() for k, v in permuted.items()}
