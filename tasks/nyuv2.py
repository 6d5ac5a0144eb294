"""NYUv2: 13-class semantic segmentation, depth and surface normals on indoor scenes (288x384).

Data: MTAN's preprocessed copy (Liu, Johns & Davison, CVPR 2019), the one CAGrad, Nash-MTL,
FAMO and Recon use: ``train/`` (795 images) and ``val/`` (654 images, the split the papers
report on, our ``test``), each with ``image/``, ``label/``, ``depth/``, ``normal/`` holding
``<i>.npy`` arrays (images 288x384x3 float, labels 288x384 with -1 = ignore, depth 288x384x1
with 0 = no measurement, normals 288x384x3). Convert it once with
``mtlbench prepare nyuv2 --source PATH``; nothing is downloaded.

Protocol (the task's defaults, Nash-MTL's NYUv2 setting as in CAGrad and FAMO): SegNet-MTAN,
the augmentation of :mod:`mtlbench.datasets.dense` (random scale-crop in {1, 1.2, 1.5}, flip negating
normal-x), Adam lr 1e-4 halved at epoch 100, 200 epochs, batch 2, test metrics averaged over
the last 10 epochs. Validation: 10% of the training images (seed 0, see ``DenseTask``).

Sources: Silberman, Hoiem, Kohli & Fergus, "Indoor Segmentation and Support Inference from
RGBD Images", ECCV 2012 (NYU Depth v2); 13 classes as in Couprie et al., ICLR 2013; normals as
in Eigen & Fergus, ICCV 2015. Metrics and losses match MTAN's and Nash-MTL's code
(``experiments/nyuv2`` in AvivNavon/nash-mtl), with the exceptions listed in mtlbench.datasets.dense.
"""

from __future__ import annotations

from mtlbench.datasets.dense import DEPTH_METRICS, NORMAL_METRICS, SEGMENTATION_METRICS, DenseTask, mtan_protocol
from mtlbench.datasets.mtan_npy import DEPTH, IMAGE, Layout, Modality


class NYUv2(DenseTask):
    name = "nyuv2"
    version = "1"
    description = "NYUv2 (MTAN's 288x384 copy): 13-class segmentation, depth, surface normals"
    citation = (
        "Silberman et al., Indoor Segmentation and Support Inference from RGBD Images, ECCV 2012; "
        "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019 (preprocessed copy, protocol)"
    )
    tasks = ("segmentation", "depth", "normal")
    metrics = SEGMENTATION_METRICS + DEPTH_METRICS + NORMAL_METRICS
    protocol = mtan_protocol(batch_size=2, eval_batch_size=8)
    input_shape = (3, 288, 384)
    layout = Layout(
        "nyuv2",
        (
            IMAGE,
            Modality("label", "segmentation", 0, "13-class labels (-1 = ignore)"),
            DEPTH,
            Modality("normal", "normal", 3, "surface normals"),
        ),
        n_classes=13,
    )
    # The single-task values of the CAGrad / Nash-MTL code's flat Δm (its BASE), used only as
    # per-metric scales for best_val selection.
    selection_reference = {
        "segmentation.miou": 0.3830,
        "segmentation.pixacc": 0.6376,
        "depth.abs_err": 0.6754,
        "depth.rel_err": 0.2780,
        "normal.mean": 25.01,
        "normal.median": 19.21,
        "normal.within_11.25": 0.3014,
        "normal.within_22.5": 0.5720,
        "normal.within_30": 0.6915,
    }
