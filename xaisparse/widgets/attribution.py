"""``AttributionComparison``: Captum attribution maps of one or more models, and a layer's channel table.

Like :class:`~xaisparse.widgets.ChannelInspector` it runs models, so torch, Captum and
:mod:`xaisparse.attribution` are imported when it is constructed, never at
``import xaisparse.widgets``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .. import plots
from .._validation import check_choice, check_int, check_str
from ._base import FigureWidget, NoData
from .inspector import _as_images

__all__ = ["AttributionComparison"]

#: Images kept (the first ones given); attributions are computed for all of them at once.
MAX_POOL = 32
#: Images drawn at once.
MAX_SHOWN = 6
#: The widget's views.
VIEWS: tuple[str, ...] = ("maps", "channels")
#: Channel-table orderings offered: by the chosen importance, or by an activation column.
SORTS: tuple[str, ...] = ("importance", "sparsity", "dead_fraction")

_ALGORITHM_LABELS = {
    "integrated_gradients": "integrated gradients",
    "saliency": "saliency",
    "input_x_gradient": "input × gradient",
    "gradient_shap": "gradient SHAP",
    "occlusion": "occlusion",
}
_SIGN_LABELS = {"absolute_value": "|attribution|", "all": "signed", "positive": "positive", "negative": "negative"}
_SORT_LABELS = {"importance": "importance", "sparsity": "activation sparsity", "dead_fraction": "dead fraction"}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and NumPy's global one (Captum draws from both); restore both after."""
    import torch

    state = np.random.get_state()  # noqa: NPY002 - Captum draws from the legacy global generator
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _pool(images: Any, labels: Any) -> tuple[Any, Any, list[str]]:
    """``(images, labels or None, notes)``: at most ``MAX_POOL`` images ``(N, C, H, W)`` on the CPU."""
    import torch
    from torch.utils.data import Dataset

    notes: list[str] = []
    if isinstance(images, Dataset) and not isinstance(images, torch.Tensor):
        if labels is not None:
            raise TypeError("labels come from the dataset when images is a Dataset; pass labels=None")
        n = len(images)  # type: ignore[arg-type]
        if n > MAX_POOL:
            notes.append(f"the dataset holds {n} images; the first {MAX_POOL} are offered.")
        items = [images[i] for i in range(min(n, MAX_POOL))]
        if not items:
            raise ValueError("the dataset holds no images")
        if not all(isinstance(item, (tuple, list)) and len(item) >= 2 for item in items):
            raise TypeError("a Dataset must yield (image, label) pairs")
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
        labels = torch.as_tensor([int(item[1]) for item in items])
    x = _as_images(images)
    if x.shape[0] > MAX_POOL:
        notes.append(f"{x.shape[0]} images given; the first {MAX_POOL} are offered.")
        x = x[:MAX_POOL]
    n = x.shape[0]
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels))
        if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
            raise TypeError(f"labels must be 1-d integer class indices, got dtype {y.dtype} and shape {tuple(y.shape)}")
        if y.shape[0] < n:
            raise ValueError(f"labels holds {y.shape[0]} entries for {n} images")
        labels = y[:n].long()
    return x.detach().cpu(), labels, notes


