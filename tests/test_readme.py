"""Every Python block in the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    """The block runs in a fresh namespace; only the search's episode count is capped, for time."""
    import amc.api

    search = amc.api.search

    def short_search(*args, **kwargs):
        return search(*args, **{**kwargs, "episodes": 3, "hp": {"warmup_episodes": 2}, "progress": False})

    monkeypatch.setattr(amc.api, "search", short_search)
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
