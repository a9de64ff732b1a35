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
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping, Sequence

# Not hashed: the image's bytes (hashed into a column of their own at build time) and
# the level, which the run's preset recomputes from misled_count (hashed).
UNHASHED_FIELDS = frozenset({"image", "difficulty"})
FINGERPRINT_LENGTH = 16  # hex digits kept: enough to tell datasets apart, short enough to read
# Hex digits kept per field of an item: only to say which field changed (the fingerprint decides
# whether anything did), so a short digest keeps a 5,000-item record under 1 MB.
FIELD_DIGEST_LENGTH = 8


def item_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one row that the fingerprint covers."""
    return {key: value for key, value in row.items() if key not in UNHASHED_FIELDS}


def _canonical(value: Any) -> bytes:
    """One JSON text per value (key order and spacing do not matter)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def item_digest(row: Mapping[str, Any]) -> str:
    """A digest of one item's fingerprinted fields."""
    return hashlib.sha256(_canonical(item_fields(row))).hexdigest()


def items_fingerprint(rows: Iterable[Mapping[str, Any]]) -> str:
    """The fingerprint of ``rows`` in their order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(item_digest(row).encode("ascii"))
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


@dataclass(frozen=True)
class ItemDigests:
    """Per item (by id, in run order), a short digest of each fingerprinted field.

    A run folder records them (``items.json``) beside the fingerprint, so that a
    refused ``--resume`` or ``mub merge`` can name the first item that changed and
    the field, not only that something did.
    """

    fields: tuple[str, ...]
    items: tuple[tuple[str, str], ...]  # (id, the fields' digests concatenated in ``fields`` order)

    def by_id(self) -> dict[str, dict[str, str]]:
        n = FIELD_DIGEST_LENGTH
        return {
            item_id: {name: digests[i * n : (i + 1) * n] for i, name in enumerate(self.fields)}
            for item_id, digests in self.items
        }

    def to_json(self) -> dict[str, Any]:
        return {"field_digest_length": FIELD_DIGEST_LENGTH, "fields": list(self.fields), "items": [list(i) for i in self.items]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ItemDigests":
        """Raises ValueError (KeyError, TypeError included) for anything but what :meth:`to_json` wrote."""
        if data.get("field_digest_length") != FIELD_DIGEST_LENGTH:
            raise ValueError(f"field_digest_length is {data.get('field_digest_length')!r}, not {FIELD_DIGEST_LENGTH}")
        items = tuple((str(item_id), str(digests)) for item_id, digests in data["items"])
        return cls(tuple(str(name) for name in data["fields"]), items)


def field_digests(rows: Sequence[Mapping[str, Any]]) -> ItemDigests:
    """The per-field digests of ``rows`` (all rows of one dataset share its columns)."""
    fields = tuple(sorted(item_fields(rows[0]))) if rows else ()
    items = tuple(
        (str(row["id"]), "".join(hashlib.sha256(_canonical(row.get(name))).hexdigest()[:FIELD_DIGEST_LENGTH] for name in fields))
        for row in rows
    )
    return ItemDigests(fields, items)


def first_difference(recorded: ItemDigests, current: ItemDigests, only: Collection[str] | None = None) -> str | None:
    """The first item (in the recorded order) whose inputs differ, and the field; None when none does.

    With ``only``, just those recorded items are compared (items the run has
    answered), and items added or reordered do not count.
    """
    now = current.by_id()
    for item_id, before in recorded.by_id().items():
        if only is not None and item_id not in only:
            continue
        if item_id not in now:
            return f"item {item_id} is no longer among the items the dataset gives"
        after = now[item_id]
        changed = [name for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]
        if changed:
            return f"item {item_id}: field {changed[0]} differs" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
    if only is not None:
        return None
    added = [item_id for item_id in now if item_id not in dict(recorded.items)]
    if added:
        return f"item {added[0]} is new" + (f" (and {len(added) - 1} more)" if len(added) > 1 else "")
    return None if recorded == current else "the items are the same but in another order"
