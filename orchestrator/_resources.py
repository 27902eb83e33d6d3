"""Where the data files that live beside the package (``schemas/``, ``topics/``) are found.

In a wheel they are copied into ``orchestrator/_resources/``; in a source checkout (editable install) they are
read from the repository root, so there is one copy to edit.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} not found next to the orchestrator package")
