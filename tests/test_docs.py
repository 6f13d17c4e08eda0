"""The documentation site: the strict, offline mkdocs build passes, the API pages cover the public API, and the
built pages render in headless Chromium (math typeset by the vendored KaTeX, tables and code that fit or scroll,
figures with captions)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import robustfast

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "docs" / "api"
STUB = re.compile(r"^:::\s+(\S+)\s*$")
# a script, image or stylesheet fetched from another host
REMOTE = re.compile(r"<(?:script|img)[^>]+src=\"https?://|<link[^>]+rel=\"stylesheet\"[^>]+href=\"https?://")


def _stubs() -> list[tuple[str, list[str]]]:
    """Every ``::: identifier`` stub of the API pages, with its indented option lines."""
    stubs: list[tuple[str, list[str]]] = []
    for page in sorted(API_DIR.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = STUB.match(line)
            if m:
                opts = []
                for nxt in lines[i + 1 :]:
                    if not nxt.startswith("    "):
                        break
                    opts.append(nxt.strip())
                stubs.append((m.group(1), opts))
    return stubs


def _documented_names() -> set[str]:
    """Names rendered by the stubs: each stub's own name, plus a module's ``__all__`` unless members are limited."""
    names: set[str] = set()
    for ident, opts in _stubs():
        names.add(ident.rsplit(".", 1)[-1])
        try:
            module = importlib.import_module(ident)
        except ImportError:
            continue
        members = [o for o in opts if o.startswith("members:")]
        if not members:
            names.update(getattr(module, "__all__", []))
        elif members[0] != "members: false":
            names.update(re.findall(r"\w+", members[0].split(":", 1)[1]))
    return names


def test_every_public_name_has_an_api_page() -> None:
    public = [n for n in robustfast.__all__ if not n.startswith("_")]
    missing = sorted(set(public) - _documented_names())
    assert not missing, f"add a '::: robustfast....' stub under docs/api/ for: {missing}"


def test_api_stubs_point_at_existing_objects() -> None:
    for ident, _ in _stubs():
        module_name, _, attr = ident.rpartition(".")
        try:
            importlib.import_module(ident)
            continue
        except ImportError:
            pass
        module = importlib.import_module(module_name)
        assert hasattr(module, attr), f"docs/api stub '::: {ident}' names nothing"


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``mkdocs build --strict`` into a temporary folder, once for the module: (the process, the site folder)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, site


def test_strict_offline_build(built_site: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    # offline: no remote inventories, no web fonts, no CDN scripts
    assert "objects.inv" not in config and re.search(r"^\s*font:\s*false", config, re.M)
    assert not re.search(r"^\s*-\s*https?://", config, re.M), "no remote extra_javascript/extra_css"
    proc, site = built_site
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    assert (site / "index.html").is_file() and (site / "api" / "attacks" / "index.html").is_file()
    assert not list(site.rglob("*.py")), "build helpers under docs/ must be excluded (exclude_docs)"
    # the generated pages load nothing from other hosts (canonical links to site_url are fine)
    for page in site.rglob("*.html"):
        remote = REMOTE.findall(page.read_text(encoding="utf-8"))
        assert not remote, f"{page.relative_to(site)} loads remote resources: {remote[:3]}"


def test_katex_is_vendored_with_its_license(built_site: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    vendor = ROOT / "docs" / "vendor" / "katex"
    assert "MIT License" in (vendor / "LICENSE").read_text(encoding="utf-8")
    assert re.fullmatch(r"\d+\.\d+\.\d+\n?", (vendor / "VERSION").read_text(encoding="utf-8"))
    css = (vendor / "katex.min.css").read_text(encoding="utf-8")
    fonts = set(re.findall(r"url\((fonts/[\w-]+\.woff2)\)", css))
    assert len(fonts) >= 19 and all((vendor / f).is_file() for f in fonts), "every woff2 the stylesheet names"
    assert "cdn" not in css.lower() and "http" not in css
    proc, site = built_site
    assert proc.returncode == 0, proc.stderr[-4000:]
    page = (site / "methods" / "gradalign" / "index.html").read_text(encoding="utf-8")
    for asset in ("vendor/katex/katex.min.css", "vendor/katex/katex.min.js", "javascripts/katex-init.js"):
        assert f'"../../{asset}"' in page, asset
        assert (site / asset).is_file(), asset
    assert (site / "vendor" / "katex" / "LICENSE").is_file()  # the notice ships with the site


# ---- rendering in headless Chromium -----------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
# pages with math, wide tables, long code lines and figures
RENDER_PAGES = [
    "index.html",
    "getting-started/index.html",
    "concepts/step-context/index.html",
    "concepts/catastrophic-overfitting/index.html",
    "methods/index.html",
    *(f"methods/{m}/index.html" for m in ("fgsm", "rs", "nfgsm", "zerograd", "multigrad", "pgd", "seat")),
    *(f"methods/{m}/index.html" for m in ("gradalign", "advlc", "cure", "gradnorm")),
    "benchmarks/index.html",
    "api/evaluation/index.html",
    "api/attacks/index.html",
    "api/models/index.html",
]
# Loads each page in an iframe of the given width, waits for scripts and fonts, and writes what it measured as
# JSON into <pre id="out"> for --dump-dom.
HARNESS = """<!doctype html><meta charset="utf-8"><title>docs render check</title>
<iframe id="f" style="border:0;height:900px"></iframe><pre id="out"></pre>
<script>
const PAGES = __PAGES__, WIDTHS = __WIDTHS__, BASE = __BASE__;
const frame = document.getElementById("f"), results = [];
const RAW_TEX = /\\\\[()\\[\\]]|\\$\\$/;
function inspect(d) {
  const win = d.defaultView, math = [...d.querySelectorAll(".arithmatex")];
  const raw = [], walker = d.createTreeWalker(d.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const n = walker.currentNode;
    if (n.parentElement.closest("script, style, code, pre, .katex-mathml, math")) continue;
    if (RAW_TEX.test(n.textContent)) raw.push(n.textContent.trim().slice(0, 80));
  }
  const tables = [...d.querySelectorAll(".md-content table")].map((t) => {
    const wrap = t.closest(".md-typeset__scrollwrap");
    return {cols: t.rows.length ? t.rows[0].cells.length : 0, width: t.offsetWidth,
            room: wrap ? wrap.clientWidth : 0, fits: !!wrap && wrap.scrollWidth <= wrap.clientWidth + 1,
            scrolls: !!wrap && ["auto", "scroll"].includes(win.getComputedStyle(wrap).overflowX)};
  });
  return {
    math: math.length,
    unrendered: math.filter((e) => e.dataset.katex !== "done" || !e.querySelector(".katex")).length,
    katex_errors: d.querySelectorAll(".katex-error").length,
    raw_tex: raw,
    katex_fonts: [...d.fonts].filter((f) => f.family.includes("KaTeX") && f.status === "loaded").length,
    tables: tables,
    page_overflow: d.documentElement.scrollWidth > win.innerWidth + 1,
    nested_quotes: d.querySelectorAll(".md-content blockquote blockquote").length,
    code_overflow: [...d.querySelectorAll(".md-content pre > code")].filter(
      (c) => c.scrollWidth > c.clientWidth + 1).length,
    images: [...d.querySelectorAll(".md-content img")].map((img) => ({
      loaded: img.complete && img.naturalWidth > 0,
      caption: !!(img.closest("figure") && img.closest("figure").querySelector("figcaption"))})),
  };
}
function step(i) {
  if (i >= PAGES.length * WIDTHS.length) {
    document.getElementById("out").textContent = JSON.stringify(results);
    return;
  }
  const page = PAGES[i % PAGES.length], width = WIDTHS[Math.floor(i / PAGES.length)];
  frame.style.width = width + "px";
  frame.onload = () => setTimeout(() => frame.contentDocument.fonts.ready.then(() => {
    let r;
    try { r = inspect(frame.contentDocument); } catch (e) { r = {error: String(e)}; }
    results.push(Object.assign({page: page, width: width}, r));
    step(i + 1);
  }), 300);
  frame.src = BASE + page;
}
step(0);
</script>
"""


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name) if name else None
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the render check needs it")


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("headless Chromium did not finish within 300 s on this machine")
    if proc.returncode != 0:
        pytest.skip(f"headless Chromium cannot run here (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return proc


def test_pages_render_in_headless_chromium(
    built_site: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    proc, site = built_site
    assert proc.returncode == 0, proc.stderr[-4000:]
    exe = _chromium()
    widths = [1280, 420]  # desktop with both sidebars; a phone (tables scroll in their own box)
    harness = HARNESS.replace("__PAGES__", json.dumps(RENDER_PAGES)).replace("__WIDTHS__", json.dumps(widths))
    harness = harness.replace("__BASE__", json.dumps(site.as_uri() + "/"))
    (tmp_path / "harness.html").write_text(harness, encoding="utf-8")
    budget = str(4000 * len(RENDER_PAGES) * len(widths))
    out = _run_chromium(
        exe,
        tmp_path,
        "--allow-file-access-from-files",
        "--window-size=1400,1000",
        f"--virtual-time-budget={budget}",
        "--dump-dom",
        (tmp_path / "harness.html").as_uri(),
    ).stdout
    m = re.search(r'<pre id="out">(.*?)</pre>', out, re.S)
    assert m and m.group(1).strip(), "the harness produced no result: " + out[-2000:]
    results = json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert len(results) == len(RENDER_PAGES) * len(widths)
    for r in results:
        where = f"{r['page']} at {r['width']}px"
        assert "error" not in r, f"{where}: {r.get('error')}"
        # math: every arithmatex node typeset by KaTeX, no parse errors, no TeX source left in the text
        assert r["unrendered"] == 0 and r["katex_errors"] == 0, where
        assert not r["raw_tex"], f"{where}: raw TeX visible: {r['raw_tex'][:3]}"
        if r["math"]:
            assert r["katex_fonts"] > 0, f"{where}: the vendored KaTeX fonts did not load"
        # nothing widens the page; code wraps; tables fit or scroll inside their own box
        assert not r["page_overflow"], f"{where}: the page scrolls sideways"
        assert r["nested_quotes"] == 0, f"{where}: '>>>' doctest lines rendered as nested block quotes"
        assert r["code_overflow"] == 0, f"{where}: {r['code_overflow']} code blocks cut off"
        for t in r["tables"]:
            assert t["fits"] or t["scrolls"], f"{where}: a {t['cols']}-column table is cut off"
        for img in r["images"]:
            assert img["loaded"] and img["caption"], f"{where}: figure without image or caption: {img}"
    by_page = {(r["page"], r["width"]): r for r in results}
    gradalign = by_page[("methods/gradalign/index.html", 1280)]
    assert gradalign["math"] >= 20
    assert all(t["fits"] for t in gradalign["tables"]), gradalign["tables"]  # incl. the 17-column λ table
    assert by_page[("benchmarks/index.html", 1280)]["images"], "the benchmark figures are on the page"


def test_method_page_screenshot(built_site: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path) -> None:
    """A screenshot of the GradAlign page (set ROBUSTFAST_DOCS_SCREENSHOTS=<dir> to keep it for review)."""
    proc, site = built_site
    assert proc.returncode == 0, proc.stderr[-4000:]
    exe = _chromium()
    shot = Path(os.environ.get("ROBUSTFAST_DOCS_SCREENSHOTS") or tmp_path) / "docs-gradalign.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page = (site / "methods" / "gradalign" / "index.html").as_uri()
    _run_chromium(exe, tmp_path, "--window-size=1280,1600", "--virtual-time-budget=5000", f"--screenshot={shot}", page)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600) and len(data) > 50_000  # a real page, not a blank frame


def test_docstring_rst_is_rewritten_for_mkdocstrings() -> None:
    pytest.importorskip("griffe")
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from _griffe_rst import rst_to_markdown
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = "See :class:`~robustfast.models.Normalize` and :func:`robustfast.ops.clip_delta`.\n\n"
    text += ".. math:: a = b,\\\n   c = d\n\nwith :math:`Q_q` after."
    out = rst_to_markdown(text)
    assert "`Normalize`" in out and "`robustfast.ops.clip_delta`" in out and ":class:" not in out
    assert "$$\na = b,\\\nc = d\n$$" in out and "\\(Q_q\\)" in out and ".. math::" not in out
    # bare doctest lines (an "Example:" admonition) become a fenced block; fenced ones are left alone
    doc = "Build one.\n\nExample:\n    >>> net = create('x')\n    >>> net.variant\n    'x'\n\nMore text.\n"
    doc += "```python\n>>> fenced()\n```"
    out = rst_to_markdown(doc)
    assert "Example:\n    ```pycon\n    >>> net = create('x')\n    >>> net.variant\n    'x'\n    ```\n\nMore" in out
    assert out.endswith("```python\n>>> fenced()\n```")
