"""Every docstring example in the package runs (the docs cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pellucid

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(pellucid.__path__, prefix="pellucid.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"
