"""Figures recounted by hand from a run's predictions records, for tests to compare with the run's own."""

from __future__ import annotations


def _correct(parsed: str | None, answer: str) -> bool:
    return parsed is not None and parsed.strip().lower() == answer.strip().lower()


def flip_note(record: dict) -> int | None:
    """The 0-based index of the first note whose answer differs in correctness from stage 1, or None."""
    right = _correct(record["stage1"][0]["parsed"], record["answer"])
    for index, answer in enumerate(record["stage2"]):
        if _correct(answer["parsed"], record["answer"]) != right:
            return index
    return None


def rates_by_notes(records: list[dict], max_notes: int) -> dict[str, dict[str, float | None]]:
    """mr_t2f and mr_f2t had only the first k notes been tried, for k = 1..max_notes."""
    scored = [r for r in records if r.get("error") is None]
    out: dict[str, dict[str, float | None]] = {"mr_t2f_by_notes": {}, "mr_f2t_by_notes": {}}
    for key, wanted in (("mr_t2f_by_notes", True), ("mr_f2t_by_notes", False)):
        group = [r for r in scored if _correct(r["stage1"][0]["parsed"], r["answer"]) is wanted]
        for k in range(1, max_notes + 1):
            within = [r for r in group if (note := flip_note(r)) is not None and note + 1 <= k]
            out[key][str(k)] = len(within) / len(group) if group else None
    return out
