"""The paper's main results, shipped with the package as reference points.

Dang et al., "Exploring Response Uncertainty in MLLMs: An Empirical
Evaluation under Misleading Scenarios", arXiv 2411.02708 (EMNLP 2025), main
results table. Figures are percentages: ``acc`` is accuracy on the unperturbed
questions, the others are misleading rates (correct-to-incorrect flips among
items first answered correctly) per difficulty level. The published headline
is the unweighted mean of the three levels.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_CITATION = 'Dang et al., "Exploring Response Uncertainty in MLLMs", arXiv 2411.02708 (EMNLP 2025)'


@dataclass(frozen=True)
class PaperRow:
    """One model's row of the paper's main table (percentages)."""

    model: str
    acc: float
    explicit: tuple[float, float, float]  # low, medium, high
    implicit: tuple[float, float, float]

    def levels_mean(self, kind: str) -> float:
        """The paper's headline convention: the unweighted mean of the three levels."""
        rates = self.explicit if kind == "explicit" else self.implicit
        return sum(rates) / len(rates)


PAPER_RESULTS: tuple[PaperRow, ...] = (
    PaperRow("GPT-4o", 73.38, (27.42, 56.43, 77.63), (46.47, 70.42, 78.83)),
    PaperRow("Gemini-Pro", 73.27, (34.86, 66.34, 72.51), (60.23, 71.83, 78.03)),
    PaperRow("Qwen-VL-Chat-max", 64.93, (28.64, 52.26, 64.09), (71.82, 81.94, 84.18)),
    PaperRow("Claude3-Opus-V", 56.63, (47.75, 70.12, 91.92), (86.57, 94.06, 95.45)),
    PaperRow("GLM-4V", 63.94, (62.17, 77.86, 82.83), (73.41, 78.80, 81.82)),
    PaperRow("MiniCPM-V-2 (2.8B)", 62.59, (57.64, 81.04, 97.23), (82.29, 85.23, 92.78)),
    PaperRow("Phi-3-vision (4.2B)", 56.94, (49.62, 69.26, 92.04), (77.78, 85.61, 81.49)),
    PaperRow("Yi-VL-6B", 57.64, (84.64, 94.44, 93.77), (74.19, 78.05, 80.76)),
    PaperRow("Qwen-VL-Chat (7B)", 59.05, (80.53, 89.33, 97.92), (77.03, 79.88, 78.00)),
    PaperRow("DeepSeek-VL-7B-Chat", 63.65, (31.50, 63.42, 95.17), (72.84, 79.66, 85.51)),
    PaperRow("LLaVA-NeXT-7B", 46.67, (54.05, 56.91, 88.57), (77.08, 76.22, 87.24)),
    PaperRow("MiniCPM-Llama3-V2.5 (8.5B)", 65.76, (44.39, 74.41, 92.01), (69.84, 79.93, 85.03)),
    PaperRow("GLM-4V-9B", 68.63, (17.58, 51.89, 64.97), (74.89, 84.39, 92.21)),
    PaperRow("CogVLM (19B)", 68.48, (18.86, 49.53, 84.16), (87.63, 93.38, 98.46)),
    PaperRow("InternVL-Chat-V1.5 (26B)", 75.09, (17.46, 50.55, 90.15), (61.94, 78.09, 87.61)),
    PaperRow("LLaVA-NeXT-34B", 65.17, (65.32, 89.04, 96.38), (87.47, 90.07, 95.63)),
    PaperRow("Yi-VL-34B", 59.48, (56.99, 78.87, 94.06), (74.72, 86.09, 92.68)),
)

# The paper's own "Average" row, kept separately: it is a summary, not a model.
PAPER_AVERAGE = PaperRow("Average", 62.43, (45.85, 68.92, 86.79), (73.56, 80.77, 87.68))
