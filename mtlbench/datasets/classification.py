"""Classification metrics as evaluators: accumulated over a whole split, then computed.

- :class:`Accuracy` — multi-class accuracy per sub-task (``<task>.acc``, higher is better): the
  share of samples whose arg-max class is the target.
- :class:`AttributeErrorF1` — binary attributes such as CelebA's (two-way heads, class 1 = the
  attribute is present): the error rate ``<task>.err`` (1 − accuracy, lower is better; Sener &
  Koltun, NeurIPS 2018, and Recon, ICLR 2023, report it averaged over the 40 attributes) and the
  F1 score of the positive class ``<task>.f1`` (2·TP / (2·TP + FP + FN), higher is better; 0
  when the split has neither positives nor positive predictions, as scikit-learn's
  ``f1_score`` returns).

Both accept batches that carry only some sub-tasks (a multi-input task's evaluation batches
hold one sub-task each) and count every sub-task's samples separately. Values are fractions.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor


class Accuracy:
    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.correct = {t: 0 for t in self.tasks}
        self.total = {t: 0 for t in self.tasks}

    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            if t in targets:
                self.correct[t] += int((outputs[t].argmax(dim=1) == targets[t]).sum())
                self.total[t] += int(targets[t].shape[0])

    def compute(self) -> dict[str, float]:
        return {f"{t}.acc": self.correct[t] / max(self.total[t], 1) for t in self.tasks}


class AttributeErrorF1:
    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.counts = {t: [0, 0, 0, 0] for t in self.tasks}  # tp, fp, fn, n

    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            if t not in targets:
                continue
            pred, true = outputs[t].argmax(dim=1) == 1, targets[t] == 1
            c = self.counts[t]
            c[0] += int((pred & true).sum())
            c[1] += int((pred & ~true).sum())
            c[2] += int((~pred & true).sum())
            c[3] += int(true.shape[0])

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.tasks:
            tp, fp, fn, n = self.counts[t]
            out[f"{t}.err"] = (fp + fn) / max(n, 1)
            out[f"{t}.f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        return out
