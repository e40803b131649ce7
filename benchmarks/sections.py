"""RESULTS.md is shared by several benchmarks: each owns one marked section and rewrites only it."""

from __future__ import annotations

from pathlib import Path

TITLE = "# Benchmark results"


def write_section(path: Path, name: str, markdown: str) -> None:
    """Replace the section ``name`` of ``path`` with ``markdown`` (appended if it is new)."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else TITLE + "\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
