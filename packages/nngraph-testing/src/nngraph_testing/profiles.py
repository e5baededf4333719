"""Hypothesis profiles for nngraph test suites.

* `ci` -- Hypothesis' built-in `ci` profile (derandomized, no deadline, no database), with
  200 examples per property. Hypothesis selects it when the `CI` environment variable is set.
* `dev` -- quick local runs: 25 examples, no deadline (torch code has no stable timing).
* `thorough` -- 2,000 examples, for a nightly or a release.
* `fuzz` -- the `ci` profile (derandomized: the same inputs every run) with 2,000 examples:
  `nox -s fuzz` runs the readers' fuzz tests under it and reports the figures.

Select one with `pytest --hypothesis-profile NAME` or `NNGRAPH_HYPOTHESIS_PROFILE=NAME`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["PROFILES", "device_under_test", "load_profile", "register_profiles"]

PROFILES = ("ci", "dev", "thorough", "fuzz")
"""The hypothesis profiles [`register_profiles`][nngraph_testing.register_profiles] registers."""
CI_EXAMPLES = 200
FUZZ_EXAMPLES = 2000


def register_profiles() -> None:
    """Register the nngraph profiles (idempotent)."""
    base_ci = settings.get_profile("ci")
    settings.register_profile(
        "ci",
        parent=base_ci,
        max_examples=CI_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile(
        "dev",
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile(
        "fuzz",
        parent=settings.get_profile("ci"),  # the nngraph ci profile just registered
        max_examples=FUZZ_EXAMPLES,
    )
    settings.register_profile(
        "thorough",
        max_examples=2000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def default_profile() -> str:
    """`$NNGRAPH_HYPOTHESIS_PROFILE` if set, else `ci` under CI, else `dev`."""
    chosen = os.environ.get("NNGRAPH_HYPOTHESIS_PROFILE")
    if chosen:
        if chosen not in PROFILES:
            raise ValueError(f"NNGRAPH_HYPOTHESIS_PROFILE={chosen!r}; choose one of {PROFILES}")
        return chosen
    return "ci" if os.environ.get("CI") else "dev"


def load_profile(name: str | None = None) -> str:
    """Register the profiles and load `name` (default: `default_profile`)."""
    register_profiles()
    chosen = name or default_profile()
    settings.load_profile(chosen)
    return chosen


def device_under_test() -> str:
    """The device the suites run on: `$NNGRAPH_DEVICE` (`cpu` by default; `nox -s tests_gpu`
    sets `cuda`). Raises if CUDA is asked for but not available, so a GPU run never silently
    tests the CPU."""
    import torch

    device = os.environ.get("NNGRAPH_DEVICE", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"NNGRAPH_DEVICE={device} but torch.cuda.is_available() is False")
    return device
