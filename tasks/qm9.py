"""QM9: 11 quantum-chemical properties of ~130k small organic molecules, one regression task each.

The multi-task benchmark of Nash-MTL (Navon et al., ICML 2022), FAMO (Liu et al., NeurIPS 2023)
and LibMTL, as Nash-MTL's code (``experiments/quantum_chemistry`` in AvivNavon/nash-mtl) sets
it up, which this task follows:

- Data: PyTorch Geometric's QM9 (130,831 molecules after PyG drops the 3,054 uncharacterized
  ones), atom features (11: atom type one-hot, atomic number, aromatic, sp/sp2/sp3, number of
  hydrogens), bonds (one-hot of 4 types), 3D positions, 19 targets of which the 11 of the papers
  are used: mu, alpha, HOMO, LUMO, <R2>, ZPVE and the atomization energies U0, U, H, G (PyG
  columns 12-15, as DimeNet), and c_v (PyG columns 0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11).
- Graphs: complete graphs with the bond one-hot and the interatomic distance as edge features
  (PyG's ``Complete()`` and ``Distance(norm=False)``), see :mod:`mtlbench.datasets.graphs`.
- Split: Nash-MTL shuffles the dataset with torch's generator right after seeding it (seed 42,
  its default) and building its network, then takes 10,000 test, 10,000 validation and the rest
  (110,831) for training. :func:`nash_permutation` replays those draws (the same modules built in
  the same order), and the split is fixed for every seed here (Nash-MTL re-draws it per seed).
  A source with fewer than 30,000 molecules (a subset) keeps a tenth each for test and validation.
- Targets standardised, by the option ``standardize``, with the training split's mean and std
  (``train``, the default) or with those of the whole data set (``all``: Nash-MTL and LibMTL,
  whose ``train_dataset.data.y`` is PyG's storage of every molecule, experiments/
  quantum_chemistry/trainer.py lines 93-96; PyG keeps float32, the statistics here are float64,
  std with n − 1 as torch's); the loss is each target's MSE on the standardised values; the
  metric is each target's MAE in the original units, energies in meV as the papers print them
  (PyG stores eV): HOMO, LUMO, ZPVE, U0, U, H, G.
- Protocol: Adam 1e-3, batch 120, 300 epochs, learning rate x0.7 when the validation score has
  not improved for 5 epochs (down to 1e-5), the test metrics of the best validation epoch. The
  validation score here is the mean over targets of MAE / (training std): Nash-MTL's is the Δm
  against its hard-coded published single-task MAEs; both are a scale-free mean of relative MAEs.
- Δm: flat over the 11 MAEs (lower is better), against this suite's own single-task runs.

Two sources, chosen by the task option ``source`` (its own store each; results record the
option, so runs on the two never mix):

- ``qm9pack`` (the default): the whole data set from the ``qm9pack`` wheel, which installs
  offline from PyPI (``pip install 'mtlbench[qm9]'``), read by :mod:`mtlbench.datasets.molecules`
  (bonds perceived from the coordinates with RDKit; what may differ from PyG's processed file is
  listed there). ``mtlbench prepare qm9`` finds the installed wheel; ``--source FOLDER`` reads
  qm9pack's ``qm9_part{1,2,3}.csv`` from another folder.
- ``pyg``: the files people have from PyTorch Geometric (``mtlbench prepare qm9 --source ROOT
  --option source=pyg``): PyG's processed copy (``ROOT/processed/data_v3.pt``), PyG's
  pre-processed raw file (``ROOT/raw/qm9_v3.pt``, what PyG downloads when RDKit is missing), or
  the raw QM9 files (``gdb9.sdf``, ``gdb9.sdf.csv``, ``uncharacterized.txt`` under ``ROOT/raw/``,
  which PyG converts with RDKit).

Nothing is downloaded. QM9: Ramakrishnan, Dral, Rupp & von Lilienfeld, Scientific Data 2014
(CC BY 4.0).
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.api import MetricSpec, Protocol, Task
from mtlbench.core.errors import DataError
from mtlbench.datasets.graphs import GraphSplit, offsets
from mtlbench.datasets.molecules import QM9PACK_PARTS, qm9pack_folder, read_qm9pack
from mtlbench.datasets.splits import build_store_for, content_hash, open_store

TARGET_COLUMNS = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)  # PyG's y columns, Nash-MTL's target_idx
TASKS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "u0", "u", "h", "g", "cv")
UNITS = {"mu": "D", "alpha": "bohr³", "homo": "meV", "lumo": "meV", "r2": "bohr²", "zpve": "meV",
         "u0": "meV", "u": "meV", "h": "meV", "g": "meV", "cv": "cal/(mol K)"}  # fmt: skip
# The targets by what they describe, for reading Δm per group (scripts/qm9_groups.py; a reporting
# view only, no run depends on it): the frontier-orbital energies; the electron density's moments
# and response (dipole, polarizability, spatial extent); the thermochemistry of the harmonic
# vibrational analysis (zero-point energy, the atomization energies U0, U, H, G and the heat
# capacity).
TARGET_GROUPS = {
    "orbital": ("homo", "lumo"),
    "density": ("mu", "alpha", "r2"),
    "thermo": ("zpve", "u0", "u", "h", "g", "cv"),
}
REPORT_GROUPS = {**TARGET_GROUPS, "all": TASKS}  # the groups and all 11 targets (flat Δm), as the scripts report them
TO_REPORTED = {t: 1000.0 if UNITS[t] == "meV" else 1.0 for t in TASKS}  # PyG stores eV
SPLIT_SEED = 42
HELD_OUT = 10_000
RAW_SDF = ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt")
SOURCES = ("qm9pack", "pyg")
GRAPHS = ("complete", "bonds")
STANDARDIZE = ("train", "all")  # whose mean and std standardise the targets


def nash_permutation(n: int, seed: int = SPLIT_SEED) -> Tensor:
    """The order Nash-MTL's QM9 trainer shuffles the dataset in: seed Python, NumPy and torch,
    build its network (the same modules in the same order: their parameter draws come first),
    then ``torch.randperm`` (PyG's ``dataset.shuffle()``). The global generators are restored."""
    from mtlbench.backbones.mpnn import MPNN

    state_py, state_np = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        MPNN(in_chans=11, dim=64)
        for _ in TASKS:
            nn.Linear(64, 1)
        perm = torch.randperm(n)
    random.setstate(state_py)
    np.random.set_state(state_np)
    return perm


def split_indices(n: int) -> dict[str, np.ndarray]:
    held = HELD_OUT if n >= 3 * HELD_OUT else max(1, n // 10)
    perm = nash_permutation(n).numpy()
    return {"test": perm[:held], "val": perm[held : 2 * held], "train": perm[2 * held :]}


# ---------------------------------------------------------------- reading the sources


def _molecules_from_dicts(items: Sequence[Mapping[str, Any]], where: Path) -> list[dict[str, np.ndarray]]:
    out: list[dict[str, np.ndarray]] = []
    for i, d in enumerate(items):
        try:
            x, pos, ei, ea, y = (np.asarray(d[k]) for k in ("x", "pos", "edge_index", "edge_attr", "y"))
        except KeyError as e:
            raise DataError(
                f"{where}: molecule {i} has no {e.args[0]!r}; expected PyG's QM9 fields x, pos, edge_index, edge_attr, y"
            ) from None
        if x.ndim != 2 or x.shape[1] != 11 or pos.shape != (x.shape[0], 3) or ei.shape[0] != 2 or ea.shape != (ei.shape[1], 4):
            raise DataError(
                f"{where}: molecule {i} is not in PyG's QM9 layout (x {x.shape}, pos {pos.shape}, edge_index {ei.shape}, "
                f"edge_attr {ea.shape}; expected x (atoms, 11), pos (atoms, 3), edge_index (2, E), edge_attr (E, 4))"
            )
        out.append({"x": x.astype(np.float32), "pos": pos.astype(np.float32), "bonds": ei.T.astype(np.int64),
                    "bond_attr": ea.astype(np.float32), "y": y.reshape(-1).astype(np.float64)})  # fmt: skip
    return out


def _read_processed(path: Path) -> list[dict[str, np.ndarray]]:
    """PyG's ``processed/data_v3.pt`` (an InMemoryDataset: one collated Data and its slices)."""
    from torch_geometric.data import Data
    from torch_geometric.io import fs

    try:
        saved = fs.torch_load(str(path))
    except Exception as e:
        raise DataError(f"{path}: cannot be read as PyG's processed QM9 ({type(e).__name__}: {e})") from None
    data, slices = saved[0], saved[1]
    if isinstance(data, dict):
        data = Data.from_dict(data)
    n = len(slices["x"]) - 1
    items = []
    for i in range(n):
        item = {}
        for key in ("x", "pos", "edge_index", "edge_attr", "y"):
            lo, hi = int(slices[key][i]), int(slices[key][i + 1])
            value = getattr(data, key)
            item[key] = value[:, lo:hi] if key == "edge_index" else value[lo:hi]
        items.append(item)
    return _molecules_from_dicts(items, path)


def _read_raw(root: Path) -> list[dict[str, np.ndarray]]:
    """The raw QM9 files, converted by PyG (needs RDKit), in a scratch copy: nothing is written
    into the source folder."""
    try:
        import rdkit  # noqa: F401
    except ImportError:
        raise DataError(
            f"{root}: the raw QM9 files need RDKit to be converted (pip install rdkit), or pass PyG's processed "
            "copy (a folder with processed/data_v3.pt) or its pre-processed raw/qm9_v3.pt"
        ) from None
    from torch_geometric.datasets import QM9

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "raw").mkdir()
        for name in RAW_SDF:
            (Path(tmp) / "raw" / name).symlink_to(root / name)
        dataset = QM9(tmp)
        return _molecules_from_dicts([dataset[i] for i in range(len(dataset))], root)


def read_source(source: Path) -> tuple[list[dict[str, np.ndarray]], list[Path]]:
    """The molecules of a QM9 source folder and the files they came from."""
    for path in (source / "processed" / "data_v3.pt", source / "data_v3.pt"):
        if path.is_file():
            return _read_processed(path), [path]
    for path in (source / "raw" / "qm9_v3.pt", source / "qm9_v3.pt"):
        if path.is_file():
            try:
                items = torch.load(path, weights_only=False)
            except Exception as e:
                raise DataError(f"{path}: cannot be read as PyG's pre-processed QM9 ({type(e).__name__}: {e})") from None
            if not isinstance(items, list):
                raise DataError(f"{path}: expected a list of molecules (PyG's qm9_v3.pt), got {type(items).__name__}")
            return _molecules_from_dicts(items, path), [path]
    for folder in (source / "raw", source):
        if all((folder / name).is_file() for name in RAW_SDF):
            return _read_raw(folder), [folder / name for name in RAW_SDF]
    raise DataError(
        f"{source}: no QM9 files found. Expected PyG's processed copy (processed/data_v3.pt), its pre-processed raw "
        f"file (raw/qm9_v3.pt) or the raw files {', '.join(RAW_SDF)} (under raw/); then run "
        f"`mtlbench prepare qm9 --source {source} --option source=pyg`"
    )


# ---------------------------------------------------------------- metrics


class TargetMAE:
    """MAE per target in the reported units, from standardised predictions."""

    def __init__(self, tasks: Sequence[str], std: Mapping[str, float]) -> None:
        self.tasks, self.std = list(tasks), dict(std)
        self.sums = {t: 0.0 for t in self.tasks}
        self.n = 0

    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            err = (outputs[t].reshape(-1).double() - targets[t].double()).abs().sum()
            self.sums[t] += float(err) * self.std[t] * TO_REPORTED[t]
        self.n += int(targets[self.tasks[0]].shape[0])

    def compute(self) -> dict[str, float]:
        return {f"{t}.mae": self.sums[t] / max(self.n, 1) for t in self.tasks}


def _column(table: Any, name: str, dtype: Any, width: int, where: str) -> np.ndarray:
    """A list column of the store's Arrow table as a (rows, ``width``) array of ``dtype``."""
    values = np.asarray(table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=dtype)
    if values.size % width:
        raise DataError(f"{where}: column {name!r} does not hold rows of {width}; prepare the store again")
    return values.reshape(-1, width)


class QM9(Task):
    name = "qm9"
    version = "1"
    description = "QM9: 11 molecular property regressions (MAE, energies in meV) on molecular graphs"
    citation = (
        "Ramakrishnan, Dral, Rupp & von Lilienfeld, Quantum chemistry structures and properties of 134 kilo "
        "molecules, Scientific Data 2014; protocol of Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022"
    )
    tasks = TASKS
    metrics = tuple(MetricSpec(f"{t}.mae", t, False, f"{t} MAE ({UNITS[t]})") for t in TASKS)
    main_metrics = {t: f"{t}.mae" for t in TASKS}
    protocol = Protocol(
        epochs=300, batch_size=120, optimizer="adam", lr=1e-3, scheduler="plateau", step_size=5, gamma=0.7,
        selection="best_val", eval_batch_size=512,
    )  # fmt: skip
    input_shape = (11, 1, 1)  # 11 atom features (graphs have no image shape)
    representation = "graph"

    def __init__(self, source: str = "qm9pack", graph: str = "complete", standardize: str = "train") -> None:
        """``source``: where the store comes from: ``qm9pack`` (the wheel's CSV files, bonds
        perceived with RDKit) or ``pyg`` (PyTorch Geometric's QM9 files). ``graph``: the edges
        the MPNN passes messages on: ``complete`` (every pair of atoms, the papers' setting) or
        ``bonds`` (the bonded pairs only: ~8x fewer edges, ~10x cheaper; but three rounds then see
        three bonds away and the extensive targets underfit: docs/qm9.md). ``standardize``: whose
        mean and std standardise the targets: ``train`` (the training split) or ``all`` (every
        molecule of the store, as Nash-MTL's and LibMTL's code)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
        if standardize not in STANDARDIZE:
            raise ValueError(
                f"standardize must be one of {', '.join(STANDARDIZE)} (train: the training split's mean and std; "
                f"all: the whole data set's, as Nash-MTL and LibMTL), got {standardize!r}"
            )
        super().__init__(source=source, graph=graph, standardize=standardize)
        self._std: dict[str, float] | None = None

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"v{self.version}-{self.options['source']}"

    # -- data
    def prepare_installed(self, data_dir: Path) -> Path:
        if self.options["source"] != "qm9pack":
            raise DataError("qm9 with source=pyg: pass --source ROOT, a PyG QM9 root (processed/ or raw/)")
        return self._prepare_qm9pack(None, data_dir)

    def prepare(self, source: Path, data_dir: Path) -> Path:
        if self.options["source"] == "qm9pack":
            return self._prepare_qm9pack(source, data_dir)
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: no such folder; pass a PyG QM9 root (processed/ or raw/) or the raw QM9 files' folder")
        molecules, files = read_source(source)
        if len(molecules) < 10:
            raise DataError(f"{source}: only {len(molecules)} molecules; QM9 has 130,831 (a subset needs at least 10)")

        def build(out: Path) -> None:
            self._save(out, molecules, {"source": [str(f.resolve()) for f in files]})

        return build_store_for(self.store_path(data_dir), content_hash(files, source), build)

    def _prepare_qm9pack(self, source: Path | None, data_dir: Path) -> Path:
        folder = Path(source) if source is not None else qm9pack_folder()
        if folder is None:
            raise DataError(
                "qm9: the qm9pack wheel is not installed. Install it (pip install 'mtlbench[qm9]', which also brings RDKit) "
                "and run `mtlbench prepare qm9` again, or pass --source FOLDER holding qm9pack's "
                f"{', '.join(QM9PACK_PARTS)}; for PyG's QM9 files use --option source=pyg"
            )
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; pass the folder of qm9pack's {', '.join(QM9PACK_PARTS)}")
        try:
            import rdkit  # noqa: F401
        except ImportError:
            raise DataError("qm9: bonds are perceived with RDKit, which is not installed: pip install 'mtlbench[qm9]'") from None
        files = [folder / p for p in QM9PACK_PARTS if (folder / p).is_file()]

        def build(out: Path) -> None:
            molecules = read_qm9pack(folder)
            if len(molecules) < 10:
                raise DataError(f"{folder}: only {len(molecules)} molecules; QM9 has 130,831 (a subset needs at least 10)")
            unresolved = [int(m["index"]) for m in molecules if not m["orders_resolved"]]
            if unresolved:
                print(
                    f"qm9: {len(unresolved)} molecule(s) have no bond orders that fit a neutral molecule; their perceived "
                    f"bonds are kept as single bonds (gdb indices {', '.join(map(str, unresolved[:20]))}"
                    f"{', ...' if len(unresolved) > 20 else ''})"
                )
            counts = np.sum([m["bond_attr"].sum(axis=0) for m in molecules], axis=0) / 2
            meta = {"source": "qm9pack", "files": [str(f.resolve()) for f in files], "bond_orders_unresolved": unresolved,
                    "bonds": dict(zip(("single", "double", "triple", "aromatic"), map(int, counts)))}  # fmt: skip
            self._save(out, molecules, meta)

        return build_store_for(self.store_path(data_dir), content_hash(files, folder), build)

    def _save(self, out: Path, molecules: list[dict[str, np.ndarray]], meta: dict[str, Any]) -> None:
        import datasets

        index = split_indices(len(molecules))
        y = np.stack([m["y"][list(TARGET_COLUMNS)] for m in molecules])
        train_y = y[index["train"]]
        mean, std = train_y.mean(axis=0), train_y.std(axis=0, ddof=1)
        features = datasets.Features({
            "x": datasets.Sequence(datasets.Value("float32")), "pos": datasets.Sequence(datasets.Value("float32")),
            "bonds": datasets.Sequence(datasets.Value("int32")), "bond_attr": datasets.Sequence(datasets.Value("float32")),
            "n_atoms": datasets.Value("int32"), "n_bonds": datasets.Value("int32"),
            "y": datasets.Sequence(datasets.Value("float64")), "index": datasets.Value("int64"),
        })  # fmt: skip
        dd = {}
        for split, rows in index.items():
            ms = [molecules[i] for i in rows]
            dd[split] = datasets.Dataset.from_dict(
                {
                    "x": [m["x"].ravel() for m in ms], "pos": [m["pos"].ravel() for m in ms],
                    "bonds": [m["bonds"].ravel().astype(np.int32) for m in ms], "bond_attr": [m["bond_attr"].ravel() for m in ms],
                    "n_atoms": [m["x"].shape[0] for m in ms], "n_bonds": [m["bonds"].shape[0] for m in ms],
                    "y": [y[i] for i in rows], "index": rows.tolist(),
                },
                features=features,
            )  # fmt: skip
        datasets.DatasetDict(dd).save_to_disk(str(out))
        (out / "meta.json").write_text(json.dumps({
            **meta, "task": self.name, "version": self.version, "molecules": {k: len(v) for k, v in index.items()},
            "targets": list(TASKS), "target_columns": list(TARGET_COLUMNS), "split_seed": SPLIT_SEED,
            "mean": dict(zip(TASKS, mean.tolist())), "std": dict(zip(TASKS, std.tolist())),
        }, indent=1))  # fmt: skip

    def load(self, data_dir: Path) -> dict[str, GraphSplit]:  # type: ignore[override]
        path = self.store_path(data_dir)
        dd = open_store(path, *self._prepare_hint())
        meta = json.loads((path / "meta.json").read_text())
        mean = np.array([meta["mean"][t] for t in TASKS])
        std = np.array([meta["std"][t] for t in TASKS])
        if self.options.get("standardize", "train") == "all":
            y = np.concatenate([self._targets(dd[split], f"{path} [{split}]") for split in ("train", "val", "test")])
            mean, std = y.mean(axis=0), y.std(axis=0, ddof=1)
        complete = self.options["graph"] == "complete"
        splits = {split: self._split(dd[split], mean, std, f"{path} [{split}]", complete) for split in ("train", "val", "test")}
        for s in splits.values():
            s.meta["std"] = dict(zip(TASKS, std.tolist()))
        self.attach(splits)
        return splits

    def _prepare_hint(self) -> tuple[str, str]:
        if self.options["source"] == "qm9pack":
            return "mtlbench prepare qm9", "from the qm9pack wheel: pip install 'mtlbench[qm9]'"
        return self.prepare_command("ROOT"), "ROOT: PyG's QM9 folder (processed/ or raw/) or the raw QM9 files"

    def attach(self, splits: Mapping[str, Any]) -> None:
        """The targets' training std (the metric's unit) from the splits this instance uses."""
        self._std = dict(splits["train"].meta["std"])

    @staticmethod
    def _targets(ds: Any, where: str) -> np.ndarray:
        """(molecules, 11) float64 targets of one split of the store, in PyG's units."""
        return _column(ds.data.table, "y", np.float64, len(TASKS), where)

    @staticmethod
    def _split(ds: Any, mean: np.ndarray, std: np.ndarray, where: str, complete: bool) -> GraphSplit:
        table = ds.data.table

        def flat(name: str, dtype: Any, width: int) -> Tensor:
            return torch.from_numpy(_column(table, name, dtype, width, where).copy())

        n_atoms = np.asarray(table.column("n_atoms").to_numpy())
        n_bonds = np.asarray(table.column("n_bonds").to_numpy())
        y = (flat("y", np.float64, len(TASKS)).numpy() - mean) / std
        return GraphSplit(
            flat("x", np.float32, 11), flat("pos", np.float32, 3), offsets(n_atoms), flat("bonds", np.int64, 2),
            flat("bond_attr", np.float32, 4), offsets(n_bonds),
            {t: torch.from_numpy(y[:, k].astype(np.float32)) for k, t in enumerate(TASKS)}, complete,
        )  # fmt: skip

    # -- model parts
    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, 1)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.reshape(-1), target)

    def evaluator(self, tasks: Sequence[str]) -> TargetMAE:
        if self._std is None:
            raise RuntimeError("qm9: attach() the loaded splits before evaluating (the targets' scales come from the store)")
        return TargetMAE(tasks, self._std)

    def selection_score(self, metrics: Mapping[str, float], tasks: Sequence[str]) -> float:
        """Minus the mean over targets of MAE / training std (scale-free)."""
        assert self._std is not None
        return -float(np.mean([metrics[f"{t}.mae"] / (self._std[t] * TO_REPORTED[t]) for t in tasks]))
