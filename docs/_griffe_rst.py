"""Griffe extension used by the docs build: render the few reStructuredText constructs in our docstrings.

robustfast docstrings are Google style, but some use Sphinx roles (:class:`~robustfast.X`) and
``.. math::`` directives, which mkdocstrings would print verbatim. This extension rewrites them when the
docs are built (the source is untouched):

* ``:class:`~a.b.C``` -> ```C```, ``:class:`a.b.C``` -> ```a.b.C``` (same for :func:, :meth:, :data:,
  :attr:, :mod:, :exc:, :obj:). No link is emitted, so a reference to a name that does not exist yet on this
  branch cannot break the strict build.
* ``:math:`...``` -> ``\\( ... \\)`` and ``.. math:: ...`` (with its indented continuation lines) ->
  a ``$$ ... $$`` block, both handled by pymdownx.arithmatex.
* Doctest lines (``>>> ...`` and their output, up to the next blank line) outside fenced code -> a fenced
  ``pycon`` block. Under an ``Example:`` admonition Markdown would otherwise read ``>>>`` as three nested
  block quotes and run the lines together.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")


def _role(m: re.Match[str]) -> str:
    tilde, target = m.group(1), m.group(2)
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _math_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(".. math::"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        body = [stripped[len(".. math::") :].strip()]
        i += 1
        cont: list[str] = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if not lines[i].strip():
                # a blank line ends the directive unless more indented content follows
                j = i + 1
                if j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > len(indent):
                    cont.append("")
                    i += 1
                    continue
                break
            cont.append(lines[i])
            i += 1
        body += textwrap.dedent("\n".join(cont)).splitlines() if cont else []
        body = [b for b in body if b.strip()]
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$", ""]
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _doctest_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith("```"):
            fenced = not fenced
        if fenced or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: _indent(line)]
        block: list[str] = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(indent):
            block.append(lines[i][len(indent) :])
            i += 1
        if out and out[-1].strip() and not out[-1].rstrip().endswith(":"):  # keep "Example:" on its content
            out.append("")
        out += [f"{indent}```pycon", *(f"{indent}{b}" for b in block), f"{indent}```"]
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """Rewrite Sphinx roles, math directives and bare doctest lines in one docstring."""
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    text = _ROLE.sub(_role, text)
    return _doctest_blocks(_math_blocks(text))


class RstToMarkdown(griffe.Extension):
    """Apply :func:`rst_to_markdown` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
