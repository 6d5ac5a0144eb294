"""Recon: reducing conflicting gradients from the root.

Paper: Shi, Ren, Wei, Zhao & Li (equal contrib. details in the paper), "Recon: Reducing
Conflicting Gradients from the Root for Multi-Task Learning", ICLR 2023
(reference code: github.com/moukamisama/Recon). The procedure as implemented here:

1. Search phase: train a fresh copy of the cell's shared model for I iterations (``search_steps``,
   or ``search_fraction`` of the cell's training steps; the paper uses the first 25%) with
   ``search_method`` (joint training, ``ew``, by default) and, every ``search_every`` steps, take
   each task's gradient w.r.t. every shared layer.
2. S-conflict score of a layer: the number of task pairs with per-layer cosine < S, summed over
   the search iterations. Layers are ranked by score (ties: network order).
3. The top-K layers (``k``), or the top layers that fit a parameter ``budget`` (a fraction of the
   shared parameters; ``budget_rule``), become task-specific: one copy per task, each
   re-initialised independently as Recon's code does (``init = "reinit"``, the default) or
   copied from the shared weights of the cell's freshly initialised model (``init = "copy"``).
4. The modified network is trained from scratch with the cell's method.

Paper settings: MultiFashion+MNIST ResNet18 S=-0.1 K=25; CityScapes SegNet S=0 K=39; NYUv2
MTAN S=-0.02 K=22; CelebA ResNet18 S=-0.05 K=25. The search depends only on the task, backbone,
protocol and search options, not on the cell's method or seed: it is computed once and cached
by its own hash (the paper's "search once" claim), then reused across methods and seeds.

Surgery. The model performs it: it declares the sub-networks whose layers may be branched
(``surgery_parts``) and builds its branched form (``branch_layers``); see
:mod:`mtlbench.plugin.branching` for how task streams are routed and copies initialised. A model
that declares no surgery parts gets a clear error.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import torch
from pydantic import ValidationError

from mtlbench.core.cell import config_hash
from mtlbench.core.errors import ConfigError
from mtlbench.core.result import Conflict, MitigationClaim
from mtlbench.plugin.branching import INIT_RULES, branchable_in
from mtlbench.plugin.mitigation import Mitigation, MitigationContext
from mtlbench.plugin.model import MultiTaskModel


def rank_layers(names: list[str], sizes: list[int], scores: list[int], branchable: set[str]) -> list[dict[str, Any]]:
    """Layers by S-conflict score, highest first (ties keep network order)."""
    order = sorted(range(len(names)), key=lambda i: (-scores[i], i))
    return [
        {"layer": names[i], "score": int(scores[i]), "params": int(sizes[i]), "branchable": names[i] in branchable} for i in order
    ]


BUDGET_RULES = {
    "prefix": "the longest run of top-ranked branchable layers that fits (the paper's top-K, with K set by the budget)",
    "greedy": "every ranked layer that still fits, skipping those that do not (fills the budget with lower-ranked layers)",
}


def select_layers(ranking: list[dict[str, Any]], k: int, budget: float, shared_params: int, rule: str = "greedy") -> list[str]:
    """Top-``k`` branchable layers, or (``budget`` > 0) ranked layers within ``budget`` x shared
    parameters by ``rule`` (:data:`BUDGET_RULES`)."""
    chosen: list[str] = []
    used = 0
    for row in ranking:
        if not row["branchable"]:
            continue
        if budget > 0:
            if used + row["params"] > budget * shared_params:
                if rule == "prefix":
                    break
                continue
        elif len(chosen) >= k:
            break
        chosen.append(row["layer"])
        used += row["params"]
    return chosen


class Recon(Mitigation):
    name = "recon"
    description = "turn the most conflicting shared layers task-specific, then retrain (Recon)"
    citation = "Shi et al., Recon: Reducing Conflicting Gradients from the Root for Multi-Task Learning, ICLR 2023"
    reference = "github.com/moukamisama/Recon (S-conflict scores over the search phase, top-K layers)"
    version = "3"  # 2: per-stream batch-norm statistics; 3: copies re-initialised as Recon's code, shared prefix once
    claims = (
        MitigationClaim(text="Recon reduces the occurrence of conflicting gradients", measure="p_ref"),
        MitigationClaim(text="Recon improves every method it is added to", measure="dm"),
    )
    report_tables = {"ranking": "Layers by S-conflict score over the search phase (the chosen ones are listed above)"}

    def __init__(
        self,
        s: float = -0.1,
        k: int = 25,
        budget: float = 0.0,
        search_fraction: float = 0.25,
        search_steps: int = 0,
        search_every: int = 1,
        search_method: str = "ew",
        search_seed: int = 0,
        budget_rule: str = "prefix",
        init: str = "reinit",
    ) -> None:
        if not -1.0 < s <= 0.0:
            raise ValueError(f"recon: s={s} must satisfy -1 < s <= 0")
        if k < 0 or not 0.0 <= budget < 1.0 or (k == 0 and budget == 0.0):
            raise ValueError(
                f"recon: give k >= 1 layers or a budget in (0, 1) (a fraction of shared parameters); got k={k}, budget={budget}"
            )
        if not 0.0 < search_fraction <= 1.0 or search_steps < 0 or search_every < 1:
            raise ValueError(
                "recon: search_fraction must be in (0, 1], search_steps >= 0 (0: use the fraction), search_every >= 1"
            )
        self.s, self.k, self.budget = float(s), int(k), float(budget)
        self.search_fraction, self.search_steps, self.search_every = float(search_fraction), int(search_steps), int(search_every)
        if budget_rule not in BUDGET_RULES:
            raise ValueError(f"recon: budget_rule={budget_rule!r}; valid: {', '.join(BUDGET_RULES)}")
        if init not in INIT_RULES:
            raise ValueError(f"recon: init={init!r}; valid: {', '.join(INIT_RULES)}")
        self.search_method, self.search_seed, self.budget_rule, self.init = search_method, int(search_seed), budget_rule, init
        self._report: dict[str, Any] | None = None
        self._model: MultiTaskModel | None = None

    def option_errors(self, methods: Mapping[str, Any]) -> dict[str, str]:
        searcher = methods.get(self.search_method)
        if searcher is None or searcher.kind == "single_task":
            valid = sorted(n for n, c in methods.items() if c.kind != "single_task")
            return {"search_method": f"unknown multi-task method {self.search_method!r}; valid: {', '.join(valid)}"}
        return {}

    def method_errors(self, method: type) -> str | None:
        if getattr(method, "gradients", "parameters") == "representation":
            return (
                f"recon cannot run {getattr(method, 'name', method.__name__)!r}: after the first branched layer the "
                "trunk computes one stream per task, so there is no single shared representation whose gradients "
                "the method could combine; use its parameter-gradient variant (e.g. mgda, aligned-mtl)"
            )
        return None

    def search_summary(self, ctx: MitigationContext) -> tuple[Conflict, dict[str, Any], bool]:
        steps = self.search_steps or max(1, round(self.search_fraction * ctx.total_steps))
        key = {
            "schema": "mtlbench.recon-search/1",
            "version": self.version,
            **ctx.search_identity,
            "method": self.search_method,
            "steps": steps,
            "every": self.search_every,
            "s": self.s,
            "seed": self.search_seed,
        }
        digest = config_hash(key)
        path = ctx.cache_dir / "recon" / f"{digest}.json" if ctx.cache_dir is not None else None
        if path is not None and path.exists():
            try:
                stored = json.loads(path.read_text())
                if stored.get("key") == json.loads(json.dumps(key)):
                    return Conflict.model_validate(stored["conflict"]), {**key, "hash": digest}, True
            except (json.JSONDecodeError, KeyError, ValidationError):
                pass  # unreadable cache entry: search again and overwrite it
        summary = ctx.search(self.search_method, steps, self.search_every, [self.s], self.search_seed)
        if summary is None or summary.layers is None:
            raise ConfigError("recon: the search phase sampled no gradients (fewer than 2 tasks?)")
        if path is not None:
            from mtlbench.core.files import atomic_write_json

            stored = {"layers": summary.layers.model_dump(mode="json"), "n_samples": summary.n_samples}
            atomic_write_json(path, {"key": key, "conflict": stored})
        return summary, {**key, "hash": digest}, False

    def prepare(self, model: MultiTaskModel, ctx: MitigationContext) -> MultiTaskModel:
        parts = model.surgery_parts()
        if not parts:
            raise ConfigError(
                f"recon: {type(model).__name__} declares no shared parts to branch (surgery_parts); Recon runs on "
                "hard-sharing models (a trunk and one head per task), SegNet-MTAN and models that implement "
                "surgery_parts and branch_layers (mtlbench.plugin.model.MultiTaskModel)"
            )
        summary, key, cached = self.search_summary(ctx)
        layers = summary.layers
        if layers is None or f"{self.s:g}" not in layers.s_conflict:
            raise ConfigError(f"recon: the search phase recorded no S-conflict scores for s={self.s:g}")
        scores = layers.s_conflict[f"{self.s:g}"]
        shared_total = sum(layers.params)
        ranking = rank_layers(layers.names, layers.params, scores, branchable_in(parts))
        chosen = select_layers(ranking, self.k, self.budget, shared_total, self.budget_rule)
        branched_params = sum(r["params"] for r in ranking if r["layer"] in chosen)
        n_tasks = len(ctx.tasks)
        self._report = {
            "s": self.s,
            "k": self.k,
            "budget": self.budget,
            "search": {
                "method": self.search_method,
                "steps": key["steps"],
                "every": self.search_every,
                "seed": self.search_seed,
                "hash": key["hash"],
                "cached": cached,
                "samples": summary.n_samples,
            },
            "ranking": ranking,
            "chosen": chosen,
            "branched_params": branched_params,
            "branched_pct_of_shared": 100.0 * branched_params / shared_total if shared_total else 0.0,
            "added_params": branched_params * (n_tasks - 1),
            "budget_rule": self.budget_rule,
            "init": self.init,
        }
        generator = torch.Generator().manual_seed(ctx.seed + 3_000_017)  # the copies' own draws
        self._model = model.branch_layers(chosen, init=self.init, generator=generator)
        return self._model

    def report(self) -> dict[str, Any] | None:
        if self._report is not None and self._model is not None:
            m = self._model
            self._report["streams"] = {"split_at": getattr(m, "split_at", None), "prefix_once": getattr(m, "prefix_once", False)}
        return self._report
