"""Do a classifier's predictions survive the symmetries of SIRENs? Agreement on transformed copies.

    python benchmarks/symmetry_agreement.py runs/mnist5k_ngnn/checkpoints/last.ckpt
    python benchmarks/symmetry_agreement.py RUN/checkpoints/best-*.ckpt --copies 5 --split test

Every INR of the split is replaced by `--copies` random function-preserving copies of itself
(`nngraph_core.random_symmetry`: sign flips and phase shifts of every sine neuron, and a
random permutation of each hidden layer, drawn per INR from a seeded generator); the script
reports, per kind of transform and for all of them together, the fraction of copies whose
predicted label equals the prediction on the original, the largest change of a logit, and
the accuracy on the copies. A model that reads canonical networks (`--model.canonicalize true`)
must agree on 100%; a permutation-invariant graph model without it agrees on every permuted
copy but not necessarily on sign / phase flips.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import nngraph_core as ngc
import nngraph_datasets as nds
from nngraph_apps import InrClassificationTask

KINDS = {
    "permutations": {"permute": True, "signs": False, "phases": False},
    "sign flips": {"permute": False, "signs": True, "phases": False},
    "phase shifts": {"permute": False, "signs": False, "phases": True},
    "all three": {"permute": True, "signs": True, "phases": True},
}


def logits_of(task: InrClassificationTask, params: torch.Tensor, batch: int = 250) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([task(params[i : i + batch]) for i in range(0, len(params), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the run's zoo)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    task = InrClassificationTask.load_from_checkpoint(
        args.checkpoint, map_location="cpu", weights_only=True
    ).eval()
    zoo_dir = args.zoo
    if zoo_dir is None:
        results = args.checkpoint.parent.parent / "results.json"
        zoo_dir = Path(json.loads(results.read_text())["zoo_dir"])
    zoo = nds.Zoo(zoo_dir)
    start, stop = zoo.splits[args.split]
    params = zoo.column("params", start, stop).float()
    labels = zoo.column("labels", start, stop).long()
    spec = task.template.spec
    base = logits_of(task, params)
    pred = base.argmax(1)
    out: dict[str, object] = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "inrs": len(params),
        "copies": args.copies,
        "canonicalize": bool(task.hparams.get("canonicalize")),
        "probe_branch": bool(task.hparams.get("probe_branch")),
        "graph_readout_on": bool(getattr(task, "graph_on", True)),
        "accuracy": float((pred == labels).float().mean()),
        "kinds": {},
    }
    print(f"{args.checkpoint}: {len(params)} {args.split} INRs, accuracy {out['accuracy']:.4f}")
    print(f"{'transform':>14} {'agreement':>10} {'max |dlogit|':>13} {'accuracy':>9}")
    for i, (name, kw) in enumerate(KINDS.items()):
        gen = torch.Generator().manual_seed(args.seed * 1000 + i)
        agree = total = 0
        worst = 0.0
        correct = 0
        for _ in range(args.copies):
            copy = ngc.random_symmetry(spec, params, gen, **kw)
            logits = logits_of(task, copy)
            agree += int((logits.argmax(1) == pred).sum())
            correct += int((logits.argmax(1) == labels).sum())
            total += len(params)
            worst = max(worst, float((logits - base).abs().max()))
        row = {"agreement": agree / total, "max_logit_change": worst, "accuracy": correct / total}
        out["kinds"][name] = row  # type: ignore[index]
        print(f"{name:>14} {row['agreement']:>10.4f} {worst:>13.2e} {row['accuracy']:>9.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
