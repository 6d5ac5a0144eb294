"""Record what SAMO's reference code does over a few training steps
(tests/data/samo_outputs.json; see tests/data/README.md).

Usage: PYTHONPATH=SAMO_CHECKOUT python tests/data/make_samo_records.py > tests/data/samo_outputs.json

The reference (OptMN-Lab/SAMO) writes its algorithm out in the training loop of each
``experiments/<dataset>/trainer_samo.py``; this script runs two of those loops themselves, with
their model and dataset classes replaced by the small ones below and the data loader made
sequential (batch j is samples j*B .. (j+1)*B - 1), and records every step until the step's
base method is called:

- ``celeba``: the CelebA trainer (40 binary tasks, BCE losses; the zeroth-order estimate rescaled
  per parameter tensor) on a trunk of 26 shared parameters (T > P: the 40 task gradients are
  rank-deficient), rho 0.001, beta 0.5, zo_eps 0.01 (its run script's settings), 3 steps;
- ``nyuv2``: the NYUv2 trainer (segmentation, depth, normals with its own masked losses; the
  estimate used as it is), rho 0.003, beta 0.1 and the adaptive (ASAM) form, 3 steps;

each with the reference's ``lswithsamo`` as the base (its update does not matter here: what is
recorded is the perturbed gradients it receives) and Adam. Per step: the model's state before
the step, the batch, the seed of each task's random direction, and each task's perturbed
gradients (shared parameters, and its head) as the base received them. The model classes and
loss functions are importable without the reference (tests/test_samo.py uses them).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

N_TASKS_CELEBA = 40
CELEBA = dict(rho=0.001, beta=0.5, zo_eps=0.01, adaptive=False, steps=3, batch=8, seed=0)
NYUV2 = dict(rho=0.003, beta=0.1, zo_eps=0.01, adaptive=True, steps=3, batch=4, seed=1)
NYU_CLASSES = 3


class CelebaNet(nn.Module):
    """The CelebA trainer's interface (shared_base, out_layer, sigmoid outputs) at 26 shared parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.shared_base = nn.Sequential(
            nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Tanh(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2, 4, bias=False), nn.BatchNorm1d(4), nn.Tanh(),
        )  # fmt: skip
        self.out_layer = nn.ModuleList([nn.Linear(4, 1) for _ in range(N_TASKS_CELEBA)])

    def forward(self, x, task=None, return_representation=False):
        h = self.shared_base(x)
        y = [torch.sigmoid(layer(h)) for layer in self.out_layer]
        return (y, h) if return_representation else y

    def shared_parameters(self):
        return (p for p in self.shared_base.parameters())

    def task_specific_parameters(self):
        return [p for layer in self.out_layer for p in layer.parameters()]

    def last_shared_parameters(self):
        return []


class NyuNet(nn.Module):
    """The NYUv2 trainer's interface: heads named ``pred_task<k>`` (log-probabilities, depth,
    unit normals), everything else shared."""

    def __init__(self) -> None:
        super().__init__()
        self.segnet = types.SimpleNamespace(class_nb=NYU_CLASSES)
        self.encoder = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1))
        self.pred_task1 = nn.Conv2d(4, NYU_CLASSES, 1)
        self.pred_task2 = nn.Conv2d(4, 1, 1)
        self.pred_task3 = nn.Conv2d(4, 3, 1)

    def forward(self, x, return_representation=False):
        h = self.encoder(x)
        out = [F.log_softmax(self.pred_task1(h), dim=1), self.pred_task2(h), F.normalize(self.pred_task3(h), dim=1)]
        return (out, h) if return_representation else out

    def shared_parameters(self):
        return [p for n, p in self.named_parameters() if "pred" not in n]

    def task_specific_parameters(self):
        return [p for n, p in self.named_parameters() if "pred" in n]

    def last_shared_parameters(self):
        return []


def bce(pred, y):
    return F.binary_cross_entropy(pred, y)


def nyu_loss(pred, target, task):
    """The NYUv2 trainer's ``calc_loss`` (task 0 semantic, 1 depth, 2 normal), written out."""
    if task == 0:
        return F.nll_loss(pred, target, ignore_index=-1)
    mask = (torch.sum(target, dim=1) != 0).float().unsqueeze(1)
    count = torch.nonzero(mask, as_tuple=False).size(0)
    if task == 1:
        return torch.sum(torch.abs(pred - target) * mask) / count
    return 1 - torch.sum((pred * target) * mask) / count


def celeba_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = (torch.rand(n, N_TASKS_CELEBA, generator=g) < 0.4).float()
    return x, y


def nyu_data(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 4, 4, generator=g)
    label = torch.randint(-1, NYU_CLASSES, (n, 4, 4), generator=g)
    hole = torch.rand(n, 1, 4, 4, generator=g) < 0.25  # pixels without depth or normal
    depth = (torch.rand(n, 1, 4, 4, generator=g) + 0.5).masked_fill(hole, 0.0)
    normal = F.normalize(torch.randn(n, 3, 4, 4, generator=g), dim=1).masked_fill(hole, 0.0)
    return x, label, depth, normal


