"""Every workflow of the nngraph monorepo: ``nox -l`` lists the sessions.

``nox`` alone runs the quick ones (lint, typecheck, tests, props); ``nox -s ci`` runs everything
CI runs, in order. Packages are discovered from ``packages/*/pyproject.toml`` and
``apps/*/pyproject.toml``, so a new package is tested, documented and built without editing this
file. Every install goes through ``-c constraints.txt`` (torch is pinned there).
"""

from __future__ import annotations

import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests", "props"]

STARTED = time.time()  # nox reads this file first: the start of every job's wall-time budget
ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
REPORTS = ROOT / ".nox" / "_reports"  # junit xml of the pytest runs, summed up by `ci`
TEST_ENV = {"MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
DOCS_ENV = {"NO_MKDOCS_2_WARNING": "1"}


def _packages() -> list[Path]:
    """Every package folder of the workspace (libraries first, then apps)."""
    found = [p.parent for p in sorted(ROOT.glob("packages/*/pyproject.toml"))]
    return found + [p.parent for p in sorted(ROOT.glob("apps/*/pyproject.toml"))]


def _group(name: str) -> tuple[str, ...]:
    return nox.project.dependency_groups(PYPROJECT, name)


def _install_packages(session: nox.Session, *, extras: str = "test", deps: bool = True) -> None:
    """Install every workspace package editable, in ONE pip call so that pins between sibling
    packages (``nngraph-testing==0.1.0``) resolve to the local checkouts."""
    args: list[str] = []
    for pkg in _packages():
        meta = nox.project.load_toml(pkg / "pyproject.toml")
        optional = meta.get("project", {}).get("optional-dependencies", {})
        args += ["-e", f"{pkg}[{extras}]" if extras in optional else str(pkg)]
        # A package may keep its test requirements in a PEP 735 group instead of an extra.
        if deps and extras in meta.get("dependency-groups", {}):
            args += nox.project.dependency_groups(meta, extras)
    if deps and extras == "test":
        args += _group("test")  # pytest + hypothesis even if a package forgets them
    session.install(*CONSTRAINTS, *args, *([] if deps else ["--no-deps"]))


def _count(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) of one junit xml report."""
    passed = failed = skipped = 0
    for suite in ET.parse(report).getroot().iter("testsuite"):
        total, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        passed, failed, skipped = passed + total - skip - bad, failed + bad, skipped + skip
    return passed, failed, skipped


def _pytest(
    session: nox.Session, target: Path, report: str, *args: str, env: dict[str, str]
) -> None:
    """Run pytest on one folder. Exit code 5 (nothing collected) is reported, not fatal."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    xml = REPORTS / f"{report}.xml"
    xml.unlink(missing_ok=True)
    session.run(
        "pytest",
        str(target.relative_to(ROOT)),
        f"--junitxml={xml}",
        "-n",
        "2",  # two workers (tests set one torch thread each): the machines have two cores
        *args,
        *session.posargs,
        env={**TEST_ENV, **env},
        success_codes=[0, 5],
    )
    if not xml.exists() or sum(_count(xml)) == 0:
        session.warn(f"{target.relative_to(ROOT)}: no tests were collected")


def _run_suites(session: nox.Session, prefix: str, env: dict[str, str]) -> None:
    for pkg in _packages():
        if (pkg / "tests").is_dir():
            _pytest(session, pkg / "tests", f"{prefix}-{pkg.name}", env=env)
        else:
            session.warn(f"{pkg.name} has no tests/ folder")
    # The examples of the README files and the docs pages run as written.
    _pytest(session, ROOT / "tests" / "docs", f"{prefix}-docs-examples", env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the whole repository."""
    session.install(*CONSTRAINTS, *_group("lint"))
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", "--diff", ".")


@nox.session(reuse_venv=True)
def typecheck(session: nox.Session) -> None:
    """mypy (strict, config in the root pyproject.toml) on nngraph-core."""
    session.install(*CONSTRAINTS, *_group("typecheck"), "-e", "packages/nngraph-core")
    session.run("mypy", *(session.posargs or ["packages/nngraph-core/src"]))


@nox.session(reuse_venv=True)
def tests(session: nox.Session) -> None:
    """Every package's tests/ folder, each in its own pytest run (CPU)."""
    _install_packages(session)
    _run_suites(session, "tests", env={"NNGRAPH_DEVICE": "cpu"})


@nox.session(reuse_venv=True)
def props(session: nox.Session) -> None:
    """The cross-package property suite tests/properties/ under the hypothesis `ci` profile."""
    if not (ROOT / "tests" / "properties").is_dir():
        session.skip("tests/properties/ does not exist yet")
    _install_packages(session)
    _pytest(
        session,
        ROOT / "tests" / "properties",
        "props",
        "--hypothesis-profile=ci",
        env={"NNGRAPH_DEVICE": "cpu"},
    )


@nox.session(default=False, reuse_venv=True)
def tests_gpu(session: nox.Session) -> None:
    """The package suites and the property suite with NNGRAPH_DEVICE=cuda; skipped without CUDA."""
    session.install(*CONSTRAINTS, "torch")
    probe = "import torch; print(torch.cuda.is_available())"
    if session.run("python", "-c", probe, silent=True).strip() != "True":
        session.skip(
            "torch.cuda.is_available() is False: no CUDA device (or a CPU-only torch build) "
            "on this machine, so the GPU suites were NOT run."
        )
    _install_packages(session)
    env = {"NNGRAPH_DEVICE": "cuda"}
    _run_suites(session, "gpu", env=env)
    if (ROOT / "tests" / "properties").is_dir():
        _pytest(
            session, ROOT / "tests" / "properties", "gpu-props", "--hypothesis-profile=ci", env=env
        )


def _apt_install(session: nox.Session, binary: str, *packages: str) -> None:
    """Install Debian `packages` unless `binary` is on PATH; only warn where apt-get cannot."""
    if shutil.which(binary):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        session.warn(f"{binary} not found and apt-get is not usable here (install {packages})")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", *packages, external=True, env=env)
    except CommandFailed:
        session.warn(f"apt-get install {' '.join(packages)} failed")


def _summaries(folder: Path) -> dict[str, dict[str, object]]:
    """Sum the per-process JSON lines that nngraph-testing's plugin writes for each reader."""
    import json

    out: dict[str, dict[str, object]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            s = out.setdefault(r["reader"], {"examples": 0, "results": 0, "typed_errors": {}})
            s["examples"] = int(s["examples"]) + r["examples"]  # type: ignore[call-overload]
            s["results"] = int(s["results"]) + r["results"]  # type: ignore[call-overload]
            errors: dict[str, int] = s["typed_errors"]  # type: ignore[assignment]
            for k, v in r["typed_errors"].items():
                errors[k] = errors.get(k, 0) + v
    return out


@nox.session(default=False, reuse_venv=True)
def fuzz(session: nox.Session) -> None:
    """Fuzz every reader of outside bytes with 2,000 examples each (Hypothesis profile `fuzz`:
    the `ci` profile, derandomized, with 2,000 examples) and run the malicious-file corpus;
    prints the figures of docs/reliability.md (examples, results, typed errors per reader).

    The same tests run in `tests` with 200 examples (`ci` profile). Reports:
    .nox/_reports/fuzz/.
    """
    _install_packages(session)
    out = REPORTS / "fuzz"
    shutil.rmtree(out, ignore_errors=True)
    env = {"NNGRAPH_DEVICE": "cpu", "NNGRAPH_FUZZ_REPORT": str(out), "NNGRAPH_FUZZ_RESUMES": "100"}
    for pkg in _packages():
        if (pkg / "tests").is_dir():
            _pytest(session, pkg / "tests", f"fuzz-{pkg.name}", "-k", "fuzz or malicious",
                    "--hypothesis-profile=fuzz", "--hypothesis-show-statistics", env=env)  # fmt: skip
    summary = _summaries(out)
    width = max(map(len, summary), default=10)
    for reader, s in sorted(summary.items()):
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s["typed_errors"].items()))  # type: ignore[attr-defined]
        print(
            f"{reader:<{width}}  {s['examples']:>6} examples  {s['results']:>5} results  {errors}"
        )
    print("untyped exceptions, hangs and writes outside the target folder fail the run: 0")


@nox.session(default=False, reuse_venv=True)
def kill(session: nox.Session) -> None:
    """SIGKILL an INR zoo build (`nngraph-datasets fit`) and a training run (`nngraph-train
    fit`) at 20 random moments each, rerun / resume each, and compare with an uninterrupted run
    (byte-identical zoo, bit-identical weights). CI runs 2 points of each in `tests`.
    `nox -s kill -- ...` passes pytest arguments; NNGRAPH_KILL_POINTS / NNGRAPH_KILL_SEED set
    the number of points and the seed of their moments. Reports: .nox/_reports/kill/.
    """
    import json

    _install_packages(session)
    out = REPORTS / "kill"
    shutil.rmtree(out, ignore_errors=True)
    env = {"NNGRAPH_DEVICE": "cpu", "NNGRAPH_KILL_REPORT": str(out), "NNGRAPH_KILL_POINTS": "20"}
    for pkg in _packages():
        if (pkg / "tests").is_dir():
            _pytest(session, pkg / "tests", f"kill-{pkg.name}", "-m", "kill", env=env)
    for path in sorted(out.glob("kill-*.json")):
        r = json.loads(path.read_text())
        print(f"{path.stem}: {r['identical']}/{r['points']} kill points ended identical")


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the mkdocs site strictly and check it (``nox -s docs -- serve`` serves it instead).

    The build vendors MathJax from npm (tools/docs/vendor_mathjax.py). The check
    (tools/docs/check_site.py) fails on Sphinx roles, RST directives or off-site scripts in the
    built pages, and loads the concepts and layers pages in headless Chromium with the network
    off: every formula must render; screenshots go to site/_checks/. Chromium is Debian's,
    installed here where apt-get works; elsewhere the browser part is skipped with a message.
    """
    session.install(*CONSTRAINTS, *_group("docs"))
    # mkdocstrings reads the sources statically (paths in mkdocs.yml); the packages are installed
    # without their heavy dependencies only so that their metadata is present.
    _install_packages(session, deps=False)
    if not (ROOT / "build" / "docs-vendor").is_dir():
        _apt_install(session, "npm", "npm")  # MathJax is taken from the npm registry once
    if session.posargs and session.posargs[0] == "serve":
        session.run("mkdocs", "serve", *session.posargs[1:], env=DOCS_ENV)
        return
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env=DOCS_ENV)
    _apt_install(session, "chromium", "chromium", "chromium-driver")
    session.run("python", str(ROOT / "tools" / "docs" / "check_site.py"), "site")


@nox.session(default=False)
def build(session: nox.Session) -> None:
    """sdist + wheel of every package into dist/."""
    session.install(*CONSTRAINTS, *_group("build"))
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    for pkg in _packages():
        session.run("python", "-m", "build", "--outdir", str(dist), str(pkg))
    session.log("built: " + ", ".join(sorted(p.name for p in dist.iterdir())))


@nox.session(default=False, reuse_venv=False)
def install_alone(session: nox.Session) -> None:
    """Install the nngraph-core wheel alone (+ torch) in a fresh venv and use it from outside.

    Runs .ci/install_alone_check.py from a temporary folder (the source tree is not importable):
    converts an MLP and a CNN, round-trips them, checks that no optional dependency came along.
    """
    tmp = Path(session.create_tmp()).resolve()
    wheelhouse = tmp / "wheelhouse"
    shutil.rmtree(wheelhouse, ignore_errors=True)
    session.run(
        "python", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheelhouse),
        str(ROOT / "packages" / "nngraph-core"),
    )  # fmt: skip
    (wheel,) = wheelhouse.glob("nngraph_core-*.whl")
    session.install(*CONSTRAINTS, str(wheel))
    session.run("python", "-m", "pip", "list")
    session.chdir(tmp)
    session.run("python", str(ROOT / ".ci" / "install_alone_check.py"), env={"PYTHONPATH": None})


@nox.session(
    venv_backend="none",
    default=False,
    requires=["lint", "typecheck", "tests", "props", "docs", "build", "install_alone"],
)
def ci(session: nox.Session) -> None:
    """Everything CI runs (the required sessions run first, in this order); sums up the tests."""
    reports = sorted(REPORTS.glob("tests-*.xml")) + sorted(REPORTS.glob("props.xml"))
    counts = [_count(r) for r in reports]
    passed, failed, skipped = (sum(c[i] for c in counts) for i in range(3))
    session.log("pytest runs: " + ", ".join(r.stem for r in reports))
    print(f"ci: {passed} passed, {failed} failed, {skipped} skipped")


# -------------------------------------------------------------------------------------------------
# Training apps (apps/nngraph-apps): `nngraph-train` runs. Arguments after `--` go to the CLI,
# e.g. `nox -s train_cls -- --trainer.max_epochs 3 --run_dir runs/try`.
TRAIN_ENV = {"MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}


def _budget(minutes: float) -> tuple[str, ...]:
    """CLI arguments of a wall-time budget for the whole job, counted from the start of nox."""
    return ("--time_budget", str(minutes), "--time_budget_start", f"{STARTED:.3f}")


def _train(session: nox.Session, command: str, config: str, *args: str) -> None:
    _install_packages(session, extras="apps")  # every package, editable, with its dependencies
    session.run(
        "nngraph-train", command, "--config", config, "--trainer.accelerator", "cpu",
        *args, *session.posargs, env=TRAIN_ENV,
    )  # fmt: skip


@nox.session(default=False, reuse_venv=True)
def train_cls(session: nox.Session) -> None:
    """The main job: NG-GNN with probe features on `mnist-5k` INRs, CPU-sized, in 15 minutes.

    The budget counts everything from the start of `nox`: creating the environment, fitting the
    5,000-INR zoo on first use (cached in ~/.cache/nngraph/zoos, $NNGRAPH_ZOOS), training (model
    selection on validation accuracy) and testing the best checkpoint; training gets whatever
    is left. Prints the results table and writes runs/mnist5k_ngnn/ (report.md, plots,
    results.json, checkpoints, CSV + TensorBoard logs). Another budget: `-- --time_budget 30`.
    """
    _train(session, "fit", "mnist5k_ngnn", *_budget(15))


@nox.session(default=False, reuse_venv=True)
def train_gen(session: nox.Session) -> None:
    """CNN generalisation prediction: NG-GNN with probe features predicts the test accuracy of the
    CNNs of the default Fashion-MNIST CNN zoo from their weights, CPU-sized, in 20 minutes counted
    like `train_cls` (`fmnist_cnn_gen_ngnn_probes`: above StatNN on the results page; the plain
    graph models tie with it).

    The budget counts everything from the start of `nox`: creating the environment, training the
    zoo's CNNs on first use (cached, `load_cnn_zoo`), training the model (model selection on
    validation Kendall tau) and testing the best checkpoint. Writes runs/fmnist_cnn_gen_ngnn_probes/:
    results.json (test tau, R2, MSE), report.md, scatter.png (predicted vs true accuracy),
    breakdown.md / breakdown.png (errors per activation, initialiser, optimiser, epoch, training
    fraction, learning rate) and predictions.csv. Another budget: `-- --time_budget 30`.
    """
    _train(session, "fit", "fmnist_cnn_gen_ngnn_probes", "--trainer.max_time", "null", *_budget(20))


@nox.session(default=False, reuse_venv=True)
def seeds(session: nox.Session) -> None:
    """Seeds 0, 1, 2 of one config and their mean ± std (runs/<config>-seed<k>/, then
    runs/<config>-seeds/aggregate.md): `nox -s seeds -- mnist5k_ngnn --trainer.max_time 00:00:06:00`.

    The first argument names the config (default mnist5k_ngnn); the others go to every run.
    Without a time limit among them, each run gets `--time_budget 15` from its own start.
    """
    args = list(session.posargs)
    config = args.pop(0) if args and not args[0].startswith("-") else "mnist5k_ngnn"
    if not any(a.startswith(("--trainer.max_time", "--time_budget")) for a in args):
        args += ["--time_budget", "15"]
    _install_packages(session, extras="apps")
    runs = []
    for seed in (0, 1, 2):
        run = ROOT / "runs" / f"{config}-seed{seed}"
        session.run(
            "nngraph-train", "fit", "--config", config, "--trainer.accelerator", "cpu",
            "--seed_everything", str(seed), "--run_dir", str(run), *args, env=TRAIN_ENV,
        )  # fmt: skip
        runs.append(str(run))
    session.run("nngraph-train", "aggregate", *runs, env=TRAIN_ENV)


@nox.session(default=False, reuse_venv=True)
def train_edit(session: nox.Session) -> None:
    """Editing (dilation) on `mnist-5k` INRs with NG-GNN, CPU-sized, in 15 minutes counted like
    `train_cls`; report with originals / inputs / predictions / targets in
    runs/mnist5k_dilate_ngnn/."""
    _train(session, "fit", "mnist5k_dilate_ngnn", *_budget(15))


@nox.session(default=False, reuse_venv=True)
def evaluate(session: nox.Session) -> None:
    """Test a trained run again and rewrite its report: the best checkpoint of
    runs/mnist5k_ngnn by default (`nox -s evaluate -- --config X --ckpt_path Y` for others)."""
    args: list[str] = []
    if not any(a.startswith("--ckpt_path") for a in session.posargs):
        best = sorted((ROOT / "runs" / "mnist5k_ngnn" / "checkpoints").glob("best-*.ckpt"))
        if not best:
            session.error(
                "no runs/mnist5k_ngnn/checkpoints/best-*.ckpt: run `nox -s train_cls` first"
            )
        args = ["--ckpt_path", str(best[-1])]
    config = "mnist5k_ngnn"
    if "--config" in session.posargs:
        config = session.posargs[session.posargs.index("--config") + 1]
    _train(session, "test", config, *args)
