"""The built-in mitigations, discovered like a project's own (mtlbench.core.registry):

- ``none`` (:mod:`.none`): plain training of the shared model;
- ``recon`` (:mod:`.recon`): Recon (Shi et al., ICLR 2023) — turn the shared layers with the
  highest S-conflict scores into task-specific layers, then train from scratch;
- ``st`` (:mod:`.sparse`): sparse training (Zhang et al., 2024) — update only a fixed,
  magnitude-selected subset of the shared encoder's weights.

The extension point itself is :class:`mtlbench.plugin.mitigation.Mitigation`.
"""