def _tolist(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


class Stop(Exception):
    pass


def _stubs() -> None:
    for name in ("wandb", "ipdb", "cvxpy", "seaborn"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["wandb"].run = None  # type: ignore[attr-defined]


def _sequential_loader(dataset, batch_size, shuffle=False, num_workers=0, **kwargs):
    return torch.utils.data.dataloader.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def record(trainer, utils, run, steps: int) -> list[dict]:
    """Drive ``run()`` (the reference's main) and record ``steps`` steps: the state at each
    step's start (``enable_running_stats``), each task's seed (``GradEstimator``) and the
    perturbed gradients the base receives (``WeightMethods.backward``)."""
    out: list[dict] = []
    enable, perturb, base = trainer.enable_running_stats, utils.GradEstimator.perturb_parameters, trainer.WeightMethods

    def on_enable(model):
        out.append({"state": {k: _tolist(v) for k, v in model.state_dict().items()}, "seeds": []})
        enable(model)

    def on_perturb(self, random_seed, scaling_factor=1):
        if scaling_factor == -2:  # once per estimate
            out[-1]["seeds"].append(int(random_seed))
        perturb(self, random_seed, scaling_factor)

    class Recording(base):
        def backward(self, losses, **kwargs):
            grads = kwargs["shared_grads"]
            out[-1]["shared"] = [torch.cat([g.reshape(-1) for g in grads[t].values()]).double().tolist() for t in sorted(grads)]
            out[-1]["heads"] = [_tolist(p.grad) if p.grad is not None else None for p in kwargs["task_specific_parameters"]]
            if len(out) == steps:
                raise Stop
            return super().backward(losses, **kwargs)

    trainer.enable_running_stats, trainer.WeightMethods = on_enable, Recording
    utils.GradEstimator.perturb_parameters = on_perturb
    loader = torch.utils.data.DataLoader
    torch.utils.data.DataLoader = _sequential_loader
    try:
        run()
    except Stop:
        pass
    finally:
        torch.utils.data.DataLoader = loader
    return out


def celeba_case() -> dict:
    import experiments.celeba.trainer_samo as trainer
    import experiments.celeba.utils as utils
    from experiments.utils import common_parser, set_seed

    c = CELEBA
    x, y = celeba_data(c["batch"] * c["steps"], c["seed"])

    class Data(torch.utils.data.Dataset):
        def __init__(self, data_dir=None, split="train"):
            self.n = len(x) if split == "train" else 0

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return x[i], [y[i, t : t + 1] for t in range(N_TASKS_CELEBA)]

    trainer.Network, trainer.CelebaDataset = CelebaNet, Data
    args = common_parser.parse_args(["--method", "lswithsamo", "--seed", str(c["seed"]), "--n-epochs", "1"])
    args.rho, args.beta, args.zo_eps, args.adaptive = c["rho"], c["beta"], c["zo_eps"], c["adaptive"]
    set_seed(c["seed"])
    steps = record(trainer, utils, lambda: trainer.main("", 3e-4, c["batch"], args, torch.device("cpu")), c["steps"])
    return {"options": {k: c[k] for k in ("rho", "beta", "zo_eps", "adaptive")}, "zo_scale": "per_tensor", **c, "steps": steps}


def nyuv2_case() -> dict:
    import experiments.nyuv2.trainer_samo as trainer
    import experiments.nyuv2.utils as utils
    from experiments.utils import common_parser, set_seed

    c = NYUV2
    data = nyu_data(c["batch"] * c["steps"], c["seed"])

    class Data(torch.utils.data.Dataset):
        def __init__(self, root=None, train=True, augmentation=False):
            self.n = len(data[0]) if train else 0

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return tuple(d[i] for d in data)

    trainer.SegNet = trainer.SegNetMtan = NyuNet
    trainer.NYUv2 = Data
    args = common_parser.parse_args(["--method", "lswithsamo", "--seed", str(c["seed"]), "--n-epochs", "1", "--data-path", "."])
    args.rho, args.beta, args.zo_eps, args.adaptive = c["rho"], c["beta"], c["zo_eps"], c["adaptive"]
    args.model, args.apply_augmentation, args.batch_size, args.lr = "mtan", False, c["batch"], 1e-3
    set_seed(c["seed"])
    steps = record(trainer, utils, lambda: trainer.main(args, torch.device("cpu")), c["steps"])
    return {"options": {k: c[k] for k in ("rho", "beta", "zo_eps", "adaptive")}, "zo_scale": "raw", **c, "steps": steps}


def main() -> None:
    _stubs()
    torch.set_num_threads(1)
    commit = Path(sys.argv[1]).read_text().strip() if len(sys.argv) > 1 else "3b686c9"
    cases = {"celeba": celeba_case(), "nyuv2": nyuv2_case()}
    print(json.dumps({"reference": f"OptMN-Lab/SAMO@{commit}", "torch": torch.__version__, "cases": cases}))


if __name__ == "__main__":
    main()
