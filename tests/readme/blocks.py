"""README.md's Python blocks, grouped by ``## `` section, with the HTML-comment directives that steer them.

Rules (also in tests/readme/README.md):

- Each ``## `` section's ```` ```python ```` blocks run in order, in one namespace, in a fresh interpreter
  (so one section's registrations never leak into another's), after the shared prelude.
- ``<!-- readme-setup`` … ``-->`` right before a block holds code run just before it, not shown on the page
  (stand-ins for what a real service has, e.g. a client object).
- ``<!-- readme-test: pytest -->`` right before a block runs that block as a test module under pytest instead
  (with the microbus plugin, as a user's suite would), after the section's other blocks were checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SETUP = re.compile(r"<!--\s*readme-setup\s*\n(.*?)-->\s*$", re.S)
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*-->\s*$")


@dataclass
class Block:
    """One Python block: its first line in README.md (1-based), its code and its directives."""

    line: int
    code: str
    setup: str = ""
    setup_line: int = 0
    pytest: bool = False


@dataclass
class Section:
    """A ``## `` section and its Python blocks, in order."""

    title: str
    blocks: list[Block] = field(default_factory=list)


def sections(text: str | None = None) -> list[Section]:
    """The README's ``## `` sections that have Python blocks.

    Raises:
        ValueError: an unknown ``readme-test`` directive (a typo must not silently skip a check).
    """
    text = README.read_text() if text is None else text
    found: list[Section] = []
    current = Section("(before the first section)")
    position = 0
    for match in re.finditer(r"^## ([^\n]+)$|" + FENCE.pattern, text, re.S | re.M):
        region_start, position = position, match.end()
        if match.group(1) is not None:
            current = Section(match.group(1).strip())
            found.append(current)
            continue
        if match.group(2) != "python":
            continue
        block = Block(line=text.count("\n", 0, match.start()) + 2, code=match.group(3))
        before = text[region_start : match.start()].rstrip()
        directive = DIRECTIVE.search(before)
        if directive:
            if directive.group(1) != "pytest":
                raise ValueError(f"README.md line {block.line}: unknown readme-test directive {directive.group(1)!r}")
            block.pytest = True
            before = before[: directive.start()].rstrip()
        setup = SETUP.search(before)
        if setup:
            block.setup = setup.group(1)
            block.setup_line = text.count("\n", 0, region_start + setup.start(1)) + 1
        current.blocks.append(block)
    return [section for section in found if section.blocks]


def shifted(code: str, line: int) -> str:
    """``code`` padded so that its first line is line ``line`` (tracebacks then point into README.md)."""
    return "\n" * (line - 1) + code
