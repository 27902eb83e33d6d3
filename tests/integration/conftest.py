"""Everything under ``tests/integration`` needs the real broker: mark it so ``-m "not integration"`` works."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Conftest hooks see the whole session's items, so only tests below this folder are marked.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
