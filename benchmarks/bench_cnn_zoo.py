"""CNN zoo builder: the batched trainer next to a plain Python loop over the same networks.

Usage: ``python benchmarks/bench_cnn_zoo.py [--networks 100] [--plain 6] [--steps 20]
[--threads 2] [--dataset fashion-mnist]``

Both train small CNNs of the default recipe (hyper-parameters drawn as `build_cnn_zoo` draws
them: activation, initialiser, Adam / RMSProp / SGD, learning rate, L2, dropout, data fraction)
on the same batches of the same Fashion-MNIST pool: the batched trainer
(`nngraph_datasets.train_cnns`: one grouped-convolution chain per activation, optimiser updates
vectorised over the networks) on `--networks` networks at once, the plain loop (one
`small_cnn` + `torch.optim` optimiser per network, `nn.Dropout`) on the first `--plain` of
them. Reported: network-steps/s and network-epochs/s (an epoch of the default recipe is 50
steps of 32 images), the speed-up, with the CPU and its fp32 / bf16 GEMM rates measured in the
same run. Training only (the zoo builder also evaluates every checkpoint).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _machine import machine_report, print_machine

import nngraph_datasets as nds
from nngraph_datasets.cnn_zoo import (
    INITIALIZERS,
    _load_data,
    _network_streams,
    _plain_train,
    _sample_hparams,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", type=int, default=100, help="networks trained at once")
    parser.add_argument("--plain", type=int, default=6, help="networks of the plain loop")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    print_machine(machine_report())
    recipe = nds.CnnRecipe.named("default")
    pool_x, pool_y, _, _, _ = _load_data(a.dataset, recipe, a.seed, None)
    spe = recipe.steps_per_epoch(len(pool_x))
    act = _sample_hparams(recipe, a.seed, range(a.networks))["activation"]
    nets = [int(i) for i in np.argsort(act, kind="stable")]  # relu first, as the builder does
    hp = _sample_hparams(recipe, a.seed, nets)
    batches, _ = _network_streams(recipe, a.seed, nets, hp["train_fraction"], len(pool_x), a.steps)
    init = [
        nds.init_cnn_params(
            INITIALIZERS[int(hp["initializer"][j])],
            float(hp["init_std"][j]),
            torch.Generator().manual_seed(i),
        )
        for j, i in enumerate(nets)
    ]
    print(
        f"{a.dataset}: pool {len(pool_x)} images, batch {recipe.batch_size}, {a.steps} steps; "
        f"{int((hp['activation'] == 0).sum())} relu / {int((hp['activation'] == 1).sum())} tanh, "
        f"optimisers {np.bincount(hp['optimizer'], minlength=3).tolist()} (adam, rmsprop, sgd)"
    )

    # warm-up (one step each), then the timed runs
    nds.train_cnns(init, hp, pool_x, pool_y, batches[:1], checkpoints=(0, 1), steps_per_epoch=1)
    t0 = time.perf_counter()
    nds.train_cnns(init, hp, pool_x, pool_y, batches, checkpoints=(0, 1), steps_per_epoch=a.steps)
    batched = a.networks * a.steps / (time.perf_counter() - t0)

    # the plain loop over a spread of the same networks (both activations)
    pick = np.linspace(0, a.networks - 1, a.plain).round().astype(int)
    sub = {k: v[pick] for k, v in hp.items()}
    _plain_train([init[pick[0]]], {k: v[:1] for k, v in sub.items()}, pool_x, pool_y,
                 batches[:1, :, pick[:1]], steps=1)  # fmt: skip
    t0 = time.perf_counter()
    _plain_train([init[j] for j in pick], sub, pool_x, pool_y, batches[:, :, pick], steps=a.steps)
    plain = a.plain * a.steps / (time.perf_counter() - t0)

    print(f"{'':>26} {'network-steps/s':>16} {'network-epochs/s':>17}")
    print(
        f"{'batched (' + str(a.networks) + ' at once)':>26} {batched:>16,.1f} {batched / spe:>17,.2f}"
    )
    print(f"{'plain loop (torch.optim)':>26} {plain:>16,.1f} {plain / spe:>17,.2f}")
    print(f"speed-up: {batched / plain:.1f}x")


if __name__ == "__main__":
    main()
