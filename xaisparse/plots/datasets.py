"""A dataset's images: a few per class, with the labels the model is trained on (noisy ones marked)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .._deprecation import renamed_keyword
from .._validation import check_int
from ._style import NOISY_COLOR, NoData, new_figure
from .channels import show_image

__all__ = ["SAMPLE_PARTS", "samples"]

#: Which part of a :class:`~xaisparse.data.TrainTestData` :func:`~xaisparse.plots.samples` shows.
SAMPLE_PARTS: tuple[str, ...] = ("train", "test")


@renamed_keyword("split", "dataset")
def samples(
    dataset: Any,
    part: str = "train",
    per_class: int = 6,
    seed: int = 0,
    *,
    data: dict[str, Any] | None = None,
) -> Figure:
    """One row per class of ``per_class`` images of a :class:`~xaisparse.data.TrainTestData`.

    Images are drawn at random (``seed``) among those *labelled* with the row's class, i.e. the
    labels the model is trained on: with label noise some rows hold other digits, and each of
    those is framed in red and titled with its true class. Images are shown min–max scaled, at
    the dataset's resolution (what the network sees).

    ``data`` receives ``indices`` (class → indices into the part), ``labels``, ``true_labels``
    and ``images`` (``(classes, per_class, C, H, W)``, NaN where a class has fewer images).

    >>> from xaisparse.data import load_digits_dataset
    >>> digits = load_digits_dataset(size=8, train_subset=100, label_noise=0.2)
    >>> drawn = {}
    >>> fig = samples(digits, per_class=3, data=drawn)
    >>> len(fig.axes), drawn["images"].shape
    (30, (10, 3, 1, 8, 8))
    """
    from ..data import TrainTestData, _targets_of

    if not isinstance(dataset, TrainTestData):
        raise TypeError(
            f"dataset must be a xaisparse.data.TrainTestData (from load_dataset), got {type(dataset).__name__}"
        )
    if part not in SAMPLE_PARTS:
        raise ValueError(f"part must be one of {list(SAMPLE_PARTS)}, got {part!r}")
    per_class = check_int("per_class", per_class, minimum=1, maximum=50)
    seed = check_int("seed", seed, minimum=0)
    part_data = getattr(dataset, part)
    labels = _targets_of(part_data)
    if labels is None:  # a part with no cheap label attribute: read them (loads every image once)
        labels = np.array([int(part_data[i][1]) for i in range(len(part_data))], dtype=np.int64)
    if len(labels) == 0:
        raise NoData(f"the {part} part of {dataset.name!r} is empty")
    true = labels
    if part == "train" and dataset.clean_train_targets is not None:
        true = dataset.clean_train_targets.cpu().numpy().astype(np.int64)

    rng = np.random.default_rng(seed)
    classes = dataset.num_classes
    chosen = {c: np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in range(classes)}
    shape = tuple(np.asarray(part_data[0][0]).shape)
    images = np.full((classes, per_class, *shape), np.nan, dtype=np.float32)

    fig = new_figure(0.9 * per_class + 0.8, 0.9 * classes + 0.9)
    axes = fig.subplots(classes, per_class, squeeze=False)
    n_noisy = 0
    for c in range(classes):
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(chosen[c]):
                ax.set_axis_off()
                continue
            i = int(chosen[c][j])
            img = np.asarray(part_data[i][0], dtype=np.float32)
            images[c, j] = img
            show_image(ax, img)
            if true[i] != labels[i]:
                n_noisy += 1
                ax.set_title(f"true {true[i]}", fontsize=7, color=NOISY_COLOR, pad=2)
                for spine in ax.spines.values():
                    spine.set_edgecolor(NOISY_COLOR)
                    spine.set_linewidth(2.0)
        axes[c, 0].set_ylabel(f"label {c}", fontsize=8, rotation=0, ha="right", va="center")
    size = "×".join(str(s) for s in shape[1:])
    noise = dataset.info.get("label_noise") if part == "train" else None
    title = f"{dataset.name}, {part} part: {len(labels)} images at {size}, {per_class} per label"
    if noise:
        title += f"\n{n_noisy} of the shown carry a wrong label (red frame; label noise {noise:g})"
    fig.suptitle(title, fontsize=9)
    if data is not None:
        data.update(
            indices={c: chosen[c].tolist() for c in range(classes)},
            labels=labels,
            true_labels=true,
            images=images,
        )
    return fig