class AttributionComparison(FigureWidget):
    """Captum attributions of one or more models on the same images, and one layer's channel table.

    ``view="maps"``: the chosen images, one row per chosen model, each map blended over its
    input (:func:`xaisparse.plots.attribution_maps`) and titled with the model's prediction and
    the map's attribution sparsity. ``view="channels"``: one model's channel table of one layer
    on all the images (:func:`xaisparse.plots.channel_importance`): importance against
    activation sparsity, and the channels listed by importance or by sparsity.

    Args:
        models: one ``nn.Module``, or ``{name: model or checkpoint}`` (checkpoints are loaded into
            copies of ``architecture``, see :func:`~xaisparse.attribution.resolve_models`).
        images: a batch ``(N, C, H, W)`` / ``(N, H, W)`` (tensor or array), or a Dataset of
            ``(image, label)`` pairs; the first ``MAX_POOL`` are kept.
        labels: the class of each image (not with a Dataset, which brings its own).
        target: what each map explains: ``"label"`` (default when there are labels) or
            ``"predicted"`` (each model's own arg-max class).
        algorithm, noise_tunnel, sign, layer, view, importance, sort, indices, model: initial
            control values (``indices``: the images shown; ``model``: the channel view's model).
        baselines: Captum's baselines for integrated gradients, gradient SHAP and conductance
            (default: zeros).
        n_steps: integration steps of integrated gradients and conductance.
        captum_kwargs: extra Captum arguments per algorithm name (``"noise_tunnel"`` for
            NoiseTunnel's), over the defaults of :meth:`captum_kwargs`.
        seed: seeds torch and NumPy around every Captum call (gradient SHAP and NoiseTunnel draw
            random numbers), so a view is reproducible; the global generators are restored.

    Captum runs only when a view needs attributions it has not computed: the attributions of
    every kept image are cached per (model, algorithm, noise tunnel), the channel tables per
    (model, layer); ``captum_runs`` lists each computation. Attributions run in eval mode
    (every module's training flag is restored).

    Controls: ``view_buttons``, ``images_select``, ``algorithm_dropdown``, ``smooth_checkbox``,
    ``sign_dropdown``, ``models_select`` (maps view); ``model_dropdown``, ``layer_dropdown``,
    ``importance_dropdown``, ``sort_dropdown`` (channel view). ``data`` holds what the last
    drawing showed.
    """

    _title = "attribution comparison"

    def __init__(
        self,
        models: Any,
        images: Any,
        labels: Any = None,
        *,
        target: str | None = None,
        algorithm: str = "integrated_gradients",
        noise_tunnel: bool = False,
        sign: str = "absolute_value",
        layer: str | None = None,
        view: str = "maps",
        importance: str = "ablation",
        sort: str = "importance",
        indices: Sequence[int] | None = None,
        model: str | None = None,
        architecture: Any = None,
        baselines: Any = None,
        n_steps: int = 32,
        captum_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        from ..attribution import ALGORITHMS, IMPORTANCES, resolve_models
        from ..attribution._inputs import model_device
        from ..recording import ActivationRecorder

        if isinstance(models, torch.nn.Module):
            models = {type(models).__name__: models}
        self.models: dict[str, Any] = resolve_models(models, architecture, count=None)
        check_choice("algorithm", algorithm, tuple(ALGORITHMS))
        check_choice("sign", sign, plots.SIGNS)
        check_choice("view", view, VIEWS)
        check_choice("importance", importance, IMPORTANCES)
        check_choice("sort", sort, SORTS)
        if not isinstance(noise_tunnel, bool):
            raise TypeError(f"noise_tunnel must be a bool, got {type(noise_tunnel).__name__}")
        self.n_steps = check_int("n_steps", n_steps, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        extra = dict(captum_kwargs or {})
        for key, value in extra.items():
            check_choice("a captum_kwargs key", key, (*ALGORITHMS, "noise_tunnel"))
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"captum_kwargs[{key!r}] must be a dict of Captum arguments, got {type(value).__name__}"
                )
        self._extra = {k: dict(v) for k, v in extra.items()}

        self.images, self.labels, sticky = _pool(images, labels)
        if target is None:
            target = "label" if self.labels is not None else "predicted"
        self.target = check_choice("target", target, ("label", "predicted"))
        if self.target == "label" and self.labels is None:
            raise ValueError("target='label' needs labels (or a Dataset of (image, label) pairs); pass labels=...")
        self.baselines = None if baselines is None else torch.as_tensor(baselines, dtype=self.images.dtype)

        # each model's predictions (and targets) on the kept images, once
        self.predictions: dict[str, Any] = {}
        self.targets: dict[str, Any] = {}
        for name, net in self.models.items():
            if any(m.training for m in net.modules()):
                sticky.append(
                    f"model {name!r} is in train mode: attributions use eval mode (dropout off, batch norm on "
                    "its running statistics); its training flags are restored."
                )
            flags = [(m, m.training) for m in net.modules()]
            try:
                net.eval()
                with torch.no_grad():
                    logits = net(self.images.to(model_device(net)))
            finally:
                for m, flag in flags:
                    m.training = flag
            if logits.dim() != 2 or logits.shape[1] < 2:
                raise ValueError(
                    f"model {name!r} returns outputs of shape {tuple(logits.shape)}; AttributionComparison explains "
                    "class scores (N, K), K >= 2"
                )
            self.predictions[name] = logits.argmax(1).cpu()
            if self.labels is not None and int(self.labels.max()) >= logits.shape[1]:
                raise ValueError(
                    f"labels go up to {int(self.labels.max())} but model {name!r} has {logits.shape[1]} classes"
                )
            self.targets[name] = self.labels if self.target == "label" else self.predictions[name]

        names = list(self.models)
        n = int(self.images.shape[0])
        chosen = list(range(min(4, n))) if indices is None else [int(i) for i in indices if 0 <= int(i) < n]
        if model is not None and model not in names:
            raise ValueError(f"model must be one of {names}, got {model!r}")
        self._layers: dict[str, list[str]] = {}
        for name, net in self.models.items():
            try:  # the default selection's modules and functional calls, named as the monitor names them
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rec = ActivationRecorder(net)
                self._layers[name] = [*rec.modules, *rec.functional_sites]
            except ValueError:
                self._layers[name] = []
        first = model or names[0]
        if layer is not None:
            check_str("layer", layer)
            ActivationRecorder(self.models[first], layer)  # any name a table shows; else the closest names
        layers = self._layers[first] or ([layer] if layer else [])
        if layer is not None and layer not in layers:
            layers = [layer, *layers]
        self._layers[first] = layers

        self._attributions: dict[tuple[str, str, bool], Any] = {}
        self._sparsity: dict[tuple[str, str, bool], np.ndarray] = {}
        self._tables: dict[tuple[str, str], Any] = {}
        #: One entry per Captum computation: ``("maps", model, algorithm, noise_tunnel)`` or ``("channels", model, layer)``.
        self.captum_runs: list[tuple[Any, ...]] = []

        def caption(i: int) -> str:
            return f"image {i}" + ("" if self.labels is None else f" · label {int(self.labels[i])}")

        self.view_buttons = widgets.ToggleButtons(
            options=[("attribution maps", "maps"), ("channel table", "channels")],
            value=view,
            description="view",
            style={"button_width": "140px"},
        )
        self.images_select = widgets.SelectMultiple(
            options=[(caption(i), i) for i in range(n)],
            value=tuple(chosen),
            description="images",
            rows=min(n, 5),
            layout=widgets.Layout(width="220px"),
        )
        self.algorithm_dropdown = widgets.Dropdown(
            options=[(_ALGORITHM_LABELS.get(a, a), a) for a in ALGORITHMS],
            value=algorithm,
            description="method",
            layout=widgets.Layout(width="260px"),
        )
        self.smooth_checkbox = widgets.Checkbox(
            value=noise_tunnel, description="NoiseTunnel (SmoothGrad)", indent=False
        )
        self.sign_dropdown = widgets.Dropdown(
            options=[(_SIGN_LABELS[s], s) for s in plots.SIGNS],
            value=sign,
            description="show",
            layout=widgets.Layout(width="220px"),
        )
        self.models_select = widgets.SelectMultiple(
            options=names,
            value=tuple(names),
            description="models",
            rows=min(len(names), 4),
            layout=widgets.Layout(width="220px"),
        )
        self.model_dropdown = widgets.Dropdown(options=names, value=first, description="model")
        self.layer_dropdown = widgets.Dropdown(
            options=layers, value=layer or (layers[0] if layers else None), description="layer"
        )
        self.importance_dropdown = widgets.Dropdown(
            options=[("Grad-CAM", "gradcam"), ("conductance", "conductance"), ("ablation", "ablation")],
            value=importance,
            description="importance",
            layout=widgets.Layout(width="220px"),
        )
        self.sort_dropdown = widgets.Dropdown(
            options=[(_SORT_LABELS[s], s) for s in SORTS],
            value=sort,
            description="sort by",
            layout=widgets.Layout(width="240px"),
        )

        def box() -> widgets.Layout:
            return widgets.Layout(flex_flow="row wrap", align_items="flex-start")

        self.maps_controls = widgets.HBox(
            [self.images_select, self.models_select, self.algorithm_dropdown, self.sign_dropdown, self.smooth_checkbox],
            layout=box(),
        )
        self.channel_controls = widgets.HBox(
            [self.model_dropdown, self.layer_dropdown, self.importance_dropdown, self.sort_dropdown], layout=box()
        )
        watched = [
            self.view_buttons,
            *self.maps_controls.children,
            *self.channel_controls.children,
        ]
        super().__init__([self.view_buttons, self.maps_controls, self.channel_controls], watch=watched)
        self.controls.layout.flex_flow = "column"
        self.controls.layout.align_items = "flex-start"
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self._show_view_controls()
        self.refresh()

    # ------------------------------------------------------------------ Captum, cached
    def captum_kwargs(self, algorithm: str, noise_tunnel: bool = False) -> dict[str, Any]:
        """The Captum keyword arguments the maps of ``algorithm`` are computed with.

        Defaults: ``n_steps`` (integrated gradients); ``baselines`` (zeros unless given) for
        integrated gradients and gradient SHAP; for occlusion a ``(C, k, k)`` window,
        ``k = max(2, H // 5)``, stride 1, 8 perturbations per forward; with the noise tunnel
        ``nt_samples=8`` and ``stdevs`` 15 % of the images' value range (SmoothGrad's usual
        level). ``captum_kwargs=`` given to the widget overrides any of them.
        """
        import torch

        from ..attribution import ALGORITHMS

        check_choice("algorithm", algorithm, tuple(ALGORITHMS))
        c, h = int(self.images.shape[1]), int(self.images.shape[2])
        zeros = torch.zeros(1, *self.images.shape[1:], dtype=self.images.dtype)
        base = self.baselines if self.baselines is not None else zeros
        defaults: dict[str, dict[str, Any]] = {
            "integrated_gradients": {"n_steps": self.n_steps, "baselines": base},
            "gradient_shap": {"baselines": base},
            "occlusion": {"sliding_window_shapes": (c, max(2, h // 5), max(2, h // 5)), "perturbations_per_eval": 8},
        }
        out = {**defaults.get(algorithm, {}), **self._extra.get(algorithm, {})}
        if noise_tunnel:
            spread = float(self.images.max() - self.images.min()) or 1.0
            out.update({"nt_samples": 8, "stdevs": 0.15 * spread, **self._extra.get("noise_tunnel", {})})
        return out

    def attributions(self, model: str, algorithm: str, noise_tunnel: bool = False) -> Any:
        """Captum's attributions of ``model`` on every kept image, explaining its targets (cached)."""
        key = (model, algorithm, bool(noise_tunnel))
        if key not in self._attributions:
            from ..attribution import attribute

            net = self.models[model]
            with _seeded(self.seed):
                out = attribute(
                    net,
                    self.images,
                    self.targets[model],
                    algorithm=algorithm,
                    noise_tunnel=bool(noise_tunnel),
                    eval_mode=True,
                    **self.captum_kwargs(algorithm, noise_tunnel),
                )
            self.captum_runs.append(("maps", *key))
            self._attributions[key] = out.detach().cpu()
        return self._attributions[key]

    def sparsity(self, model: str, algorithm: str, noise_tunnel: bool = False) -> np.ndarray:
        """Attribution sparsity of each kept image's map (:func:`~xaisparse.attribution.attribution_sparsity`)."""
        key = (model, algorithm, bool(noise_tunnel))
        if key not in self._sparsity:
            from ..attribution import attribution_sparsity

            values = attribution_sparsity(self.attributions(*key))["sparsity"]
            self._sparsity[key] = values.to_numpy(np.float64)
        return self._sparsity[key]

    def channel_table(self, model: str, layer: str) -> Any:
        """:func:`~xaisparse.attribution.channel_table` of ``model``'s ``layer`` on every kept image (cached)."""
        key = (model, layer)
        if key not in self._tables:
            from ..attribution import channel_table

            self._tables[key] = channel_table(
                self.models[model],
                [(self.images, self.targets[model])],
                layer,
                target="label",  # each batch's second element: this widget's targets
                baselines=self.baselines,
                n_steps=self.n_steps,
                eval_mode=True,
                progress=False,
            )
            self.captum_runs.append(("channels", *key))
        return self._tables[key]

    # ------------------------------------------------------------------ controls
    def _show_view_controls(self) -> None:
        maps = self.view_buttons.value == "maps"
        self.maps_controls.layout.display = None if maps else "none"
        self.channel_controls.layout.display = "none" if maps else None

    def _sync_layers(self) -> None:
        layers = self._layers.get(self.model_dropdown.value, [])
        current = self.layer_dropdown.value
        with self._hold():
            self.layer_dropdown.options = layers
            if layers:
                self.layer_dropdown.value = current if current in layers else layers[0]

    def _controls_changed(self, change: dict[str, Any]) -> None:
        if change["owner"] is self.view_buttons:
            self._show_view_controls()
        elif change["owner"] is self.model_dropdown:
            self._sync_layers()

    def _describe(self) -> str:
        if self.view_buttons.value == "maps":
            return (
                f"AttributionComparison(view='maps', models={list(self.models_select.value)}, "
                f"algorithm={self.algorithm_dropdown.value!r}, images={list(self.images_select.value)})"
            )
        return (
            f"AttributionComparison(view='channels', model={self.model_dropdown.value!r}, "
            f"layer={self.layer_dropdown.value!r}, sort={self.sort_dropdown.value!r})"
        )

    # ------------------------------------------------------------------ drawing
    def _draw(self, notes: list[str]) -> Figure:
        self.data = {}
        if self.view_buttons.value == "channels":
            return self._draw_channels(notes)
        return self._draw_maps(notes)

    def _draw_maps(self, notes: list[str]) -> Figure:
        chosen = list(self.images_select.value)
        rows = list(self.models_select.value)
        if not chosen:
            raise NoData("Select at least one image.")
        if not rows:
            raise NoData("Select at least one model.")
        if len(chosen) > MAX_SHOWN:
            notes.append(f"{len(chosen)} images selected; the first {MAX_SHOWN} are shown.")
            chosen = chosen[:MAX_SHOWN]
        algorithm, smooth = self.algorithm_dropdown.value, bool(self.smooth_checkbox.value)
        attributions = {name: self.attributions(name, algorithm, smooth)[chosen] for name in rows}
        sparsity = {name: self.sparsity(name, algorithm, smooth)[chosen] for name in rows}
        annotations = {}
        for name in rows:
            pred = self.predictions[name][chosen].tolist()
            if self.labels is None:
                annotations[name] = [f"pred {p}" for p in pred]
            else:
                truth = self.labels[chosen].tolist()
                annotations[name] = [f"pred {p}" + ("" if p == t else " ✗") for p, t in zip(pred, truth)]
        captions = [self.images_select.options[i][0] for i in chosen]
        method = _ALGORITHM_LABELS.get(algorithm, algorithm) + (" + NoiseTunnel (SmoothGrad)" if smooth else "")
        explains = "the label" if self.target == "label" else "each model's predicted class"
        fig = plots.attribution_maps(
            self.images[chosen],
            attributions,
            sign=self.sign_dropdown.value,
            sparsity=sparsity,
            captions=captions,
            annotations=annotations,
            title=f"{method} · explaining {explains}",
            notes=notes,
            data=self.data,
        )
        self.data["images"] = chosen
        return fig

    def _draw_channels(self, notes: list[str]) -> Figure:
        model, layer = self.model_dropdown.value, self.layer_dropdown.value
        if layer is None:
            raise NoData(f"model {model!r} has no activation layers after convolutions; pass layer='<module name>'.")
        table = self.channel_table(model, layer)
        importance = self.importance_dropdown.value
        sort = importance if self.sort_dropdown.value == "importance" else self.sort_dropdown.value
        fig = plots.channel_importance(table, importance, sort, title=model, notes=notes, data=self.data)
        self.data["model"] = model
        return fig
