"""Run tags (``ctx.set_tags``): searchable ``key=value`` pairs a workflow attaches to its run.

Why bounded: every tag becomes an entry in the processor's run index (one RocksDB key per pair, written in
the same batch as the run's state) and travels in the run's state on every write to the changelog; a
workflow that tagged each loop iteration would grow both without limit. So a run has at most
``MAX_TAGS`` keys, keys are short identifiers and values short strings. A violation is the workflow's
error: the run is parked with the reason (``decide``), never a processor crash.

Keys cannot contain ``=`` (the CLI and the HTTP query parse ``tag=key=value`` at the first ``=``) nor NUL
(the index separates a pair from the rest of the key with NUL).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_TAGS = 16
"""Most distinct keys one run may have."""
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 256
_KEY = re.compile(r"[A-Za-z0-9_.:/-]+")


def tags_error(current: Mapping[str, str], new: Mapping[str, object]) -> str:
    """Why setting ``new`` on a run whose tags are ``current`` is refused; ``""`` when it is fine."""
    for key, value in new.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key) or len(key) > MAX_KEY_CHARS:
            return (
                f"tag key {key!r} refused: keys are 1-{MAX_KEY_CHARS} characters of letters, digits "
                "and _ . : / -"
            )
        if not isinstance(value, str):
            return f"tag {key!r} refused: values are strings, got {type(value).__name__}"
        if len(value) > MAX_VALUE_CHARS or "\x00" in value:
            return f"tag {key!r} refused: values are at most {MAX_VALUE_CHARS} characters, without NUL"
    keys = set(current) | set(new)
    if len(keys) > MAX_TAGS:
        return f"tags refused: a run has at most {MAX_TAGS} tag keys, this would make {len(keys)}"
    return ""
