"""Call-site names: ``"layer1.0.relu"`` for a layer's first call in a forward, ``"...#2"`` after.

The one place where call-site names are written and read back. A module called several
times in one forward of the model (torchvision's ResNet ``BasicBlock`` applies its single
``relu`` twice) reports each call under its own name; a layer whose calls share one weight
(``layer_weights=`` of the penalty, grouping in benchmarks) is found by the base name.
"""

from __future__ import annotations

__all__ = ["call_site_base", "call_site_name"]

_SEP = "#"


def call_site_name(base: str, call: int) -> str:
    """The name of the ``call``-th call (1-based) of ``base`` within one forward.

    >>> call_site_name("layer1.0.relu", 1), call_site_name("layer1.0.relu", 2)
    ('layer1.0.relu', 'layer1.0.relu#2')
    """
    return base if call == 1 else f"{base}{_SEP}{call}"


def call_site_base(site: str) -> str:
    """The layer a call-site name belongs to: ``"layer1.0.relu#2"`` -> ``"layer1.0.relu"``.

    Plain names (a first call, or a module name) are returned unchanged.

    >>> call_site_base("layer1.0.relu#2"), call_site_base("features.1")
    ('layer1.0.relu', 'features.1')
    """
    return site.split(_SEP, 1)[0]
