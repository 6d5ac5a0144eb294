"""CityScapes: 7-class semantic segmentation and depth on street scenes (128x256).

Data: MTAN's preprocessed copy (Liu, Johns & Davison, CVPR 2019), the one CAGrad, Nash-MTL,
FAMO and Recon use: ``train/`` (2,975 images) and ``val/`` (500 images, the split the papers
report on, our ``test``), each with ``image/``, ``label_7/``, ``depth/`` holding ``<i>.npy``
arrays (images 128x256x3 float, 7-class labels 128x256 with -1 = ignore, depth 128x256x1 from
disparity, 0 = no measurement). The copy's ``label_19/`` is not used. Convert it once with
``mtlbench prepare cityscapes --source PATH``; nothing is downloaded. CityScapes is distributed
under its own terms of use (registration at cityscapes-dataset.com).

Protocol (the task's defaults, the Nash-MTL/FAMO CityScapes setting): SegNet-MTAN, the
augmentation of :mod:`mtlbench.datasets.dense` (random scale-crop in {1, 1.2, 1.5}, flip), Adam lr 1e-4
halved at epoch 100, 200 epochs, batch 8, test metrics averaged over the last 10 epochs.
Validation: 10% of the training images (seed 0, see ``DenseTask``).

Sources: Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR
2016. Metrics and losses match MTAN's and FAMO's code (``experiments/cityscapes`` in
Cranial-XIX/FAMO), with the exceptions listed in mtlbench.datasets.dense.
"""

from __future__ import annotations

from mtlbench.datasets.dense import DEPTH_METRICS, SEGMENTATION_METRICS, DenseTask, mtan_protocol
from mtlbench.datasets.mtan_npy import DEPTH, IMAGE, Layout, Modality


class CityScapes(DenseTask):
    name = "cityscapes"
    version = "1"
    description = "CityScapes (MTAN's 128x256 copy): 7-class segmentation, depth"
    citation = (
        "Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, CVPR 2016; "
        "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019 (preprocessed copy, protocol)"
    )
    tasks = ("segmentation", "depth")
    metrics = SEGMENTATION_METRICS + DEPTH_METRICS
    protocol = mtan_protocol(batch_size=8, eval_batch_size=16)
    input_shape = (3, 128, 256)
    layout = Layout(
        "cityscapes", (IMAGE, Modality("label_7", "segmentation", 0, "7-class labels (-1 = ignore)"), DEPTH), n_classes=7
    )
    # The single-task values of the Nash-MTL / FAMO CityScapes code's flat Δm (its BASE), used
    # only as per-metric scales for best_val selection.
    selection_reference = {
        "segmentation.miou": 0.7401,
        "segmentation.pixacc": 0.9316,
        "depth.abs_err": 0.0125,
        "depth.rel_err": 27.77,
    }
