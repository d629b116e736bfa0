"""Every Python block in the README and the guides in docs/ runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{page.relative_to(ROOT)} python block {k}", block)
    for page in PAGES
    for k, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


def test_the_readme_has_python_blocks():
    assert any(name.startswith("README.md") for name, _ in BLOCKS)
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("name, block", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_python_block_runs(name, block, tmp_path, monkeypatch):
    """The block runs in a fresh namespace; only the search's episode count is capped, for time."""
    import amc.api

    search = amc.api.search

    def short_search(*args, **kwargs):
        return search(*args, **{**kwargs, "episodes": 3, "hp": {"warmup_episodes": 2}, "progress": False})

    monkeypatch.setattr(amc.api, "search", short_search)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, name, "exec"), {"__name__": "readme"})
