"""``none``: plain training of the shared model (the unmitigated row of every comparison)."""

from mtlbench.plugin.mitigation import Mitigation


class NoMitigation(Mitigation):
    name = "none"
    description = "plain training of the shared model"
    roles = frozenset({"unmitigated"})
