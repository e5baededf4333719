"""mkdocs hook: the site ships its own MathJax, taken from the npm registry at build time.

The pinned release (`VERSION`, checked against `INTEGRITY`, the sha512 the registry publishes)
is fetched once with `npm pack` and unpacked into `build/docs-vendor/` (git-ignored); every
build, `mkdocs serve` included, then adds the files the pages need to the site under
`assets/vendor/mathjax/`. The pages load MathJax from there (`extra_javascript` in mkdocs.yml),
so formulas render without the internet and the built site links to no CDN.

Updating MathJax: set `VERSION`, put the new `dist.integrity` (`npm view mathjax@X dist.integrity`)
into `INTEGRITY`, and build.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

VERSION = "3.2.2"
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "docs-vendor" / f"mathjax-{VERSION}"
DEST = "assets/vendor/mathjax"
# What the pages use of the package's es5/ folder: the TeX -> CommonHTML component (TeX input only:
# with MathML input too, a second typeset pass, as on every page change, would typeset the hidden
# MathML copy of each formula again), the TeX extensions it autoloads (\boldsymbol, ...), the
# CommonHTML fonts, and the menu with its accessibility parts (speech rule engine included), so that
# nothing is fetched from elsewhere.
KEEP = (
    "tex-chtml.js",
    "input/tex/extensions",
    "output/chtml",
    "ui",
    "a11y",
    "sre",
)


def _fetch() -> None:
    """Unpack the pinned MathJax tarball into CACHE (once)."""
    if (CACHE / "tex-chtml.js").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "npm is needed once to vendor MathJax into the docs "
            "(Debian: `apt-get install -y npm`; `nox -s docs` installs it where apt-get works)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [npm, "pack", f"mathjax@{VERSION}", "--prefer-offline", "--silent"],
            cwd=tmp,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarball = Path(tmp) / f"mathjax-{VERSION}.tgz"
        algo, _, expected = INTEGRITY.partition("-")
        digest = base64.b64encode(hashlib.new(algo, tarball.read_bytes()).digest()).decode()
        if digest != expected:
            raise RuntimeError(f"{tarball.name}: {algo} {digest} is not the pinned {expected}")
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - older Pythons; the tarball's hash was checked above
                tar.extractall(tmp)
        package = Path(tmp) / "package"
        staging = CACHE.with_name(CACHE.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for name in KEEP:
            src = package / "es5" / name
            if src.is_dir():
                shutil.copytree(src, staging / name)
            else:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, staging / name)
        shutil.copy2(package / "LICENSE", staging / "LICENSE")
        shutil.copy2(package / "package.json", staging / "package.json")
        shutil.rmtree(CACHE, ignore_errors=True)
        staging.rename(CACHE)


def on_files(files: Any, config: Any) -> Any:
    """Add the vendored MathJax files to the site (mkdocs copies them like the docs' own)."""
    from mkdocs.structure.files import File

    _fetch()
    for path in sorted(p for p in CACHE.rglob("*") if p.is_file()):
        rel = path.relative_to(CACHE).as_posix()
        files.append(File.generated(config, f"{DEST}/{rel}", abs_src_path=str(path)))
    return files
