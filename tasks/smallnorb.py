"""SmallNORB azimuth and elevation: two classification tasks on the same images, as VTAB defines
them (Zhai et al., 2019) and the sparse-training paper (Zhang et al., arXiv 2411.18615) trains
them jointly with a ViT-B/16: ``azimuth`` (18 classes: the camera azimuth 0, 20, ..., 340 degrees)
and ``elevation`` (9 classes: 30 to 70 degrees in steps of 5).

Data: the official NYU release (LeCun, Huang & Bottou, CVPR 2004;
cs.nyu.edu/~ylclab/data/norb-v1.0-small), six binary "mat" files: the
``smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat`` and
``smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat`` files, gunzipped, in ROOT
(``mtlbench prepare smallnorb --source ROOT``). Each ``dat`` holds 24,300 stereo pairs of 96x96
grey images; VTAB uses the first image of each pair; the ``info`` file's columns are instance,
elevation (0-8: the class) and azimuth (0, 2, ..., 34: the class is the value / 2), lighting.

Splits (VTAB): the training pairs for train/validation — VTAB-1k by default (``train_size``
1000: 800 / 200), ``train_size = 0`` for VTAB's full 90% / 10% rule — and the second half of the
official test pairs as the test split (VTAB's ``test[50%:]``). Images are stored at 96x96 and
resized to ``image_size`` (224 for the ViT-B/16) per batch, grey repeated to RGB, ImageNet mean
and std. Metric: accuracy per task.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtlbench.api import MetricSpec
from mtlbench.core.errors import DataError
from mtlbench.datasets.splits import build_store_for, content_hash
from mtlbench.datasets.vtab import VTABPairTask, vtab_rows

PREFIX = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training", "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}
MAGIC = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32}  # the format's magic numbers: byte matrix, int matrix


def read_mat(path: Path) -> np.ndarray:
    """One file of NYU's binary matrix format: int32 magic, int32 ndim, max(3, ndim) int32 dims, data."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; the six smallnorb-*.mat files (gunzipped) go in one folder")
    raw = path.read_bytes()
    header = np.frombuffer(raw[:8], dtype="<i4")
    if len(header) < 2 or int(header[0]) not in MAGIC:
        raise DataError(
            f"{path}: not a SmallNORB matrix file (magic {hex(int(header[0])) if len(header) else None}); gunzip it first"
        )
    ndim = int(header[1])
    dims = np.frombuffer(raw[8 : 8 + 4 * max(3, ndim)], dtype="<i4")[:ndim].tolist()
    dtype = MAGIC[int(header[0])]
    offset = 8 + 4 * max(3, ndim)
    count = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)
    if data.size != count:
        raise DataError(f"{path}: truncated ({data.size} of {count} values)")
    return data.reshape(dims)


class SmallNORB(VTABPairTask):
    name = "smallnorb"
    version = "1"
    description = "SmallNORB (VTAB): camera azimuth (18 classes) and elevation (9 classes) from one 96x96 grey image"
    citation = (
        "LeCun, Huang & Bottou, Learning Methods for Generic Object Recognition with Invariance to Pose and Lighting, "
        "CVPR 2004; Zhai et al., The Visual Task Adaptation Benchmark, 2019; the task pair of Zhang et al., "
        "arXiv 2411.18615 (sparse training)"
    )
    tasks = ("azimuth", "elevation")
    metrics = (
        MetricSpec("azimuth.acc", "azimuth", True, "azimuth accuracy"),
        MetricSpec("elevation.acc", "elevation", True, "elevation accuracy"),
    )
    main_metrics = {"azimuth": "azimuth.acc", "elevation": "elevation.acc"}
    n_classes = {"azimuth": 18, "elevation": 9}

    contents = "ROOT holding the six smallnorb-*.mat files"

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"v{self.version}-train{self.train_size}"

    def prepare(self, source: Path, data_dir: Path) -> Path:
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: no such folder; pass the folder holding the six smallnorb-*.mat files")
        files = [source / f"{PREFIX[s]}-{kind}.mat" for s in ("train", "test") for kind in ("dat", "info")]
        data = {}
        for split in ("train", "test"):
            dat, info = read_mat(source / f"{PREFIX[split]}-dat.mat"), read_mat(source / f"{PREFIX[split]}-info.mat")
            if dat.ndim != 4 or dat.shape[1] != 2 or info.shape != (dat.shape[0], 4):
                raise DataError(
                    f"{source / (PREFIX[split] + '-dat.mat')}: shapes {dat.shape} / info {info.shape}; "
                    "expected (N, 2, 96, 96) / (N, 4)"
                )
            azimuth = info[:, 2] // 2
            if azimuth.min() < 0 or azimuth.max() > 17 or info[:, 1].min() < 0 or info[:, 1].max() > 8:
                raise DataError(f"{source / (PREFIX[split] + '-info.mat')}: elevation or azimuth out of range")
            data[split] = (dat[:, 0], azimuth.astype(np.int64), info[:, 1].astype(np.int64))
        try:
            rows = vtab_rows(len(data["train"][0]), self.train_size)
        except ValueError as e:
            raise DataError(f"{source}: {e}") from None
        n_test = len(data["test"][0])
        rows["test"] = np.arange(n_test // 2, n_test)
        content = content_hash(files, source) + f"-{self.train_size}"

        def build(out: Path) -> None:
            import datasets

            h, w = data["train"][0].shape[1:]
            features = datasets.Features({"image": datasets.Array2D((h, w), "uint8"), "azimuth": datasets.Value("int64"),
                                          "elevation": datasets.Value("int64"), "row": datasets.Value("int64")})  # fmt: skip
            dd = {}
            for split, index in rows.items():
                images, az, el = data["test" if split == "test" else "train"]
                dd[split] = datasets.Dataset.from_dict(
                    {"image": images[index], "azimuth": az[index], "elevation": el[index], "row": index}, features=features
                )
            datasets.DatasetDict(dd).save_to_disk(str(out))
            (out / "meta.json").write_text(json.dumps({
                "task": self.name, "version": self.version, "source": str(source.resolve()), "train_size": self.train_size,
                "images": {k: len(v) for k, v in rows.items()},
            }, indent=1))  # fmt: skip

        return build_store_for(self.store_path(data_dir), content, build)
