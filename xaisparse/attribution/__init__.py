"""Captum attributions beside activation sparsity.

Every attribution comes from Captum (imported on first use, never at ``import xaisparse``);
these functions check the arguments, run Captum on the model's device in eval mode, and turn
its tensors into the project's numbers and tidy tables:

* :func:`attribute`: input attributions of one batch (Integrated Gradients, Saliency,
  Input×Gradient, GradientShap, Occlusion, optionally through NoiseTunnel), exactly Captum's.
* :func:`attribution_map`, :func:`attribution_sparsity`: per-sample maps and their perplexity
  sparsity, Gini and zero fraction; :func:`attribution_sparsity_table` over a data loader.
* :func:`channel_attributions`, :func:`channel_table`: one layer's channels, activation
  sparsity (from :class:`~xaisparse.SparsityMonitor`) beside Grad-CAM, conductance and
  ablation importance, with Spearman correlations and flags.
* :func:`compare_models`: two models (or checkpoints) on the same images, with a paired
  Wilcoxon summary.
"""

from .channels import ACTIVATION_COLUMNS, IMPORTANCES, ChannelTable, channel_attributions, channel_table
from .compare import ModelComparison, compare_models, resolve_models
from .methods import ALGORITHMS, GRADIENT_ALGORITHMS, NOISE_TUNNEL_TYPES, attribute, explainer
from .sparsity import MEASURES, attribution_map, attribution_sparsity, attribution_sparsity_table

__all__ = [
    "ACTIVATION_COLUMNS",
    "ALGORITHMS",
    "GRADIENT_ALGORITHMS",
    "IMPORTANCES",
    "MEASURES",
    "NOISE_TUNNEL_TYPES",
    "ChannelTable",
    "ModelComparison",
    "attribute",
    "attribution_map",
    "attribution_sparsity",
    "attribution_sparsity_table",
    "channel_attributions",
    "channel_table",
    "compare_models",
    "explainer",
    "resolve_models",
]
