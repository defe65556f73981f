"""The overfitting playground: knobs, Train / Pause / Step / Stop / Reset, live views of a run.

Modules: :mod:`.settings` (the knobs, their ranges and the shareable settings string),
:mod:`.session` (one run in a background thread), ``controls`` (the knob widgets),
``widget`` (:class:`OverfittingPlayground`) and :mod:`.app` (the classroom web app
served by ``xaisparse playground``).

>>> pg = OverfittingPlayground(train_size=100, epochs=3)
>>> pg.settings.train_size, pg.settings_string, pg.message
(100, 'pg1&n=100&epochs=3&seed=0', 'Set the knobs and press Train.')
>>> pg.train(label_noise=1.5)
Traceback (most recent call last):
...
ValueError: label_noise must be in [0, 0.9], got 1.5
"""

from .session import RUN_STATES, PlaygroundRun, Snapshot
from .settings import DATASETS, KNOB_RANGES, LIVE_KNOBS, PlaygroundSettings
from .widget import OverfittingPlayground

__all__ = [
    "DATASETS",
    "KNOB_RANGES",
    "LIVE_KNOBS",
    "RUN_STATES",
    "OverfittingPlayground",
    "PlaygroundRun",
    "PlaygroundSettings",
    "Snapshot",
]
