"""Record what GO4Align's reference weighting returns on fixed loss sequences
(tests/data/go4align_outputs.json; see tests/data/README.md).

Usage: PYTHONPATH=GO4ALIGN_CHECKOUT:KMEANS_PYTORCH_SITE python tests/data/make_go4align_records.py > tests/data/go4align_outputs.json

GO4Align is a loss weighting: what it returns depends on the task losses only (not on the
gradients), so a record is a sequence of loss vectors (float32, as training produces them) fed
to one ``GO4ALIGN`` object, step after step, with the weights it applies (``kmeans_weight``, the
gradient weights of its loss), the loss value and its ``adv_probs`` after each step.

One shim: the released ``methods/cluster_methods.py`` calls ``kmeans`` (kmeans_pytorch) but its
import is commented out, so any ``num_groups >= 2`` raises NameError there; the import is
restored (``kmeans_pytorch`` 0.3, the version on PyPI). kmeans_pytorch starts Lloyd's algorithm
from ``np.random.choice``: NumPy's global generator is seeded with 0 before every call. Where a
cluster empties (tied weights: two equal points drawn as starting centres) its centre becomes NaN
and kmeans_pytorch loops for ever (its stop test ``shift ** 2 < tol`` is never true for NaN);
such a step is cut after 5 s and recorded as ``"error": "does not terminate"`` (the sequence
stops there).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys

import numpy as np
import torch

import methods.cluster_methods as cm  # the reference checkout's module

try:
    from kmeans_pytorch import kmeans
except ImportError:  # pragma: no cover - a generation-time requirement
    sys.exit("kmeans_pytorch is needed for num_groups >= 2: pip install kmeans-pytorch==0.3")

cm.kmeans = kmeans  # the import the released file has commented out


class NoTermination(Exception):
    pass


def _alarm(signum, frame):
    raise NoTermination


signal.signal(signal.SIGALRM, _alarm)


def sequences() -> list[tuple[str, list[list[float]]]]:
    """(case name, steps x T losses): random log-normal losses of mixed scales, ties, extreme scales."""
    out = []
    for t, steps, seed in ((2, 4, 0), (3, 4, 1), (5, 5, 2), (11, 3, 3), (40, 3, 4)):
        rng = np.random.default_rng(seed)
        scales = np.exp(rng.normal(0.0, 1.5, t))
        losses = scales * np.exp(rng.normal(0.0, 0.3, (steps, t)))
        out.append((f"lognormal_T{t}", losses.tolist()))
    out.append(("ties_T4", [[1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 0.5, 3.0], [2.0, 2.0, 2.0, 2.0]]))
    out.append(("extreme_T3", [[1e-6, 1.0, 1e3], [2e-6, 0.5, 2e3], [1e-5, 0.1, 5e2]]))
    return out


def main() -> None:
    records = []
    for case, losses in sequences():
        t = len(losses[0])
        for groups in (1, 2, 3):
            if groups > t:
                continue
            for step_size in (1e-4, 0.5):
                method = cm.GO4ALIGN(n_tasks=t, device=torch.device("cpu"), num_groups=groups, robust_step_size=step_size)
                steps = []
                for row in losses:
                    np.random.seed(0)
                    x = torch.tensor(row, dtype=torch.float32, requires_grad=True)
                    signal.alarm(5)
                    try:
                        with contextlib.redirect_stdout(sys.stderr):  # kmeans_pytorch prints its progress
                            loss, extra = method.get_weighted_loss(x)
                    except NoTermination:
                        steps.append({"losses": row, "error": "does not terminate"})
                        break
                    finally:
                        signal.alarm(0)
                    steps.append({
                        "losses": row,
                        "weights": extra["weights"].detach().double().tolist(),
                        "loss": float(loss.detach()),
                        "adv_probs": method.adv_probs.double().tolist(),
                    })  # fmt: skip
                records.append({"case": case, "T": t, "num_groups": groups, "robust_step_size": step_size, "steps": steps})
    json.dump(records, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
