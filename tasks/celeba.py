"""CelebA: 40 binary face attributes, one classification task each (Liu, Luo, Wang & Tang, ICCV 2015).

As an MTL benchmark: Sener & Koltun (NeurIPS 2018, "Multi-Task Learning as Multi-Objective
Optimization"; their ``celeba_loader.py`` resizes the whole aligned 178x218 image to 64x64) and
Recon (Shi et al., ICLR 2023, Table 2 and Appendix B.5: ResNet18, average error over the 40
attributes, Δm from the per-attribute errors).

Data: ``mtlbench prepare celeba --source PATH`` reads the official files — ``img_align_celeba/``
(the aligned JPEGs), ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` — in the official
Google Drive layout (``Img/``, ``Anno/``, ``Eval/``), torchvision's (``celeba/``) or all in one
folder. Splits: the official partition (162,770 / 19,867 / 19,962 images); the training rows are
shuffled once with a fixed seed so ``max_train_samples`` takes a random subset. Each image is
resized whole to ``image_size`` x ``image_size`` (64 by default, as Sener & Koltun), stored as
uint8 and normalised per batch with the ImageNet mean and std (the presets start from
ImageNet-pretrained weights, as Recon does). The same data is on the HuggingFace hub as
``flwrlabs/celeba`` (config ``img_align+identity+attr``, splits train/valid/test, revision
``2d738f56e0e7f925ea36ae7c808ea925264aacec``); the hub cannot be reached from the build machines,
so ``prepare`` reads the official files.

Heads: one linear layer to two classes per attribute (Sener & Koltun's ``FaceAttributeDecoder``),
cross-entropy. Metrics per attribute (:class:`mtlbench.datasets.classification.AttributeErrorF1`):
``<attr>.err`` (error rate; Sener & Koltun and Recon report it, Recon averaged over the
attributes) and ``<attr>.f1`` (F1 of the attribute being present, which papers on imbalanced
attributes report). Δm on the leaderboard covers both metrics of every attribute; the
reproduction view compares Recon's rows on the error alone, as Recon computed them.

The default protocol is the design notes' CelebA setting (Adam 3e-4, 15 epochs, batch 256);
the ``recon-celeba`` suite in benchmark.toml holds Recon's own (Appendix B.5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.api import MappedColumn, MappedSplit, MetricSpec, Protocol, Task, arrow_columns
from mtlbench.core.errors import DataError
from mtlbench.datasets.classification import AttributeErrorF1
from mtlbench.datasets.images import IMAGENET_MEAN, IMAGENET_STD, Normalize, check_image_size, decode_resized
from mtlbench.datasets.splits import build_store_for, content_hash, open_store

ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
SPLITS = {"train": 0, "val": 1, "test": 2}  # list_eval_partition.txt codes
LAYOUTS = {  # where each file may be, relative to --source
    "list_attr_celeba.txt": ("", "Anno", "celeba"),
    "list_eval_partition.txt": ("", "Eval", "celeba"),
    "img_align_celeba": ("", "Img", "celeba", "img_align_celeba", "Img/img_align_celeba", "celeba/img_align_celeba"),
}
BUILD_SEED = 20_150_101
FIX = "re-download CelebA's Align&Cropped images and unzip img_align_celeba.zip, then run `mtlbench prepare celeba --source PATH`"


def locate(source: Path, name: str) -> Path:
    for folder in LAYOUTS[name]:
        path = source / folder / name
        if path.exists():
            return path
    places = ", ".join(str(Path(f) / name) for f in LAYOUTS[name])
    raise DataError(f"{source}: {name} not found (looked for {places}); {FIX}")


def read_table(path: Path, columns: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
    """A whitespace-separated annotation file: (file names, int8 values (N, columns - 1))."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, skiprows=skip, dtype=str, engine="c")
    except Exception as e:
        raise DataError(f"{path}: cannot be parsed ({type(e).__name__}: {e}); re-download it") from None
    if table.shape[1] != columns:
        raise DataError(
            f"{path}: rows of {table.shape[1]} fields, expected {columns} (a file name and {columns - 1} values); re-download it"
        )
    try:
        values = table.iloc[:, 1:].to_numpy().astype(np.int8)
    except ValueError as e:
        raise DataError(f"{path}: non-integer values ({e}); re-download it") from None
    return table.iloc[:, 0].to_numpy(dtype=str), values


