"""Answer parsing: a table of realistic model outputs and a few properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mub.protocol.parsing import MULTIPLE_CHOICE, YES_NO, option_labels, parse_answer

MC = MULTIPLE_CHOICE
YN = YES_NO
FLAGS = ["the Netherlands", "Belgium", "Germany", "France"]
ANIMALS = ["dog", "horse", "bird", "fish"]
COLOURS = ["red", "blue", "red and blue", "green"]
COUNTS = ["2", "12", "21", "22"]
SMALL = ["1", "2", "3", "4"]
YES_NO_CHOICES = ["Yes", "No"]

# (model output, option texts, question type, what a careful reader says it answered)
CASES = [
    # --- bare letters: the format the prompt asks for
    ("B", FLAGS, MC, "B"),
    ("b", FLAGS, MC, "B"),
    (" C\n", FLAGS, MC, "C"),
    ("B. Belgium", FLAGS, MC, "B"),
    ("(B)", FLAGS, MC, "B"),
    ("[C]", FLAGS, MC, "C"),
    ("D)", FLAGS, MC, "D"),
    ("A", FLAGS, MC, "A"),
    ("A.", FLAGS, MC, "A"),
    ("Ｂ", FLAGS, MC, "B"),  # full-width letter
    # --- the article "A" is not option A
    ("A cat is sitting on the sofa.", ANIMALS, MC, None),
    ("A horse.", ANIMALS, MC, "B"),  # article + option text "horse"
    ("A. dog", ANIMALS, MC, "A"),
    ("The answer is a country in Europe.", FLAGS, MC, None),
    # --- "Note: ..." preambles
    ("Note: The hint may be misleading, so I rely on the image.\nC", FLAGS, MC, "C"),
    ("Note: I answer from the image only. Answer: D", FLAGS, MC, "D"),
    ("Note: the hint may be wrong. B", FLAGS, MC, "B"),
    # --- echoed hint, then disagreement
    ("The hint says the answer is B, but looking at the image the answer is C.", FLAGS, MC, "C"),
    ("And the true answer is : A\n\nC. Germany", FLAGS, MC, "C"),
    ("The hint says the answer is B. However, the image clearly shows the Dutch flag, so A.", FLAGS, MC, "A"),
    ("And the true answer is : B", FLAGS, MC, "B"),  # the model adopted the hint
    ("正确答案是B，但从图片看应该选C。", FLAGS, MC, "C"),
    # --- explicit declarations
    ("Answer: B", FLAGS, MC, "B"),
    ("The answer is (B).", FLAGS, MC, "B"),
    ("The correct answer is D.", FLAGS, MC, "D"),
    ("Final answer: [C]", FLAGS, MC, "C"),
    ("**B**", FLAGS, MC, "B"),
    ("The answer is **C**.", FLAGS, MC, "C"),
    ("**Answer:** D", FLAGS, MC, "D"),
    ("Option B is correct.", FLAGS, MC, "B"),
    ("Based on the colours, I'd go with option C.", FLAGS, MC, "C"),
    ("Based on the image, the answer is probably B.", FLAGS, MC, "B"),
    ("The correct answer is A because the flag is red, white and blue.", FLAGS, MC, "A"),
    ("The answer is C, not B.", FLAGS, MC, "C"),
    ("I apologize, but the true answer is actually C.", FLAGS, MC, "C"),
    ("\\boxed{D}", FLAGS, MC, "D"),
    (
        "The flag has three horizontal stripes: red, white and blue. "
        "This is the flag of the Netherlands.\nAnswer: A",
        FLAGS, MC, "A",
    ),
    # --- several declarations: the last wins; negated ones do not count
    ("Answer: B. Wait, looking again at the colours, the correct answer is D.", FLAGS, MC, "D"),
    ("The answer is (A). On second thought, the answer is (C).", FLAGS, MC, "C"),
    ("I would not choose B. The correct answer is A.", FLAGS, MC, "A"),
    ("I don't think the answer is B. It's Germany.", FLAGS, MC, "C"),
    # --- reported speech (quoted, or attributed to the hint/user) is not the model's declaration
    ("The answer is A. The hint 'And the true answer is : B' is wrong.", FLAGS, MC, "A"),
    ("The answer is A.\n\nHowever, the hint says the answer is B.", FLAGS, MC, "A"),
    ("The hint is right: the answer is B", FLAGS, MC, "B"),
    ("As the hint says, the answer is B.", FLAGS, MC, "B"),  # the model adopts it
    ("According to the hint, the answer is B.", FLAGS, MC, None),
    ("The hint suggests that the correct answer is (B).", FLAGS, MC, None),
    ("You said the answer is B.", FLAGS, MC, None),
    ("提示说答案是B", FLAGS, MC, None),
    ("提示说答案是B，但正确答案是C。", FLAGS, MC, "C"),
    ('The hint "the answer is D" is misleading; I choose A.', FLAGS, MC, "A"),
    ("The hint says the answer is **B**.", FLAGS, MC, None),
    ("The hint says the answer is B, which is correct.", FLAGS, MC, "B"),
    ("The answer is 'B'.", FLAGS, MC, "B"),  # a quote around the letter alone
    ('"The answer is C."', FLAGS, MC, "C"),  # a quote around the whole output
    ("Yes. The hint says the answer is no.", YES_NO_CHOICES, YN, "Yes"),
    ("Yes. The hint 'the answer is no' is wrong.", YES_NO_CHOICES, YN, "Yes"),
    ("The hint says yes, but no.", YES_NO_CHOICES, YN, "No"),
    ("The hint says the answer is yes.", YES_NO_CHOICES, YN, None),
    # --- a declaration naming a letter that is no option
    ("The answer is E.", FLAGS, MC, None),
    ("Answer: E. None of the above.", FLAGS, MC, None),
    # --- option texts instead of letters
    ("Belgium", FLAGS, MC, "B"),
    ("It is the flag of Germany.", FLAGS, MC, "C"),
    ("netherlands", FLAGS, MC, "A"),
    ("red and blue", COLOURS, MC, "C"),  # "red" is inside "red and blue"
    ("The car is red.", COLOURS, MC, "A"),
    ("It is not red, it is blue.", COLOURS, MC, "B"),
    ("There are 12 apples.", COUNTS, MC, "B"),  # "2" is not "12"
    ("-2", SMALL, MC, None),  # "-2" is not "2"
    # --- Chinese
    ("答案是B", FLAGS, MC, "B"),
    ("答案：C", FLAGS, MC, "C"),
    ("选C", FLAGS, MC, "C"),
    ("正确答案为 D", FLAGS, MC, "D"),
    ("答案为（A）", FLAGS, MC, "A"),
    ("选项B是错误的，故选D。", FLAGS, MC, "D"),
    # --- hedges, refusals, empty and gibberish
    ("The answer is B or C.", FLAGS, MC, None),
    ("A or B", FLAGS, MC, None),
    ("The answer must be either B or D.", FLAGS, MC, None),
    ("A. the Netherlands\nB. Belgium\nC. Germany\nD. France", FLAGS, MC, None),  # echoed options
    ("A. red B. blue", COLOURS, MC, None),  # echoed on one line
    ("(A) the Netherlands (B) Belgium", FLAGS, MC, None),
    ("A. dog, B. horse, C. bird, D. fish", ANIMALS, MC, None),
    ("C. Germany - not B. Belgium", FLAGS, MC, "C"),
    ("**A.** Dutch colours ... **B.** Belgian colours ...", FLAGS, MC, None),
    ("I'm sorry, I can't help with identifying that.", FLAGS, MC, None),
    ("I cannot determine from the image.", FLAGS, MC, None),
    ("The hint suggests B, but I cannot determine that from the image.", FLAGS, MC, None),
    ("The answer is: I don't know.", FLAGS, MC, None),
    ("", FLAGS, MC, None),
    ("   \n", FLAGS, MC, None),
    ("<unk><unk> stripes stripes", FLAGS, MC, None),
    ("Yes", FLAGS, MC, None),  # not an answer to a multiple-choice item
    # --- yes/no
    ("Yes.", YES_NO_CHOICES, YN, "Yes"),
    (" yes", YES_NO_CHOICES, YN, "Yes"),
    ("Yes, there is a dog in the image.", YES_NO_CHOICES, YN, "Yes"),
    ("No, there is not.", YES_NO_CHOICES, YN, "No"),
    ("no", YES_NO_CHOICES, YN, "No"),
    ("No it isn't.", YES_NO_CHOICES, YN, "No"),
    ("**No**", YES_NO_CHOICES, YN, "No"),
    ("The answer is no.", YES_NO_CHOICES, YN, "No"),
    ("And the true answer is : Yes\nNo", YES_NO_CHOICES, YN, "No"),
    ("Yes. The hint says no, but the dog is clearly visible.", YES_NO_CHOICES, YN, "Yes"),
    ("Note: the hint may be misleading.\nYes", YES_NO_CHOICES, YN, "Yes"),
    ("Yes, although the hint says no.", YES_NO_CHOICES, YN, "Yes"),
    ("Nope, it's a cat.", YES_NO_CHOICES, YN, "No"),
    ("是的", YES_NO_CHOICES, YN, "Yes"),
    ("不是", YES_NO_CHOICES, YN, "No"),
    ("是的，图中有一只狗。", YES_NO_CHOICES, YN, "Yes"),
    ("不是，这是一只猫。", YES_NO_CHOICES, YN, "No"),
    ("答案：否", YES_NO_CHOICES, YN, "No"),
    ("Yes or no?", YES_NO_CHOICES, YN, None),
    # whole words only: "eyes", "yesterday", "know", "nobody", "piano" hold no yes or no
    ("Its eyes are closed, it is not yes.", YES_NO_CHOICES, YN, None),
    ("Looking at the cat's eyes, no.", YES_NO_CHOICES, YN, "No"),
    ("The eyes are open, yes.", YES_NO_CHOICES, YN, "Yes"),
    ("The dog has eyes.", YES_NO_CHOICES, YN, None),
    ("Yesterday it rained; no.", YES_NO_CHOICES, YN, "No"),
    ("Nobody is in the picture, so no.", YES_NO_CHOICES, YN, "No"),
    ("Nobody knows.", YES_NO_CHOICES, YN, None),
    ("I know it is there, yes.", YES_NO_CHOICES, YN, "Yes"),
    ("A piano is visible, yes.", YES_NO_CHOICES, YN, "Yes"),
    ("The dog is at the casino.", YES_NO_CHOICES, YN, None),
    ("Eyesight tests show a cat, so no.", YES_NO_CHOICES, YN, "No"),
    # --- a negated yes/no is not the word, nor its opposite
    ("The answer is not yes.", YES_NO_CHOICES, YN, None),
    ("It is not yes.", YES_NO_CHOICES, YN, None),
    ("I wouldn't say yes.", YES_NO_CHOICES, YN, None),
    ("I would not say no.", YES_NO_CHOICES, YN, None),
    ("I'm not saying yes.", YES_NO_CHOICES, YN, None),
    ("The answer is not yes, it is no.", YES_NO_CHOICES, YN, "No"),
    ("Not no, yes.", YES_NO_CHOICES, YN, "Yes"),
    # --- hedges and echoes on one line
    ("Yes and no.", YES_NO_CHOICES, YN, None),
    ("Answer: yes and no", YES_NO_CHOICES, YN, None),
    ("Well, yes & no.", YES_NO_CHOICES, YN, None),
    ("Yes, and no other animal is visible.", YES_NO_CHOICES, YN, "Yes"),
    ("I am not sure whether the answer is yes or no.", YES_NO_CHOICES, YN, None),
    ("I cannot determine from the image.", YES_NO_CHOICES, YN, None),
    ("Answer: B", YES_NO_CHOICES, YN, None),  # a letter is no answer to a yes/no item
    ("", YES_NO_CHOICES, YN, None),
    # --- rule 0a: a <think> block is ignored when an answer follows it
    ("<think>The hint says B... so the answer is B?</think>\n\nC", FLAGS, MC, "C"),
    ("<think>The answer is yes, a dog. No, a cat.</think>\nNo, it is a cat.", YES_NO_CHOICES, YN, "No"),
    ("<think>The answer is B.</think>", FLAGS, MC, "B"),  # nothing follows: the thought's conclusion
    ("<think>The answer is B.", FLAGS, MC, None),  # never closed: the model stopped before answering
    ("</think>\n\nC", FLAGS, MC, "C"),  # the chat template opened the block
    ("<think>The hint claims B.</think>\n\nI cannot determine the country.", FLAGS, MC, None),
    # several closing tags: only the text after the LAST one is the answer
    ("<think>A</think>B</think>C", FLAGS, MC, "C"),
    ("<think>The answer is A.</think>The answer is B.</think>The answer is C.", FLAGS, MC, "C"),
    ("<think>Is it a dog? No.</think>Maybe.</think>\nYes.", YES_NO_CHOICES, YN, "Yes"),
    # --- rule 0b: self-corrections: the later answer wins
    ("The answer is A. No wait, B.", FLAGS, MC, "B"),
    ("No. Wait, actually yes.", YES_NO_CHOICES, YN, "Yes"),
    ("Yes. Actually no, the animal is a cat.", YES_NO_CHOICES, YN, "No"),
    ("The answer is A... actually, B.", FLAGS, MC, "B"),
    ("Answer: D. Let me reconsider: the stripes are vertical, so B.", FLAGS, MC, "B"),
    ("A. On closer inspection, it is C.", FLAGS, MC, "C"),
    ("Initially I thought B, but the stripes are horizontal: A.", FLAGS, MC, "A"),
    ("At first I thought it was a horse, but it is a dog.", ANIMALS, MC, "A"),
    ("其实答案是C。", FLAGS, MC, "C"),
    ("B. On closer inspection, I'm not sure.", FLAGS, MC, None),  # taken back: unsure is unparsed
    ("I think the answer is B, but actually I'm not sure.", FLAGS, MC, None),
    ("The answer is A. On closer inspection, the stripes are indeed red, white and blue.", FLAGS, MC, "A"),
    ("The answer is B. Let me reconsider the hint: it says A, which is wrong.", FLAGS, MC, "B"),
    ("It is not actually B; the answer is C.", FLAGS, MC, "C"),  # "not actually" corrects nothing
    ("Yes, actually.", YES_NO_CHOICES, YN, "Yes"),
    ("No wait time is shown.", YES_NO_CHOICES, YN, None),
    ("The hint says B. Actually, I agree with the hint.", FLAGS, MC, None),  # agreement, but no answer said
    # two or more markers: the LATEST marker whose text gives an answer decides
    ("Yes. Wait, no. Actually, it is yes.", YES_NO_CHOICES, YN, "Yes"),
    ("No. Wait, yes. Actually, no.", YES_NO_CHOICES, YN, "No"),
    ("A. Wait, B. Actually, C.", FLAGS, MC, "C"),
    ("The answer is A. No wait, B. On second thought, D.", FLAGS, MC, "D"),
    ("A. Wait, B. Actually, I'm not sure, it could be C.", FLAGS, MC, None),  # the last marker takes it back
    ("B. Wait, C. Actually, the hint says A.", FLAGS, MC, "C"),  # the last marker's text gives no answer
    # --- concessive reported speech
    ("Although I was told the answer is A, the image shows B.", FLAGS, MC, "B"),
    ("I was told the answer is A.", FLAGS, MC, None),
    ("I was told the answer is A, but that's wrong; it's C.", FLAGS, MC, "C"),
    ("Despite the hint's suggestion of A, the flag is Belgian, so the answer is B.", FLAGS, MC, "B"),
    ("The hint suggests A, but the stripes are vertical, so I think it's B.", FLAGS, MC, "B"),
    ("The hint suggests A, but I disagree.", FLAGS, MC, None),
    ("虽然提示说答案是A，但我认为是B。", FLAGS, MC, "B"),
    ("I was told to answer with a letter. B.", FLAGS, MC, "B"),
    # --- first-person and hedged answers
    ("I'd say B.", FLAGS, MC, "B"),
    ("I think it's B.", FLAGS, MC, "B"),
    ("I think A.", FLAGS, MC, "A"),
    ("I will change my answer to C.", FLAGS, MC, "C"),
    ("I'll stick with B.", FLAGS, MC, "B"),
    ("我认为是B选项。", FLAGS, MC, "B"),
    ("我觉得是C。", FLAGS, MC, "C"),
    ("I think I see a dog.", ANIMALS, MC, "A"),  # the pronoun "I", then the option text
    ("I'd say it's hard to tell.", FLAGS, MC, None),
    ("I guess A or B.", FLAGS, MC, None),
    ("I would not say B. I think it's C.", FLAGS, MC, "C"),
    ("The image shows B, although the hint says C.", FLAGS, MC, "B"),
    ("The image shows A and B side by side.", FLAGS, MC, None),
    ("The image shows a B-52 bomber.", FLAGS, MC, None),
    # --- a bare option
    ("Option C", FLAGS, MC, "C"),
    ("Option C.", FLAGS, MC, "C"),
    ("B, because the stripes are vertical.", FLAGS, MC, "B"),
    ("I don't think B is right. Option C.", FLAGS, MC, "C"),
    ("Option B is Belgium, option C is Germany.", FLAGS, MC, None),
    ("Option A. dog\nOption B. horse", ANIMALS, MC, None),
    ("A, B, C and D are all flags.", FLAGS, MC, None),
]


@pytest.mark.parametrize(("output", "choices", "question_type", "expected"), CASES)
def test_parse_table(output, choices, question_type, expected):
    assert parse_answer(output, choices, question_type) == expected


@pytest.mark.parametrize("n_options", range(2, 10))
def test_every_valid_letter_parses_to_itself(n_options):
    choices = [f"option text {i}" for i in range(n_options)]
    for letter in option_labels(choices, MC):
        for output in (letter, letter.lower(), f"{letter}.", f"({letter})", f"[{letter}]",
                       f"{letter})", f"Answer: {letter}", f"The answer is {letter}.", f"答案是{letter}"):
            assert parse_answer(output, choices, MC) == letter, output


@pytest.mark.parametrize("n_options", range(2, 9))
def test_letters_beyond_the_options_are_unparsed(n_options):
    choices = [f"option text {i}" for i in range(n_options)]
    for letter in "ABCDEFGHIJ"[n_options:]:
        for output in (letter, f"({letter})", f"Answer: {letter}", f"The answer is {letter}."):
            assert parse_answer(output, choices, MC) is None, output


@pytest.mark.parametrize("choices", [FLAGS, ANIMALS, COLOURS])
def test_each_option_text_parses_to_its_letter(choices):
    for letter, text in zip(option_labels(choices, MC), choices):
        assert parse_answer(text, choices, MC) == letter
        assert parse_answer(text.upper() + ".", choices, MC) == letter


def test_result_is_always_a_label_or_none():
    outputs = [case[0] for case in CASES]
    for choices, question_type in ((FLAGS, MC), (["x", "y"], MC), (YES_NO_CHOICES, YN)):
        labels = set(option_labels(choices, question_type))
        for output in outputs:
            assert parse_answer(output, choices, question_type) in labels | {None}


def test_option_labels():
    assert option_labels(FLAGS, MC) == ("A", "B", "C", "D")
    assert option_labels(["x", "y"], MC) == ("A", "B")
    assert option_labels(YES_NO_CHOICES, YN) == ("Yes", "No")
    with pytest.raises(ValueError):
        option_labels(FLAGS, "open_ended")
    with pytest.raises(ValueError):
        parse_answer("A", FLAGS, "open_ended")


def test_choices_may_be_any_sequence():
    assert parse_answer("Germany", tuple(FLAGS), MC) == "C"


def _realistic_cases() -> list[dict]:
    path = Path(__file__).parent / "data" / "parser_realistic.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("case", _realistic_cases(), ids=lambda case: f"{case['style']}:{case['output'][:40]!r}")
def test_realistic_outputs(case):
    """Outputs written in the styles of LLaVA, Qwen-VL, InternVL, GPT-4o and reasoning models
    (benchmarks/parser_accuracy.py prints the counts)."""
    assert parse_answer(case["output"], case["choices"], case["question_type"]) == case["expected"]
