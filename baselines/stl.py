"""Single-task learning: one independent model per sub-task, same backbone, protocol and seed.

Its results are the baseline B of the suite's Δm. Each model is selected on its own task's
validation metric.
"""

from mtlbench.api import SingleTask


class STL(SingleTask):
    name = "stl"
    roles = frozenset({"baseline"})
    description = "one model per task (the Δm baseline)"
    citation = "Caruana, Multitask Learning, Machine Learning 28, 1997 (the single-task reference point)"
    reference = "LibMTL/nash-mtl STL baselines: the same backbone trained on one task"
