"""Features and groups of features: the players of perturbation methods and permutation importance.

A ``feature_mask`` gives every input feature a group id ``0..P-1`` (or ``"grid"``/``"slic"``
superpixels, see :mod:`pellucid.attribution.segmentation`); every perturbation method and
:func:`pellucid.inspection.permutation_importance` turn it into a :class:`FeatureMask` with
:func:`resolve_feature_mask`, spread group values over features with it, and blend inputs
with a reference where a group is removed (:func:`mix`, exact for 0/1 masks).
"""

from __future__ import annotations

from pellucid.attribution._coalitions import FeatureMask, mix, resolve_feature_mask

__all__ = ["FeatureMask", "mix", "resolve_feature_mask"]
