"""A plain batched ``model.generate`` loop over MUB's stage-1 prompts: the harness-free baseline of
``stage1_vs_plain_loop`` in ``benchmarks/run.py`` (timed as a whole process, start-up included).

    python benchmarks/plain_loop.py MODEL_FOLDER --items 64 --batch-size 16 --max-new-tokens 16 --out answers.jsonl

The same saved model, the same items of the embedded sample and the same prompts as
``mub run --stages 1 --protocol deterministic`` (the preset's stage-1 prompt through the model's chat
template); greedy decoding to EOS or the token limit; the decoded answers are written one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import mub_dataset
    from mub.protocol.presets import protocol_named
    from mub.protocol.prompts import render

    prompts = protocol_named("deterministic").prompts["explicit"]
    dataset = mub_dataset.load("explicit", "sample").select(range(args.items))
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    bos = processor.tokenizer.bos_token
    with open(args.out, "w", encoding="utf-8") as sink, torch.inference_mode():
        for start in range(0, len(dataset), args.batch_size):
            rows = dataset[start : start + args.batch_size]
            texts = [
                processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": render(dict(zip(rows, values)), prompts)}]}],
                    add_generation_prompt=True,
                )
                for values in zip(*rows.values())
            ]
            inputs = processor(
                text=texts, images=[[image.convert("RGB")] for image in rows["image"]], padding=True, return_tensors="pt",
                add_special_tokens=not (bos and texts[0].startswith(bos)),
            )  # fmt: skip
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for item_id, answer in zip(rows["id"], answers):
                sink.write(json.dumps({"id": item_id, "answer": answer}) + "\n")


if __name__ == "__main__":
    main()
