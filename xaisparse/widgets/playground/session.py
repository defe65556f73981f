"""One playground run in a background thread: pause, step one epoch, stop within one batch,
and knob changes between epochs.

:class:`PlaygroundRun` trains the playground's :class:`~xaisparse.models.SmallCNN` with
:func:`~xaisparse.train.fit` in a daemon thread, so the kernel stays free to receive button
clicks. It is a ``fit`` callback itself: after every batch it checks for **Stop** (and ends
the run by raising out of ``fit``: the epochs measured so far stay in the History); after
every epoch it captures the feature maps of a few test images, publishes a consistent
snapshot to its listener, applies the knob changes due after that epoch and, when asked to,
waits (**Pause**) until **Resume**, **Step** (exactly one more epoch) or **Stop**.

Nothing here touches a widget: the listener (the widget) is called from the training thread
and must only hand the work over (see the ``widget`` module).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ...history import History
from .settings import DATASETS, LIVE_KNOBS, PlaygroundSettings, check_knob

if TYPE_CHECKING:  # pragma: no cover
    from ...activations import FeatureMaps

__all__ = ["RUN_STATES", "PlaygroundRun", "Snapshot"]

#: The states of a run: ``idle`` (not started), ``running``, ``paused``, and how it ended.
RUN_STATES: tuple[str, ...] = ("idle", "running", "paused", "finished", "stopped", "failed")
_ACTIVE = ("running", "paused")


class _Stopped(Exception):
    """Raised inside ``fit`` (from a callback) to end the run now; the message says where."""


@dataclass
class Snapshot:
    """A consistent view of a run after one epoch, safe to read from any thread.

    ``history``: a copy of the History up to ``epoch``; ``maps``: the feature maps of the
    chosen test images at that epoch; ``map_epochs`` and ``map_sparsity[layer]``
    ``(epochs, images, channels)``: their sparsity at every epoch so far; ``changes``:
    ``(epoch, knob, old, new)`` of the changes applied so far.
    """

    history: History
    epoch: int
    maps: FeatureMaps | None
    map_epochs: list[int]
    map_sparsity: dict[str, np.ndarray]
    changes: list[tuple[int, str, Any, Any]] = field(default_factory=list)


@functools.lru_cache(maxsize=4)
def load_data(dataset: str, seed: int, train_size: int, label_noise: float) -> Any:
    """The playground's data split (cached: the same settings reuse the same tensors, read only)."""
    from ... import data

    loader, size, _ = DATASETS[dataset]
    return getattr(data, loader)(size=size, seed=seed, train_subset=train_size, label_noise=label_noise)


def chosen_images(test: Any, n: int) -> tuple[Any, list[int]]:
    """The first test image of each of the classes 0..n-1 (``(n, C, H, W)`` tensor) and their indices."""
    import torch

    targets = test.tensors[1] if hasattr(test, "tensors") else torch.tensor([int(test[i][1]) for i in range(len(test))])
    index = []
    for cls in range(int(targets.max()) + 1):
        hits = torch.nonzero(targets == cls).flatten()
        if hits.numel():
            index.append(int(hits[0]))
        if len(index) == n:
            break
    return torch.stack([test[i][0] for i in index]), index


def block_weights(blocks: tuple[int, ...]) -> dict[str, float]:
    """The penalty's ``layer_weights``: 1 for the chosen conv blocks, 0 for the others."""
    return {f"features.block{b}.relu": (1.0 if b in blocks else 0.0) for b in (1, 2, 3)}


def copy_history(h: History) -> History:
    """A snapshot of ``h``: its tables are replaced (never edited) by ``record_epoch``, so a shallow
    copy of the containers is enough to freeze it."""
    return dataclasses.replace(
        h,
        config=dict(h.config),
        spatial_hist=dict(h.spatial_hist),
        channel_hist=dict(h.channel_hist),
        hist_epochs={k: list(v) for k, v in h.hist_epochs.items()},
        layer_order=list(h.layer_order),
        outcome=copy.deepcopy(h.outcome),
    )


