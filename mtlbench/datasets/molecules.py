"""QM9 from the ``qm9pack`` wheel (R. Ramakrishnan, QM9's first author; MIT): the whole data set
offline, turned into the molecules PyTorch Geometric's ``QM9`` dataset builds.

qm9pack's ``data/qm9_part{1,2,3}.csv`` hold the 130,831 characterized molecules (the 3,054 that
PyG drops are absent: gdb indices 58, 61, 80, ...), one row each, in gdb-index order: elements,
XYZ coordinates (Å), and the properties in QM9's own units (Hartree, D, bohr³, bohr², GHz,
cal/(mol K)). There is no bond table. What this module makes of a row, and where it can differ
from PyG's processed file (``torch_geometric/datasets/qm9.py``, which reads DeepChem's
``gdb9.sdf`` + ``gdb9.sdf.csv`` with RDKit and ``sanitize=False``):

- **Targets**, PyG's 19 columns in PyG's units: mu (D), alpha (bohr³), HOMO, LUMO, gap (eV),
  <R²> (bohr²), ZPVE, U0, U, H, G (eV), c_v, the atomization energies U0, U, H, G (eV) and the
  rotational constants A, B, C (GHz). Hartree -> eV by PyG's ``HAR2EV``. The atomization
  energies are the total energy minus QM9's per-element reference energies
  (:data:`ATOM_REFERENCE`, QM9's ``atomref`` table, the same numbers as PyG's ``atomrefs``),
  converted with ``HAR2EV``; PyG converts DeepChem's kcal/mol column with ``KCALMOL2EV``, which
  agrees to ~1e-6 relative (below float32's resolution of PyG's stored values).
- **Bonds** are perceived from the coordinates with RDKit's ``rdDetermineBonds`` (Hückel
  connectivity, then bond orders for a neutral molecule, Kekulé form): single, double, triple.
  gdb9.sdf's bond table came from its authors' conversion, which may place double bonds of a
  conjugated ring differently, and for the ~3% of molecules whose geometry relaxed away from
  their GDB SMILES either file may follow the geometry or the SMILES. Aromatic bonds never
  occur here (nor, in Kekulé SDF records, in PyG's file).
- **Atom features**, PyG's 11 by PyG's rules: element one-hot (H, C, N, O, F), atomic number,
  aromatic, sp, sp2, sp3, number of bonded hydrogens. PyG reads the SDF with
  ``sanitize=False``, so RDKit sets neither aromaticity nor hybridization: the features come
  from the file as written. This module applies the same rules to the same kind of record (the
  perceived molecule written as an MDL mol block and read back with ``sanitize=False``):
  aromatic, sp, sp2 and sp3 are 0 for every atom, as in PyG's reading of a Kekulé file.
- **Positions** rounded to 1e-4 Å, the precision of an SDF (V2000) record.
- **Order**: gdb index, PyG's order; so Nash-MTL's split replay applies unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mtlbench.core.errors import DataError

QM9PACK_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
HAR2EV = 27.211386246  # PyG's Hartree -> eV (torch_geometric/datasets/qm9.py)
ELEMENTS = ("H", "C", "N", "O", "F")  # PyG's type one-hot order
# QM9's per-element reference energies (Hartree; Ramakrishnan et al. 2014, atomref table):
# U0, U (298.15 K), H (298.15 K), G (298.15 K)
ATOM_REFERENCE = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")  # PyG's edge_attr one-hot order
# the qm9pack columns read, and PyG's 19 target columns built from them
COLUMNS = (
    "Index", "N_atoms", "Elements", "XYZ_Ang", "RotA_GHz", "RotB_GHz", "RotC_GHz", "Dipole_debye",
    "Polarizability_bohr3", "HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au", "R2_bohr2", "ZPVE_au",
    "InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)  # fmt: skip
PROPERTIES = COLUMNS[4:]


def qm9pack_folder() -> Path | None:
    """The ``data`` folder of the installed qm9pack wheel, or None. (Found through the package's
    metadata: importing qm9pack itself needs ``pkg_resources``, which current setuptools lack.)"""
    from importlib import metadata

    try:
        dist = metadata.distribution("qm9pack")
    except metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file("qm9pack/data")))
    return folder if all((folder / p).is_file() for p in QM9PACK_PARTS) else None


@dataclass
class Row:
    """One molecule as qm9pack stores it, checked."""

    index: int
    elements: list[str]
    xyz: np.ndarray  # (atoms, 3) Å
    properties: dict[str, float]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace("[", " ").replace("]", " ").split(",") if v.strip()]


def _row(values: list[str], header: dict[str, int], where: str) -> Row:
    def get(name: str) -> str:
        return values[header[name]]

    try:
        index, n_atoms = int(get("Index")), int(get("N_atoms"))
        elements = [e.strip().strip("'\"") for e in get("Elements").strip().strip("[]").split(",")]
        xyz = np.asarray(_floats(get("XYZ_Ang")), dtype=np.float64)
        properties = {name: float(get(name)) for name in PROPERTIES}
    except ValueError as e:
        raise DataError(f"{where}: malformed value ({e}); the qm9pack file is damaged: reinstall qm9pack") from None
    unknown = sorted(set(elements) - set(ELEMENTS))
    if unknown:
        raise DataError(f"{where}: unknown element(s) {unknown}; QM9 has only {', '.join(ELEMENTS)}")
    if len(elements) != n_atoms or xyz.size != 3 * n_atoms:
        raise DataError(
            f"{where}: N_atoms is {n_atoms} but the row has {len(elements)} elements and {xyz.size} coordinates "
            "(expected 3 per atom); the file is truncated or damaged: reinstall qm9pack"
        )
    bad = [k for k, v in properties.items() if not math.isfinite(v)]
    if bad or not np.isfinite(xyz).all():
        raise DataError(f"{where}: non-finite value in {bad or ['XYZ_Ang']}")
    return Row(index, elements, xyz.reshape(n_atoms, 3), properties)


def read_rows(folder: Path) -> Iterator[Row]:
    """The molecules of qm9pack's CSV files in ``folder``, in file order. Every damaged line is a
    DataError naming the file and the line."""
    csv.field_size_limit(1 << 26)
    previous = 0
    for name in QM9PACK_PARTS:
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing; qm9pack's data folder holds {', '.join(QM9PACK_PARTS)}")
    for name in QM9PACK_PARTS:
        path = folder / name
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            names = next(reader, None)
            if names is None:
                raise DataError(f"{path}: empty file; reinstall qm9pack")
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise DataError(f"{path}:1: not qm9pack's header (no column {', '.join(missing)})")
            header = {c: names.index(c) for c in COLUMNS}
            for values in reader:
                where = f"{path}:{reader.line_num}"
                if len(values) != len(names):
                    raise DataError(
                        f"{where}: {len(values)} fields where the header has {len(names)}; "
                        "the file is truncated or damaged: reinstall qm9pack"
                    )
                row = _row(values, header, where)
                if row.index <= previous:
                    raise DataError(f"{where}: gdb index {row.index} after {previous}; the rows must be in gdb order")
                previous = row.index
                yield row


def targets(row: Row) -> np.ndarray:
    """PyG's 19 targets of one molecule, in PyG's units (see the module docstring)."""
    p = row.properties
    totals = [p["InternalEnergy_0K_au"], p["InternalEnergy_298K_au"], p["Enthalphy_298K_au"], p["GibbsFreeEnergy_298K_au"]]
    reference = [sum(ATOM_REFERENCE[e][k] for e in row.elements) for k in range(4)]
    return np.array(
        [p["Dipole_debye"], p["Polarizability_bohr3"], p["HOMO_au"] * HAR2EV, p["LUMO_au"] * HAR2EV,
         p["HOMO_LUMO_gap_au"] * HAR2EV, p["R2_bohr2"], p["ZPVE_au"] * HAR2EV, *(t * HAR2EV for t in totals),
         p["Heatcapacity_Cv_cal_mol_K"], *((t - r) * HAR2EV for t, r in zip(totals, reference)),
         p["RotA_GHz"], p["RotB_GHz"], p["RotC_GHz"]],
        dtype=np.float64,
    )  # fmt: skip


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def graph(elements: Sequence[str], xyz: np.ndarray, where: str = "molecule") -> dict[str, Any]:
    """PyG's QM9 fields of one molecule from its elements and coordinates (Å): ``x`` (atoms, 11),
    ``pos`` (atoms, 3), ``bonds`` (2 x bonds, 2; both directions, sorted as PyG sorts them),
    ``bond_attr`` (2 x bonds, 4); ``orders_resolved`` False where no bond orders fit a neutral
    molecule with the perceived connectivity (its bonds are then all single)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Chem.rdchem import HybridizationType

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    pos = np.round(np.asarray(xyz, dtype=np.float64), 4)
    block = f"{len(elements)}\n\n" + "".join(f"{e} {x:.4f} {y:.4f} {z:.4f}\n" for e, (x, y, z) in zip(elements, pos))
    mol = Chem.MolFromXYZBlock(block)
    if mol is None:
        raise DataError(f"{where}: RDKit cannot read its coordinates")
    try:
        with _quiet_stderr():  # the Hückel code prints a line per O-H/N-H bond under 0.97 Å
            rdDetermineBonds.DetermineConnectivity(mol, useHueckel=True, charge=0)
    except Exception as e:  # RDKit raises plain ValueError / RuntimeError subclasses
        raise DataError(f"{where}: no connectivity from its coordinates ({type(e).__name__}: {e})") from None
    connected = Chem.Mol(mol)
    resolved = True
    try:
        rdDetermineBonds.DetermineBondOrders(mol, charge=0)
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:
        # no bond orders fit a neutral molecule with this connectivity: keep the bonds, all single
        # (the caller counts and reports these molecules)
        mol, resolved = connected, False
    # the record PyG reads: an MDL mol block, parsed without sanitization
    record = Chem.MolFromMolBlock(Chem.MolToMolBlock(mol, kekulize=True), removeHs=False, sanitize=False)
    n = record.GetNumAtoms()
    atoms = list(record.GetAtoms())
    z = np.array([a.GetAtomicNum() for a in atoms])
    x = np.zeros((n, 11), dtype=np.float32)
    x[np.arange(n), [ELEMENTS.index(a.GetSymbol()) for a in atoms]] = 1
    x[:, 5] = z
    x[:, 6] = [a.GetIsAromatic() for a in atoms]
    hybrid = [a.GetHybridization() for a in atoms]
    for col, hybridization in ((7, HybridizationType.SP), (8, HybridizationType.SP2), (9, HybridizationType.SP3)):
        x[:, col] = [h == hybridization for h in hybrid]
    pairs: list[tuple[int, int]] = []
    kinds: list[int] = []
    for bond in record.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        kind = BOND_TYPES.index(str(bond.GetBondType()))
        pairs += [(i, j), (j, i)]
        kinds += [kind, kind]
    bonds = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.argsort(bonds[:, 0] * n + bonds[:, 1], kind="stable")
    bonds, kind_arr = bonds[order], np.array(kinds, dtype=np.int64)[order]
    bond_attr = np.zeros((len(bonds), len(BOND_TYPES)), dtype=np.float32)
    bond_attr[np.arange(len(bonds)), kind_arr] = 1
    # PyG: number of hydrogens among each atom's bonded neighbours
    np.add.at(x[:, 10], bonds[:, 1], (z[bonds[:, 0]] == 1).astype(np.float32))
    return {"x": x, "pos": pos.astype(np.float32), "bonds": bonds, "bond_attr": bond_attr, "orders_resolved": resolved}


def _molecule(row: Row) -> dict[str, Any]:
    return {**graph(row.elements, row.xyz, f"gdb index {row.index}"), "y": targets(row), "index": row.index}


def read_qm9pack(folder: Path, workers: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Every molecule of qm9pack's files in ``folder`` as PyG's QM9 fields
    plus ``index`` (the gdb index), in gdb order. Bond perception runs in ``workers`` processes
    (default: the CPUs this process may use)."""
    from tqdm import tqdm

    rows = list(read_rows(folder))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    bar = tqdm(total=len(rows), desc="qm9: bonds and features", unit="mol", disable=not progress, mininterval=2)
    out: list[dict[str, Any]] = []
    if workers <= 1 or len(rows) < 2000:
        for row in rows:
            out.append(_molecule(row))
            bar.update()
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for mol in pool.imap(_molecule, rows, chunksize=500):
                out.append(mol)
                bar.update()
    bar.close()
    return out
