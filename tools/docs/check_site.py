"""Check a built docs site: it renders as written, offline.

    python tools/docs/check_site.py site [--shots site/_checks] [--pages concepts/ layers/]

Fails (exit 1) when

- a page of the built site holds a Sphinx role (`:func:` ...), an RST directive (`.. math::`), an
  RST literal-block marker (a paragraph ending in `::`), a doctest example (`>>>`) outside a code
  block, or a `<script src=...>` that points off the site;
- a docstring under packages/*/src or apps/*/src holds a Sphinx role or an RST directive (the
  ones not on an API page yet as well);
- a table row of docs/ has text after its closing `|` (a paragraph glued to the table);
- in headless Chromium, with the network off, a checked page does not typeset every formula
  exactly once (`mjx-container` elements == `arithmatex` elements), shows a TeX error or an
  undefined macro, or asks the local server for a file it does not have.

The browser part needs Debian's `chromium` (`nox -s docs` installs it where apt-get works); without
it that part is skipped with a message. A screenshot of each checked page goes to `--shots`.
Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = (
    "func|class|meth|data|attr|mod|exc|obj|const|math|ref|any|doc|term|numref|envvar|option|"
    "program|keyword|cite"
)
SPHINX_ROLE = re.compile(rf":(?:py:)?(?:{ROLES}):(?=`|<code)")
RST_DIRECTIVE = re.compile(r"(?m)(?:^|>|\s)\.\. [A-Za-z][\w:-]*::")
RST_LITERAL = re.compile(r"::\s*</p>")
# `>>>` outside a code block: as text, or (Markdown reads `>` as a quote) as nested block quotes
DOCTEST = re.compile(r"(?:^|>|\s)&gt;&gt;&gt; |<blockquote>\s*<blockquote>")
EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']?(?:[a-z][a-z0-9+.-]*:)?//", re.I)
UNDEFINED_MACRO = re.compile(r'<mjx-mtext[^>]*color: red[^>]*><mjx-c class="mjx-c5C"')
PRE = re.compile(r"<pre\b.*?</pre>|<code\b.*?</code>", re.S)
NETWORK_OFF = (
    # Host names do not resolve (except the local server's address) and any request that is not
    # to the loopback interface goes to a closed local port: the page sees no network.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,2400",
    # Headless Chromium runs the page's timers on virtual time and dumps the DOM once the page
    # is idle (MathJax done) or this budget is spent.
    "--virtual-time-budget=30000",
)


def _where(text: str, match: re.Match[str], page: str) -> str:
    line = text.count("\n", 0, match.start()) + 1
    snippet = re.sub(r"<[^>]+>|\s+", " ", text[max(0, match.start() - 60) : match.end() + 60])
    return f"{page}:{line}: ...{snippet.strip()}..."


def check_html(site: Path) -> dict[str, list[str]]:
    """Sphinx/RST leftovers and off-site scripts in every page of the built site."""
    found: dict[str, list[str]] = {
        "Sphinx roles": [],
        "RST directives": [],
        "RST literal-block markers": [],
        "doctest examples outside code": [],
        "external script URLs": [],
    }
    pages = sorted(p for p in site.rglob("*.html") if "_checks" not in p.parts)
    for page in pages:
        rel = page.relative_to(site).as_posix()
        html = page.read_text(encoding="utf-8")
        prose = PRE.sub(lambda m: "\n" * m.group(0).count("\n"), html)  # keep line numbers
        for key, pattern, text in (
            ("Sphinx roles", SPHINX_ROLE, html),
            ("RST directives", RST_DIRECTIVE, prose),
            ("RST literal-block markers", RST_LITERAL, prose),
            ("doctest examples outside code", DOCTEST, prose),
            ("external script URLs", EXTERNAL_SCRIPT, html),
        ):
            found[key] += [_where(text, m, rel) for m in pattern.finditer(text)]
    found["pages"] = [str(len(pages))]
    return found


def check_docstrings(roots: list[Path]) -> list[str]:
    """Sphinx roles and RST directives in the docstrings (and other bare strings) of the sources."""
    bad: list[str] = []
    for root in roots:
        for py in sorted(root.rglob("*.py")):
            tree = ast.parse(py.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not (
                    isinstance(node, ast.Expr)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                ):
                    continue
                doc = node.value.value
                for pattern in (re.compile(rf":(?:py:)?(?:{ROLES}):`"), RST_DIRECTIVE):
                    for m in pattern.finditer(doc):
                        line = node.lineno + doc.count("\n", 0, m.start())
                        bad.append(f"{py.relative_to(ROOT)}:{line}: {m.group(0).strip()}")
    return bad


def check_tables(docs: Path) -> list[str]:
    """Table rows with text after their closing pipe (a paragraph glued to the table)."""
    bad = []
    for md in sorted(docs.rglob("*.md")):
        lines = md.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.lstrip().startswith("|"):
                continue
            near = [lines[j] for j in (i - 1, i + 1) if 0 <= j < len(lines)]
            if any(n.lstrip().startswith("|") for n in near) and not line.rstrip().endswith("|"):
                bad.append(f"{md.relative_to(docs.parent)}:{i + 1}: {line[:100]}")
    return bad


def find_chromium() -> str | None:
    names = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


class _Server(http.server.ThreadingHTTPServer):
    requests: list[tuple[str, int]]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        assert isinstance(self.server, _Server)
        self.server.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:
        pass


def check_browser(site: Path, pages: list[str], shots: Path, chromium: str) -> list[str]:
    """Typeset math in headless Chromium, offline; screenshots into `shots`. Returns failures."""
    shots.mkdir(parents=True, exist_ok=True)
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    failures = []
    try:
        for page in pages:
            name = page.strip("/").replace("/", "-") or "index"
            static = (site / page / "index.html").read_text(encoding="utf-8")
            expected = len(re.findall(r'class="arithmatex"', static))
            shot = shots / f"{name}.png"
            shot.unlink(missing_ok=True)
            command = [
                chromium,
                *CHROMIUM_FLAGS,
                *NETWORK_OFF,
                f"--screenshot={shot}",
                "--dump-dom",
            ]
            with tempfile.TemporaryDirectory() as profile:
                try:
                    run = subprocess.run(
                        [*command, f"--user-data-dir={profile}", f"http://127.0.0.1:{port}/{page}"],
                        capture_output=True,
                        text=True,
                        timeout=300,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    failures.append(f"{page}: chromium did not finish in 300 s")
                    continue
            dom = run.stdout
            typeset = len(re.findall(r"<mjx-container\b", dom))
            # TeX errors, and macros MathJax does not know (drawn as their name in red)
            errors = len(re.findall(r"<mjx-merror\b", dom)) + len(UNDEFINED_MACRO.findall(dom))
            print(
                f"  {page}: {typeset} rendered formulas (mjx-container) for {expected} in the "
                f"page, {errors} TeX errors; screenshot {shot.relative_to(site.parent)}"
                f"{'' if shot.exists() else ' MISSING'}"
            )
            if run.returncode != 0 or not dom:
                failures.append(f"{page}: chromium exited {run.returncode}: {run.stderr[-500:]}")
            elif typeset == 0 or typeset != expected or errors:
                failures.append(
                    f"{page}: {typeset} formulas typeset, {expected} expected, {errors} TeX errors"
                )
            if not shot.exists():
                failures.append(f"{page}: no screenshot written")
    finally:
        server.shutdown()
        server.server_close()
    missing = sorted({path for path, code in server.requests if code >= 400})
    failures += [f"the pages asked the local server for a missing file: {p}" for p in missing]
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build --site-dir)")
    parser.add_argument("--pages", nargs="+", default=["concepts/", "layers/", "api/layers/"])
    parser.add_argument("--shots", type=Path, help="screenshot folder (default: SITE/_checks)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="the Markdown sources")
    parser.add_argument("--no-browser", action="store_true", help="skip the headless browser")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    failures: list[str] = []

    html = check_html(site)
    pages = html.pop("pages")[0]
    print(f"docs check: {pages} pages of {args.site}")
    for key, hits in html.items():
        print(f"  {len(hits)} {key}")
        failures += [f"{key}: {h}" for h in hits]
    sources = sorted(ROOT.glob("packages/*/src")) + sorted(ROOT.glob("apps/*/src"))
    docstrings = check_docstrings(sources)
    print(f"  {len(docstrings)} Sphinx roles / RST directives in the docstrings of the sources")
    failures += [f"docstring: {d}" for d in docstrings]
    tables = check_tables(args.docs)
    print(f"  {len(tables)} table rows with text after the closing pipe")
    failures += [f"table: {t}" for t in tables]
    vendored = site / "assets" / "vendor" / "mathjax"
    if not any(vendored.glob("tex-*.js")):
        failures.append(f"no vendored MathJax in {vendored.relative_to(site.parent)}")

    chromium = None if args.no_browser else find_chromium()
    if chromium is None:
        why = (
            "--no-browser"
            if args.no_browser
            else "no chromium on PATH; install Debian's chromium (apt-get install -y chromium) "
            "to check that the formulas render offline"
        )
        print(f"docs check: SKIPPED the headless-browser check ({why})")
    else:
        version = subprocess.run([chromium, "--version"], capture_output=True, text=True)
        print(f"docs check: {version.stdout.strip()}, headless, network off:")
        failures += check_browser(site, args.pages, (args.shots or site / "_checks"), chromium)

    if failures:
        print(f"docs check FAILED ({len(failures)}):", *failures[:40], sep="\n  ")
        return 1
    print("docs check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
