"""Regenerate the measured-quality block of every method page from the benchmark results (docs/methods/*.md).

Each page gets, between ``<!-- quality:begin -->`` and ``<!-- quality:end -->`` at the end of its "Our measurements"
section, the rows of the quality tables for its method(s) with Standard and PGD-10 as references, and each table's
command, machine and date. An older "Accuracy on small data" paragraph (a retired 3-epoch protocol) is replaced.

    python benchmarks/method_pages.py docs/benchmarks/quality_digits.json docs/benchmarks/quality_fmnist.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = {
    "fgsm": ["FGSM"], "rs": ["RS"], "nfgsm": ["N-FGSM"], "zerograd": ["ZeroGrad"], "multigrad": ["MultiGrad"],
    "pgd": ["PGD-10"], "seat": ["SEAT"], "gradalign": ["FGSM+GradAlign", "FGSM+GradAlignFD"],
    "advlc": ["FGSM-N+AdvLC"], "elle": ["FGSM+ELLE-A"], "llr": ["FGSM+LLR"], "trades": ["TRADES"], "mart": ["MART"],
    "awp": ["PGD-10+AWP"], "gat": ["GAT"], "nuat": ["NuAT"], "free_at": ["Free-AT (m=4)"], "fgsm_pgi": ["FGSM-PGI"],
    "fgsm_ckpt": ["FGSM-CKPT"], "fgsm_n": ["FGSM-N"],
}  # fmt: skip
REFERENCES = ("Standard", "PGD-10")
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def _fmt(v: list[float] | None, scale: float = 100.0, digits: int = 1) -> str:
    return "—" if not v else f"{scale * v[0]:.{digits}f} ± {scale * v[1]:.{digits}f}"


def _of(row: dict, key: str, value: object) -> str:
    """`` (1 seed)`` when a measurement covers fewer seeds than the row."""
    n = row.get(key, row["seeds"])
    return f" ({n} seed{'s' if n != 1 else ''})" if value and n != row["seeds"] else ""


def block(results: list[dict], methods: list[str]) -> str:
    """The markdown block of one page."""
    intro = (
        "**Accuracy and cost on public offline data** ([Benchmarks](../benchmarks.md#quality-on-public-offline-data)): "
        "mean ± std over seeds of the final model; *collapsed* counts the runs whose per-epoch PGD accuracy fell below "
        "half of its best earlier value, itself at least 15% (catastrophic overfitting); cost is training CPU time "
        "relative to standard training's at the same setting and seed. Standard and PGD-10 rows for reference."
    )
    out = [BEGIN, "", intro, ""]
    for res in results:
        rows = [r for r in res["rows"] if r["method"] in (*methods, *REFERENCES)]
        if not any(r["method"] in methods for r in rows):
            continue
        out += ["| dataset | ε | method | seeds | clean % | PGD-20 % | PGD-50-10 % | AutoAttack % | collapsed | cost |",
                "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            aa = _fmt(r.get("aa")) + _of(r, "aa_seeds", r.get("aa"))
            pgd50 = _fmt(r.get("pgd50")) + _of(r, "pgd50_seeds", r.get("pgd50"))
            out.append(f"| {r['dataset']} | {r['eps']:g} | {r['method']} | {r['seeds']} | {_fmt(r['clean'])} "
                       f"| {_fmt(r.get('pgd20'))} | {pgd50} | {aa} | {r['collapsed']}/{r['seeds']} "
                       f"| {_fmt(r.get('cost'), 1.0, 2)}× |")  # fmt: skip
        out += ["", res["meta"], ""]
    out.append(END)
    return "\n".join(out)


def update(page: Path, text: str) -> None:
    s = page.read_text()
    if BEGIN in s:
        s = s[: s.index(BEGIN)] + text + s[s.index(END) + len(END) :]
    elif "**Accuracy on small data.**" in s:
        start = s.index("**Accuracy on small data.**")
        nxt = re.search(r"^## ", s[start:], flags=re.M)
        s = s[:start] + text + "\n" + (s[start + nxt.start() :] if nxt else "")
    elif "## Our measurements" in s:
        start = s.index("## Our measurements")
        nxt = re.search(r"^## ", s[start + 3 :], flags=re.M)
        cut = start + 3 + nxt.start() if nxt else len(s)
        s = s[:cut].rstrip() + "\n\n" + text + "\n" + ("\n" + s[cut:] if nxt else "")
    else:
        s = s.rstrip() + "\n\n## Our measurements\n\n" + text + "\n"
    page.write_text(s.rstrip() + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="quality-style JSON files ({meta, rows})")
    args = p.parse_args(argv)
    results = [json.loads(f.read_text()) for f in args.results]
    for name, methods in PAGES.items():
        page = ROOT / "docs" / "methods" / f"{name}.md"
        if page.is_file():
            update(page, block(results, methods))
            print(f"updated {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