def read_annotations(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """File names, 0/1 attributes (N, 40) and partition codes (N,), in the partition file's order."""
    attr_path, part_path = locate(source, "list_attr_celeba.txt"), locate(source, "list_eval_partition.txt")
    with open(attr_path) as f:
        head = [f.readline().split() for _ in range(2)]
    if len(head[0]) != 1 or not head[0][0].isdigit():
        raise DataError(f"{attr_path}: first line {' '.join(head[0])!r}, expected the image count (202599)")
    if tuple(head[1]) != ATTRIBUTES:
        raise DataError(
            f"{attr_path}: second line names {len(head[1])} attributes, expected CelebA's 40 ({', '.join(ATTRIBUTES[:3])}, ...)"
        )
    names, attrs = read_table(attr_path, 41, skip=2)
    if len(names) != int(head[0][0]):
        raise DataError(f"{attr_path}: {len(names)} image rows, header says {head[0][0]}; the file is truncated, re-download it")
    if not np.isin(attrs, (-1, 1)).all():
        raise DataError(f"{attr_path}: attribute values other than -1/1; re-download it")
    part_names, parts = read_table(part_path, 2, skip=0)
    if not np.isin(parts, tuple(SPLITS.values())).all():
        raise DataError(f"{part_path}: partition codes other than 0/1/2; re-download it")
    position = {n: i for i, n in enumerate(names)}
    missing = [n for n in part_names if n not in position]
    if missing:
        raise DataError(
            f"{part_path}: {len(missing)} images without attributes in {attr_path.name} (first: {missing[0]}); "
            "re-download both files"
        )
    rows = np.array([position[n] for n in part_names], dtype=np.int64)
    return part_names, (attrs[rows] > 0).astype(np.int8), parts[:, 0]


class CelebA(Task):
    name = "celeba"
    version = "1"
    description = "CelebA: 40 binary face attributes (official partition, images resized to 64x64)"
    citation = (
        "Liu, Luo, Wang & Tang, Deep Learning Face Attributes in the Wild, ICCV 2015; "
        "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018; "
        "Shi, Li, Zhang, Chen & Wu, Recon, ICLR 2023 (Table 2, Appendix B.5)"
    )
    tasks = ATTRIBUTES
    likelihoods = {a: "categorical" for a in ATTRIBUTES}  # two logits per attribute, cross-entropy
    metrics = tuple(
        m for a in ATTRIBUTES for m in (MetricSpec(f"{a}.err", a, False, f"{a} error"), MetricSpec(f"{a}.f1", a, True, f"{a} F1"))
    )
    main_metrics = {a: f"{a}.err" for a in ATTRIBUTES}
    protocol = Protocol(epochs=15, batch_size=256, optimizer="adam", lr=3e-4, selection="best_val")

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = check_image_size(self.name, image_size, 256)
        super().__init__(image_size=image_size)
        self.input_shape = (3, image_size, image_size)

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"v{self.version}-{self.image_size}px"

    def load(self, data_dir: Path) -> dict[str, MappedSplit]:
        path = self.store_path(data_dir)
        dd = open_store(
            path, self.prepare_command(), "PATH holding img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt"
        )
        normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        splits = {}
        for split in SPLITS:
            where = f"{path} [{split}]"
            image = arrow_columns(dd[split], ["image"], where)["image"]
            if image.row_shape != self.input_shape:
                raise DataError(
                    f"{where}: images of shape {image.row_shape}, expected {self.input_shape}; "
                    f"run `{self.prepare_command()}` again"
                )
            # 40 small label columns: held in memory (one chunk each), the images stay mapped
            attrs = np.asarray(dd[split].with_format("numpy", columns=["attributes"])[:]["attributes"], dtype=np.int64)
            targets = {a: MappedColumn([np.ascontiguousarray(attrs[:, k])]) for k, a in enumerate(ATTRIBUTES)}
            splits[split] = MappedSplit(image, targets, transform=normalize)
        return splits

    def prepare(self, source: Path, data_dir: Path) -> Path:
        """Build the store from the official CelebA files under ``source``."""
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: no such folder; pass the folder holding CelebA's img_align_celeba/ and annotation files")
        names, attrs, parts = read_annotations(source)
        image_dir = locate(source, "img_align_celeba")
        files = [image_dir / n for n in names]
        absent = [f for f in files if not f.is_file()]
        if absent:
            raise DataError(f"{absent[0]}: image file not found ({len(absent)} of {len(files)} listed images are missing); {FIX}")
        annotations = [locate(source, "list_attr_celeba.txt"), locate(source, "list_eval_partition.txt")]
        content = content_hash([*annotations, *files], source)

        def build(out: Path) -> None:
            import datasets

            features = datasets.Features(
                {
                    "image": datasets.Array3D(self.input_shape, "uint8"),
                    "attributes": datasets.Sequence(datasets.Value("int8"), length=len(ATTRIBUTES)),
                    "file": datasets.Value("string"),
                }
            )
            rng = np.random.default_rng(BUILD_SEED)
            dd, sizes = {}, {}
            for split, code in SPLITS.items():
                rows = np.flatnonzero(parts == code)
                if split == "train":
                    rows = rng.permutation(rows)
                images = decode_resized([files[i] for i in rows], self.image_size, FIX)
                dd[split] = datasets.Dataset.from_dict(
                    {"image": images, "attributes": attrs[rows], "file": names[rows].tolist()}, features=features
                )
                sizes[split] = int(rows.size)
            datasets.DatasetDict(dd).save_to_disk(str(out))
            (out / "meta.json").write_text(
                json.dumps(
                    {
                        "task": self.name,
                        "version": self.version,
                        "source": str(source.resolve()),
                        "image_size": self.image_size,
                        "images": sizes,
                        "build_seed": BUILD_SEED,
                    },
                    indent=1,
                )
            )

        return build_store_for(self.store_path(data_dir), content, build)

    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, 2)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def evaluator(self, tasks: Sequence[str]) -> AttributeErrorF1:
        return AttributeErrorF1(tasks)
