"""docs/finetuning.md's TRL example, run as written on a tiny offline model for 2 steps.

Only the names change: the Hub model becomes ``tiny:llava`` (random weights, built
offline), the dataset and output folders live in the test's folder, and one epoch
becomes ``max_steps=2``. Then the collator's labels are checked: they cover the
answer tokens only, never the question or the misleading cue.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mub.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "finetuning.md"
trl = pytest.importorskip("trl", reason="TRL is the [trl] extra (in [test]); pip install 'mub[trl]'")


def doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    (code,) = [block for block in blocks if "SFTTrainer(" in block]
    return code


def test_the_docs_sft_example_trains_and_masks_everything_but_the_answer(tmp_path: Path, monkeypatch) -> None:
    from mub.testing.tiny_models import resolve_model_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = tmp_path / "mub_sft"
    assert main(["sft-data", "--dataset", "sample", "--size", "40", "--out", str(dataset)]) == 0
    code = doc_example()
    replacements = {
        '"HuggingFaceTB/SmolVLM-256M-Instruct"': repr(resolve_model_spec("tiny:llava")),
        '"mub_sft"': repr(str(dataset)),
        '"smolvlm-mub-sft"': repr(str(tmp_path / "trained")),
        "num_train_epochs=1,": "max_steps=2,",
    }
    for old, new in replacements.items():
        assert old in code, f"docs/finetuning.md no longer has {old}; update this test with the doc"
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)

    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    assert (tmp_path / "trained" / "config.json").is_file()  # save_model wrote the model

    train = namespace["train"]
    tokenizer = trainer.processing_class.tokenizer
    examples = [train[i] for i in range(4)]
    batch = trainer.data_collator([dict(example) for example in examples])
    for example, ids, labels, mask in zip(examples, batch["input_ids"], batch["labels"], batch["attention_mask"]):
        trained = labels != -100
        positions = trained.nonzero().flatten().tolist()
        assert positions, "no token is trained"
        # One contiguous stretch at the end of the text: the completion.
        assert positions == list(range(positions[0], positions[-1] + 1)) and positions[-1] == int(mask.sum()) - 1
        assert (labels[trained] == ids[trained]).all()
        [answer] = example["completion"][0]["content"]
        assert tokenizer.decode(ids[trained], skip_special_tokens=True).strip() == answer["text"]
        cue_and_question = tokenizer.decode(ids[: positions[0]], skip_special_tokens=True)
        assert example["prompt"][0]["content"][1]["text"].strip()[-20:] in cue_and_question
