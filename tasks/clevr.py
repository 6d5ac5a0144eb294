"""CLEVR count and distance: two classification tasks on the same rendered scenes, as VTAB defines
them (Zhai et al., 2019) and the sparse-training paper (Zhang et al., arXiv 2411.18615) trains
them jointly with a ViT-B/16: ``count`` (the number of objects, 3 to 10: 8 classes) and
``distance`` (the depth of the closest object, ``pixel_coords[2]``, in VTAB's 6 bins with edges
8, 8.5, 9, 9.5 and 10).

Data: the official CLEVR v1.0 release (Johnson et al., CVPR 2017): ``images/{train,val}/*.png``
and ``scenes/CLEVR_{train,val}_scenes.json``, in ROOT or ``ROOT/CLEVR_v1.0``
(``mtlbench prepare clevr --source ROOT``). Splits (VTAB): train/validation from the 70,000
training scenes — VTAB-1k by default (``train_size`` 1000: 800 / 200), ``train_size = 0`` for
VTAB's full 90% / 10% rule — and the 15,000 official validation scenes as the test split.
Images are resized once to ``image_size`` (224 for the ViT-B/16; PIL bilinear) and stored as
uint8, normalised per batch with the ImageNet mean and std. Metric: accuracy per task. The
15,000 test images take about 2.3 GB at 224x224.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.api import MetricSpec
from mtlbench.core.errors import DataError
from mtlbench.datasets.images import decode_resized
from mtlbench.datasets.splits import build_store_for, content_hash
from mtlbench.datasets.vtab import VTABPairTask, vtab_rows

DISTANCE_EDGES = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0)  # VTAB's closest-object-distance bins (upper bound 100)
MIN_OBJECTS, MAX_OBJECTS = 3, 10


def labels(scene: dict[str, Any], where: str) -> tuple[int, int]:
    """(count class, distance class) of one scene, VTAB's definitions."""
    objects = scene.get("objects")
    if not isinstance(objects, list) or not MIN_OBJECTS <= len(objects) <= MAX_OBJECTS:
        n = len(objects) if isinstance(objects, list) else None
        raise DataError(f"{where}: {n} objects; CLEVR scenes hold {MIN_OBJECTS} to {MAX_OBJECTS}")
    depth = min(float(o["pixel_coords"][2]) for o in objects)
    distance = max(i for i, edge in enumerate(DISTANCE_EDGES) if depth >= edge)
    return len(objects) - MIN_OBJECTS, distance


def find_root(source: Path) -> Path:
    for root in (source, source / "CLEVR_v1.0"):
        if (root / "scenes").is_dir() and (root / "images").is_dir():
            return root
    raise DataError(
        f"{source}: no CLEVR release found (expected images/ and scenes/ in it or in CLEVR_v1.0/); then run "
        f"`mtlbench prepare clevr --source {source}`"
    )


def read_scenes(root: Path, split: str) -> list[dict[str, Any]]:
    path = root / "scenes" / f"CLEVR_{split}_scenes.json"
    if not path.is_file():
        raise DataError(f"{path}: scene file not found; the CLEVR v1.0 release has scenes/CLEVR_{{train,val}}_scenes.json")
    try:
        scenes = json.loads(path.read_text())["scenes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a CLEVR scene file ({type(e).__name__}: {e})") from None
    return sorted(scenes, key=lambda s: s["image_index"])


class CLEVR(VTABPairTask):
    name = "clevr"
    version = "1"
    description = "CLEVR (VTAB): object count (8 classes) and closest-object distance (6 bins) from a rendered scene"
    citation = (
        "Johnson et al., CLEVR: A Diagnostic Dataset for Compositional Language and Elementary Visual Reasoning, "
        "CVPR 2017; Zhai et al., The Visual Task Adaptation Benchmark, 2019; the task pair of Zhang et al., "
        "arXiv 2411.18615 (sparse training)"
    )
    tasks = ("count", "distance")
    metrics = (
        MetricSpec("count.acc", "count", True, "count accuracy"),
        MetricSpec("distance.acc", "distance", True, "distance accuracy"),
    )
    main_metrics = {"count": "count.acc", "distance": "distance.acc"}
    n_classes = {"count": MAX_OBJECTS - MIN_OBJECTS + 1, "distance": len(DISTANCE_EDGES)}

    contents = "ROOT holding CLEVR v1.0's images/ and scenes/"

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"v{self.version}-{self.image_size}px-train{self.train_size}"

    def prepare(self, source: Path, data_dir: Path) -> Path:
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: no such folder; pass the CLEVR v1.0 folder (holding images/ and scenes/)")
        root = find_root(source)
        scenes = {split: read_scenes(root, split) for split in ("train", "val")}
        try:
            rows = vtab_rows(len(scenes["train"]), self.train_size)
        except ValueError as e:
            raise DataError(f"{root}: {e}") from None
        picked = {"train": [scenes["train"][i] for i in rows["train"]], "val": [scenes["train"][i] for i in rows["val"]],
                  "test": scenes["val"]}  # fmt: skip
        folder = {"train": "train", "val": "train", "test": "val"}
        paths = {s: [root / "images" / folder[s] / sc["image_filename"] for sc in picked[s]] for s in picked}
        targets = {s: [labels(sc, f"{root}/scenes [{sc.get('image_filename')}]") for sc in picked[s]] for s in picked}
        files = [root / "scenes" / f"CLEVR_{s}_scenes.json" for s in ("train", "val")] + [p for ps in paths.values() for p in ps]
        content = content_hash(files, root) + f"-{self.train_size}-{self.image_size}"
        fix = f"the CLEVR v1.0 images/ folder must hold every scene's image; then run `{self.prepare_command('ROOT')}`"

        def build(out: Path) -> None:
            import datasets

            features = datasets.Features({"image": datasets.Array3D(self.input_shape, "uint8"), "count": datasets.Value("int64"),
                                          "distance": datasets.Value("int64"), "file": datasets.Value("string")})  # fmt: skip
            dd = {}
            for split in picked:
                images = decode_resized(paths[split], self.image_size, fix)
                count, distance = (np.array(v, dtype=np.int64) for v in zip(*targets[split]))
                dd[split] = datasets.Dataset.from_dict(
                    {"image": images, "count": count, "distance": distance, "file": [p.name for p in paths[split]]},
                    features=features,
                )
            datasets.DatasetDict(dd).save_to_disk(str(out))
            (out / "meta.json").write_text(json.dumps({
                "task": self.name, "version": self.version, "source": str(root.resolve()), "image_size": self.image_size,
                "train_size": self.train_size, "images": {k: len(v) for k, v in picked.items()},
            }, indent=1))  # fmt: skip

        return build_store_for(self.store_path(data_dir), content, build)
