"""The zoo tier runs only where torchvision and timm import (``.venv-zoo``, see
``scripts/check.sh``); elsewhere every test here is skipped with the reason."""

from __future__ import annotations

import pytest

try:  # PyPI's torchvision may fail to import beside a torch it was not built for
    import timm  # noqa: F401
    import torchvision  # noqa: F401

    MISSING = None
except Exception as err:
    MISSING = f"{type(err).__name__}: {err}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/zoo" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.zoo)
            if MISSING is not None:
                item.add_marker(
                    pytest.mark.skip(
                        reason="zoo tier needs torchvision and timm (.venv-zoo, built by "
                        f"scripts/check.sh); here: {MISSING}"
                    )
                )