class PlaygroundRun:
    """One training run with the playground's settings, in a background thread.

    Args:
        settings: what to train (:class:`~.settings.PlaygroundSettings`); its ``changes`` are
            applied after their epochs, like changes made while it runs.
        name: the run's name (``history.config["name"]``).
        n_images: how many test images' feature maps to capture after every epoch.
        listener: ``listener(run, event)`` with ``event`` one of ``"epoch"`` (a new
            :attr:`snapshot`), ``"batch"`` (progress, at most a few times a second) and
            ``"state"`` (:attr:`state` changed). Called from the training thread: keep it short.

    ``batch_hooks``: functions ``hook(run, train_state)`` called after every batch before the
    Stop check (instrumentation and tests).
    """

    def __init__(
        self,
        settings: PlaygroundSettings,
        name: str = "run",
        n_images: int = 4,
        listener: Callable[[PlaygroundRun, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.n_images = n_images
        self.listener = listener
        self.batch_hooks: list[Callable[[PlaygroundRun, Any], None]] = []
        self.history: History | None = None
        self.snapshot: Snapshot | None = None
        self.error: BaseException | None = None
        self.stop_reason: str | None = None
        self.changes: list[tuple[int, str, Any, Any]] = []
        self.batches_trained = 0
        self.position: tuple[int, int, int] = (0, 0, 0)  # epoch, batch (1-based), batches per epoch
        self.images: Any = None
        self.image_index: list[int] = []
        self._state = "idle"
        self._cv = threading.Condition(threading.RLock())
        self._stop = threading.Event()
        self._pause = False
        self._step_until: int | None = None
        self._pending: dict[str, Any] = {}
        self._current = {knob: getattr(settings, knob) for knob in LIVE_KNOBS}
        self._map_epochs: list[int] = []
        self._map_sparsity: dict[str, list[np.ndarray]] = {}
        self._model: Any = None
        self._penalty: Any = None
        self._optimizer: Any = None
        self._last_batch_note = 0.0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        """One of :data:`RUN_STATES`."""
        return self._state

    @property
    def active(self) -> bool:
        """Started and not ended (running or paused)."""
        return self._state in _ACTIVE

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def pending(self) -> dict[str, Any]:
        """Knob changes waiting for the end of the current epoch."""
        with self._cv:
            return dict(self._pending)

    def current(self, knob: str) -> Any:
        """The value ``knob`` (one of :data:`~.settings.LIVE_KNOBS`) trains with now."""
        return self._current[knob]

    @property
    def final_settings(self) -> PlaygroundSettings:
        """The settings with the changes actually applied: the string of this string reproduces the run."""
        applied = tuple((e, k, new) for e, k, _, new in self.changes)
        return dataclasses.replace(self.settings, changes=applied)

    def _set_state(self, state: str) -> None:
        with self._cv:
            self._state = state
            self._cv.notify_all()
        self._tell("state")

    def _tell(self, event: str) -> None:
        if self.listener is not None:
            try:
                self.listener(self, event)
            except Exception:  # a broken listener never breaks training
                pass

    # ------------------------------------------------------------------ controls (any thread)
    def start(self, pause_after: int | None = None) -> None:
        """Start training in a daemon thread; ``pause_after``: pause once that epoch is measured."""
        with self._cv:
            if self._state != "idle":
                raise RuntimeError(f"this run was already started (state {self._state!r}); make a new one")
            self._step_until = pause_after
            self._state = "running"
        self._thread = threading.Thread(target=self._main, name=f"xaisparse-playground-{self.name}", daemon=True)
        self._thread.start()
        self._tell("state")

    def pause(self) -> None:
        """Pause after the epoch being trained (its measurement is shown first)."""
        with self._cv:
            self._pause = True

    def resume(self) -> None:
        """Continue a paused run."""
        with self._cv:
            self._pause, self._step_until = False, None
            if self._state == "paused":
                self._state = "running"
            self._cv.notify_all()
        self._tell("state")

    def step(self) -> None:
        """Train exactly one more epoch, then pause (when paused; a run not started starts and
        pauses after epoch 1)."""
        if self._state == "idle":
            self.start(pause_after=1)
            return
        with self._cv:
            if self._state != "paused":
                return
            last = self.snapshot.epoch if self.snapshot is not None else 0
            self._pause, self._step_until = False, last + 1
            self._state = "running"
            self._cv.notify_all()
        self._tell("state")

    def stop(self) -> None:
        """End the run after the current batch (at once when paused); the measured epochs stay."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def change(self, knob: str, value: Any) -> Any:
        """Set a live knob (:data:`~.settings.LIVE_KNOBS`) from the end of the current epoch on.

        Validated like the settings (a clear ``ValueError``/``TypeError``); returns the value.
        """
        if knob not in LIVE_KNOBS:
            raise ValueError(f"only {list(LIVE_KNOBS)} can change during a run, got {knob!r}")
        value = check_knob(knob, value, self.settings.dataset)
        with self._cv:
            if value == self._current[knob]:
                self._pending.pop(knob, None)
            else:
                self._pending[knob] = value
        return value

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        if self._thread is None:
            return self._state not in _ACTIVE
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_for(self, predicate: Callable[[PlaygroundRun], bool], timeout: float = 120.0) -> bool:
        """Wait until ``predicate(run)`` holds (checked at every state change); True when it did."""
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self), timeout)

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        final = "finished"
        try:
            self._train()
        except _Stopped as stop:
            final, self.stop_reason = "stopped", str(stop)
        except BaseException as exc:  # shown by the widget; the thread never raises into nowhere
            final, self.error = "failed", exc
            self.stop_reason = f"failed: {type(exc).__name__}: {exc}"
        finally:
            h = self.history
            if h is not None:
                h.config["playground"] = self.final_settings.to_string()
                if final in ("stopped", "failed") and h.epochs:
                    h.outcome.stopped_early_at, h.outcome.stop_reason = h.epochs[-1], self.stop_reason
                if self.snapshot is not None:
                    self.snapshot.history = copy_history(h)
            self._model = self._penalty = self._optimizer = None  # nothing of the network outlives the run
            self._set_state(final)

    def _train(self) -> None:
        import torch

        from ...detect import OverfitDetector
        from ...models import SmallCNN
        from ...train import fit
        from ._penalty import LivePenalty

        s = self.settings
        data = load_data(s.dataset, s.seed, s.train_size, s.label_noise)
        self.images, self.image_index = chosen_images(data.test, self.n_images)
        if self._stop.is_set():
            raise _Stopped("Stop pressed before training began")
        torch.manual_seed(s.seed)
        # built with dropout modules (dropout=0.5), then set to the knob: p = 0 is the identity and
        # draws no random numbers, and the modules are there when dropout changes during the run
        model = SmallCNN(
            1, 10, depth=3, width=s.width, batch_norm=s.batch_norm, dropout=0.5, image_size=data.image_size
        )
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = s.dropout
        self._model = model
        self._penalty = LivePenalty(model, weight=s.weight, layer_weights=block_weights(s.blocks))
        fit(
            model,
            data.train,
            data.test,
            epochs=s.epochs,
            lr=s.lr,
            weight_decay=s.weight_decay,
            batch_size=s.batch_size,
            probe_size=s.probe_size,
            penalty=self._penalty,
            detector=OverfitDetector(),
            callbacks=[cast(Any, _Control(self))],
            seed=s.seed,
            progress=False,
            config={"name": self.name, "playground": s.to_string(), "seed": s.seed, "dataset": s.dataset},
        )

    # ------------------------------------------------------------------ fit callbacks (training thread)
    def _on_batch(self, state: Any) -> None:
        self.history = state.history
        self._optimizer = state.optimizer
        self.batches_trained += 1
        self.position = (state.epoch, state.batch + 1, state.batches)
        for hook in list(self.batch_hooks):
            hook(self, state)
        if self._stop.is_set():
            raise _Stopped(
                f"Stop pressed during epoch {state.epoch} (after batch {state.batch + 1} of {state.batches})"
            )
        now = time.monotonic()
        if now - self._last_batch_note > 0.25:
            self._last_batch_note = now
            self._tell("batch")

    def _on_epoch(self, state: Any) -> None:
        from ...activations import capture_feature_maps

        self.history = state.history
        self._optimizer = state.optimizer
        epoch = state.epoch
        self.position = (epoch, state.batches if epoch else 0, state.batches)
        maps = capture_feature_maps(self._model, self.images)
        self._map_epochs.append(epoch)
        for layer in maps.layers:
            self._map_sparsity.setdefault(layer, []).append(maps.sparsity[layer])
        self.snapshot = Snapshot(
            history=copy_history(state.history),
            epoch=epoch,
            maps=maps,
            map_epochs=list(self._map_epochs),
            map_sparsity={k: np.stack(v) for k, v in self._map_sparsity.items()},
            changes=list(self.changes),
        )
        with self._cv:
            self._cv.notify_all()
        self._tell("epoch")
        if epoch >= self.settings.epochs:
            return
        with self._cv:
            if not self._stop.is_set() and (
                self._pause or (self._step_until is not None and epoch >= self._step_until)
            ):
                self._pause, self._step_until, self._state = True, None, "paused"
                self._cv.notify_all()
                paused = True
            else:
                paused = False
        if paused:
            self._tell("state")
            with self._cv:
                self._cv.wait_for(lambda: self._stop.is_set() or self._state != "paused")
        if self._stop.is_set():
            raise _Stopped(f"Stop pressed after epoch {epoch}")
        self._apply_changes(epoch)

    def _apply_changes(self, epoch: int) -> None:
        import torch

        with self._cv:
            todo = {**self.settings.changes_after(epoch), **self._pending}
            self._pending = {}
        for knob in LIVE_KNOBS:
            if knob not in todo or todo[knob] == self._current[knob]:
                continue
            value = todo[knob]
            if knob in ("lr", "weight_decay"):
                for group in self._optimizer.param_groups:
                    group[knob] = value
            elif knob == "dropout":
                for m in self._model.modules():
                    if isinstance(m, torch.nn.Dropout):
                        m.p = value
            elif knob == "weight":
                self._penalty.weight = float(value)
            else:  # blocks
                self._penalty.layer_weights = block_weights(value)
            self.changes.append((epoch, knob, self._current[knob], value))
            self._current[knob] = value
        if self.snapshot is not None:
            self.snapshot.changes = list(self.changes)


class _Control:
    """The run as a ``fit`` callback (it never sets ``stop_requested``: Stop raises instead)."""

    stop_requested = False

    def __init__(self, run: PlaygroundRun) -> None:
        self.run = run

    def on_batch_end(self, state: Any) -> None:
        self.run._on_batch(state)

    def on_epoch_end(self, state: Any) -> None:
        self.run._on_epoch(state)
