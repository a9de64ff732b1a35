"""The items fingerprint: one digest over everything about a set of items that can reach a request or a score.

A run records it (``run.json``: ``items_fingerprint``), ``--resume`` and ``mub merge``
compare it, and the leaderboard checks submissions against the one published with the
dataset. It is computed from the rows as the dataset stores them: every column but the
image itself (an image enters through a content hash column where the dataset has one)
and the fields a protocol preset derives again at run time.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

# Not hashed: the image's bytes (hashed into a column of their own at build time) and
# the level, which the run's preset recomputes from misled_count (hashed).
UNHASHED_FIELDS = frozenset({"image", "difficulty"})
FINGERPRINT_LENGTH = 16  # hex digits kept: enough to tell datasets apart, short enough to read


def item_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one row that the fingerprint covers."""
    return {key: value for key, value in row.items() if key not in UNHASHED_FIELDS}


def item_digest(row: Mapping[str, Any]) -> str:
    """A digest of one item's fingerprinted fields (key order and JSON spacing do not matter)."""
    text = json.dumps(item_fields(row), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def items_fingerprint(rows: Iterable[Mapping[str, Any]]) -> str:
    """The fingerprint of ``rows`` in their order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(item_digest(row).encode("ascii"))
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
