"""The examples in the package's docstrings run and give what they show (kornia style: examples are tests)."""
import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpe_bench"
MODULES = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
                 for p in PACKAGE.rglob("*.py") if ">>>" in p.read_text())


def test_some_modules_have_examples():
    assert "hpe_bench.deploy.subpixel" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result}"
