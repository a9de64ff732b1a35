"""Speed of key redaction (mub.backends.redaction) on the longest answer stored (32,000 + 4,096 characters).

Four texts of that length: plain prose; one base64 run of random bytes (every run of 12+ base64 characters is
decoded at 8 offsets and alphabets); base64 of letters (the worst case: each decoding is again one long
base64-like run, down to MAX_DEPTH); and prose holding the key in several forms.

    python benchmarks/redaction.py

Prints one JSON line: seconds per text and MB/s. Not a timed test: run it by hand.
"""

from __future__ import annotations

import base64
import json
import random
import string
import time

from mub.backends.openai_backend import MAX_OUTPUT_CHARS, REDACT_MARGIN
from mub.backends.redaction import KeyRedactor


def main() -> None:
    rng = random.Random(0)
    key = "sk-proj-" + "".join(rng.choices(string.ascii_letters + string.digits, k=40))
    length = MAX_OUTPUT_CHARS + REDACT_MARGIN
    words = ["the", "image", "shows", "a", "red", "square", "answer", "B", "because", "colour"]
    prose = " ".join(rng.choice(words) for _ in range(length // 4))[:length]
    blob = base64.b64encode(rng.randbytes(length * 3 // 4)).decode()[:length]
    # The worst case found: base64 of letters decodes to one long base64-like run again, at every level.
    nested = base64.b64encode(b"x" * (length * 3 // 4)).decode()[:length]
    forms = [key[::-1], key.encode().hex(), "\u200b".join(key), base64.b64encode(base64.b64encode(key.encode())).decode()]
    leaky = (prose[: length // 2] + " " + " | ".join(forms) + " " + prose)[:length]
    redactor = KeyRedactor(key)
    figures = {}
    for name, text in {"prose": prose, "base64_run": blob, "base64_of_letters": nested, "prose_with_key_forms": leaky}.items():
        start = time.perf_counter()
        redactor.redact(text)
        seconds = time.perf_counter() - start
        figures[name] = {"chars": len(text), "seconds": round(seconds, 3), "mb_per_s": round(len(text) / seconds / 1e6, 3)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
