"""Record what LibMTL's SDMGrad and MoDo write into the gradients on fixed inputs
(tests/data/libmtl_multisample_outputs.json; see tests/data/README.md).

Usage: python tests/data/make_libmtl_multisample_records.py LIBMTL_CHECKOUT > tests/data/libmtl_multisample_outputs.json

Both methods draw three batches per step. The construction: one shared parameter vector theta
(P,), one scalar head parameter per task; sample s's loss of task t is
G[s, t] . theta + a[s, t] * head_t, so the per-task shared gradients of sample s are the rows of
G[s] and the head of task t receives a[s, t] from sample s. The weighting object is driven as
LibMTL's Trainer drives it (``backward`` on the (3, T) losses after ``zero_grad``), for two
consecutive steps on the same object (both methods keep their task weights across steps).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch


def load(root: Path, name: str) -> type:
    """Import LibMTL/weighting/{name}.py without the package's __init__ (its trainer imports)."""
    pkg = types.ModuleType("LibMTL")
    pkg.__path__ = [str(root / "LibMTL")]
    sub = types.ModuleType("LibMTL.weighting")
    sub.__path__ = [str(root / "LibMTL" / "weighting")]
    sys.modules.setdefault("LibMTL", pkg)
    sys.modules.setdefault("LibMTL.weighting", sub)
    for mod in ("abstract_weighting", name):
        spec = importlib.util.spec_from_file_location(f"LibMTL.weighting.{mod}", root / "LibMTL" / "weighting" / f"{mod}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[f"LibMTL.weighting.{name}"], name)


def driver(base: type, t: int, p: int) -> torch.nn.Module:
    class Driven(base):  # what LibMTL's model class adds to a weighting (AbsWeighting's contract)
        def __init__(self) -> None:
            super().__init__()
            self.task_num, self.device, self.rep_grad = t, torch.device("cpu"), False
            self.theta = torch.nn.Parameter(torch.zeros(p, dtype=torch.float64))
            self.heads = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros((), dtype=torch.float64)) for _ in range(t)])
            self.decoders = {f"t{i}": torch.nn.ParameterList([self.heads[i]]) for i in range(t)}
            self.init_param()

        def get_share_params(self):
            return [self.theta]

        def zero_grad_share_params(self):
            self.theta.grad = None if self.theta.grad is None else torch.zeros_like(self.theta)

    return Driven()


CASES = {
    "rand_T2_P8": (2, 8),
    "rand_T3_P8": (3, 8),
    "rand_T4_P20": (4, 20),
    "rand_T6_P5": (6, 5),  # T > P
}
PARAMS = {"SDMGrad": [{"SDMGrad_lamda": 0.3, "SDMGrad_niter": 20}, {"SDMGrad_lamda": 1.0, "SDMGrad_niter": 5}],
          "MoDo": [{"MoDo_gamma": 0.001, "MoDo_rho": 0.1}, {"MoDo_gamma": 0.5, "MoDo_rho": 0.0}]}


def inputs(case: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    t, p = CASES[case]
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((2, 3, t, p))  # two steps x three samples
    if seed == 1:
        g[:, :, 1] = 2 * g[:, :, 0]  # rank-deficient: task 1's gradient is twice task 0's
    if seed == 2:
        g[:, :, -1] = 0.0  # a zero task gradient
    a = rng.uniform(0.5, 2.0, (2, 3, t))
    return g, a


def main() -> None:
    root = Path(sys.argv[1])
    if not hasattr(np, "alltrue"):
        np.alltrue = np.all  # removed in NumPy 2; SDMGrad's projection calls it on an exact simplex point
    records = []
    for name in ("SDMGrad", "MoDo"):
        base = load(root, name)
        for params in PARAMS[name]:
            for case in CASES:
                for seed in range(3):
                    g, a = inputs(case, seed)
                    t, p = CASES[case]
                    obj = driver(base, t, p)
                    steps = []
                    for step in range(2):
                        for prm in [obj.theta, *obj.heads]:
                            prm.grad = None
                        gs, as_ = torch.tensor(g[step]), torch.tensor(a[step])
                        losses = torch.stack([gs[s] @ obj.theta + as_[s] * torch.stack(list(obj.heads)) for s in range(3)])
                        obj.backward(losses, **params)
                        state = obj.w if name == "SDMGrad" else obj.lambd
                        steps.append({"update": obj.theta.grad.tolist(),
                                      "heads": [float(h.grad) for h in obj.heads],
                                      "weights": state.detach().tolist()})
                    records.append({"method": name, "params": params, "case": case, "seed": seed, "T": t, "P": p,
                                    "G": g.tolist(), "a": a.tolist(), "steps": steps})
    json.dump({"source": "median-research-group/LibMTL", "records": records}, sys.stdout)


if __name__ == "__main__":
    main()
