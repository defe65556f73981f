"""Your own model in the first hour: every gap a new user hit, as that user meets it.

Each test builds the model a user brings (a 1-D conv net on ``(N, C, L)`` sequences with one
``nn.ReLU`` used twice, an ``nn.GELU`` and ``F.relu``/``F.gelu`` calls in ``forward``; an MLP on
tabular ``(N, F)`` data; torchvision's EfficientNet-B0 with random weights), makes the call the
user makes and checks the result or the message. Values are checked against the DESIGN §1
definition written in NumPy/SciPy (``tests/oracle.py``) on activations computed here by hand.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from tests import oracle
from xaisparse import (
    History,
    SparsityMonitor,
    SparsityPenalty,
    UnknownLayerError,
    channel_table,
    expose_functional_activations,
    fit,
    plots,
)
from xaisparse.testing import count_hooks, synthetic_history

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 2e-5  # float32 activations vs the float64 reference


class Net1d(nn.Module):
    """A hand-written 1-D conv net: ``act`` used twice, a GELU module, and two functional calls."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 5, padding=2)
        self.act = nn.ReLU()
        self.c2 = nn.Conv1d(8, 8, 5, padding=2)
        self.gelu = nn.GELU()
        self.c3 = nn.Conv1d(8, 16, 3, padding=1)
        self.c4 = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        x = self.gelu(self.c2(x))
        x = F.relu(self.c3(x))
        x = self.act(x + F.gelu(self.c4(x)))
        return self.head(x.mean(-1))

    def reference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every activation of the forward, computed by hand, under the names the tables show."""
        with torch.no_grad():
            a1 = self.act(self.c1(x))
            g = self.gelu(self.c2(a1))
            r = F.relu(self.c3(g))
            gf = F.gelu(self.c4(r))
            return {"act": a1, "gelu": g, "relu": r, "gelu_fn": gf, "act#2": torch.relu(r + gf)}


SITES = ["act", "gelu", "relu", "gelu_fn", "act#2"]  # network order


def net1d() -> Net1d:
    torch.manual_seed(0)
    return Net1d().eval()


def sequences(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, generator=torch.Generator().manual_seed(seed))


def measure(model: nn.Module, x: torch.Tensor, layers: object = None) -> SparsityMonitor:
    monitor = SparsityMonitor(model, layers)  # type: ignore[arg-type]
    with monitor.track("test"), torch.no_grad():
        model(x)
    return monitor


def spatial_mean(acts: torch.Tensor) -> float:
    """DESIGN §1: mean over samples and channels of each map's sparsity (over the length axis)."""
    a = acts.double().numpy()
    return float(oracle.sparsity_rows(a.reshape(a.shape[0], a.shape[1], -1)).mean())


# --------------------------------------------------------------------------- 1. functional activations
def test_default_selection_records_the_functional_activations_of_a_mixed_model() -> None:
    model, x = net1d(), sequences()
    monitor = measure(model, x)
    assert monitor.layer_names == SITES  # both F.relu and F.gelu, beside the modules
    report = monitor.compute()
    for site, acts in model.reference(x).items():
        np.testing.assert_allclose(report.layer_value("test", site), spatial_mean(acts), rtol=0, atol=ATOL)
    # the penalty's default selection is the same, with the same values
    with SparsityPenalty(model, weight=1.0) as penalty:
        model(x)
        terms = {k: v.item() for k, v in penalty.terms.items()}
        penalty()
    assert list(terms) == SITES
    for site, acts in model.reference(x).items():
        np.testing.assert_allclose(terms[site], spatial_mean(acts), rtol=1e-5)
    assert count_hooks(model) == 0


def test_an_untraceable_mixed_model_warns_what_may_be_left_out() -> None:
    class Branchy(Net1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            return out if out.sum() > 0 else -out  # data-dependent: torch.fx cannot trace it

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"functional activation calls \(F.relu, ...\) among them could not be"):
        monitor = SparsityMonitor(Branchy())
    assert monitor.recorder.modules == ["act", "gelu"]


# --------------------------------------------------------------------------- 2. one name per call site
def test_every_name_a_table_shows_selects_that_layer_back() -> None:
    model, x = net1d(), sequences()
    full = measure(model, x).compute().channels
    for site in SITES:
        alone = measure(model, x, site)
        # a module's name selects all its calls ("act" and "act#2"); any other name that one call site
        assert alone.layer_names == (["act", "act#2"] if site == "act" else [site])
        got = alone.compute().channels
        got = got[got.layer == site].value.to_numpy()
        np.testing.assert_array_equal(got, full[full.layer == site].value.to_numpy())
    assert measure(model, x, "act#1").layer_names == ["act"]  # the first call only
    assert measure(model, x, ["act#2", "relu"]).layer_names == ["relu", "act#2"]
    assert measure(model, x, "*gelu*").layer_names == ["gelu", "gelu_fn"]  # globs match functional calls too


def test_a_call_site_name_in_the_penalty_and_its_weights() -> None:
    model, x = net1d(), sequences()
    ref = model.reference(x)
    with SparsityPenalty(model, "act#2", weight=1.0) as penalty:
        model(x)
        assert list(penalty.terms) == ["act#2"]
        np.testing.assert_allclose(penalty().item(), spatial_mean(ref["act#2"]), rtol=1e-5)
    with SparsityPenalty(model, weight=1.0, layer_weights={"act#2": 0.0, "relu": 2.0}) as penalty:
        model(x)
        terms = {k: v.item() for k, v in penalty.terms.items()}
        penalty()
    assert "act#2" not in terms and terms["relu"] == pytest.approx(2 * spatial_mean(ref["relu"]), rel=1e-5)


def test_unknown_and_unreached_call_sites_are_named() -> None:
    model, x = net1d(), sequences()
    with pytest.raises(UnknownLayerError, match=r"no layer named 'relu#9'; closest valid names: .*'relu'"):
        SparsityMonitor(model, "relu#9")
    with pytest.raises(UnknownLayerError, match=r"no layer named 'gleu'; closest valid names: .*'gelu'"):
        SparsityMonitor(model, "gleu")
    with pytest.warns(UserWarning, match=r"names call \[3\] of 'act' \(act#3\), but 'act' ran 2 time"):
        monitor = measure(model, x, ["act#3", "gelu"])
    assert monitor.layer_names == ["gelu"]


def test_expose_functional_activations_uses_the_same_names_and_values() -> None:
    model, x = net1d(), sequences()
    exposed = expose_functional_activations(model, x)
    assert [n for n, m in exposed.named_modules() if isinstance(m, (nn.ReLU, nn.GELU))] == [
        "act",
        "gelu",
        "relu",
        "gelu_fn",
    ]
    on_model, on_copy = measure(model, x).compute(), measure(exposed, x).compute()
    assert on_model.layers.layer.unique().tolist() == on_copy.layers.layer.unique().tolist()
    np.testing.assert_array_equal(on_model.channels.value.to_numpy(), on_copy.channels.value.to_numpy())
    # the names are the same, so runs recorded both ways compare layer by layer
    a, b = History.from_report(on_model), History.from_report(on_copy)
    assert a.layer_names == b.layer_names == SITES


@pytest.mark.parametrize("site", ["act", "act#2", "relu", "gelu_fn"])
def test_channel_table_takes_every_name_the_monitor_shows(site: str) -> None:
    model, x = net1d(), sequences(8)
    labels = torch.arange(8) % 4
    table = channel_table(model, [(x, labels)], site, n_steps=4, progress=False)
    assert table.layer == site
    report = measure(model, x).compute().channels
    mine = report[(report.layer == site) & (report.statistic == "spatial_mean")].value.to_numpy()
    np.testing.assert_array_equal(table.channels.sparsity.to_numpy(), mine)
    a = model.reference(x)[site].double().numpy()
    np.testing.assert_allclose(mine, oracle.sparsity_rows(a).mean(0), rtol=0, atol=ATOL)
    assert count_hooks(model) == 0


def test_history_queries_and_plots_take_call_site_names() -> None:
    model, x = net1d(), sequences()
    h = History.from_report(measure(model, x).compute())
    assert h.layer_series("test", "act#2").index.tolist() == [0]
    assert h.histogram("test", "gelu_fn", 0).shape == (16, 20)
    fig = plots.distribution(h, "act#2")
    assert fig.axes[0].get_title().startswith("act#2 · epoch 0")


# --------------------------------------------------------------------------- 3. queries that fail loudly
@pytest.fixture(scope="module")
def run() -> History:
    return synthetic_history(epochs=4, layers=("block1.relu", "block2.relu", "block3.relu"), seed=3)


def test_history_queries_name_what_exists(run: History) -> None:
    with pytest.raises(UnknownLayerError, match=r"'act3' is not recorded in this run; closest recorded layers"):
        run.layer_series("test", "act3")
    with pytest.raises(ValueError, match=r"metric 'acc' is not recorded in this run; recorded metrics: \['loss'"):
        run.metric("test", "acc")
    with pytest.raises(ValueError, match=r"split 'validation' is not recorded in this run; .*\['train', 'test'\]"):
        run.layer_matrix("validation")
    with pytest.raises(ValueError, match=r"split 'validation' is not recorded"):
        run.metric("validation", "loss")
    with pytest.raises(UnknownLayerError, match="closest recorded layers"):
        run.channel_values("test", "block9.relu", 2)
    with pytest.raises(ValueError, match=r"statistic 'spatial_meen' is not recorded in this run; recorded: \["):
        run.layer_series("test", "block1.relu", "spatial_meen")
    with pytest.raises(ValueError, match=r"epoch 99 is not recorded in this run; recorded epochs 0..3"):
        run.channel_values("test", "block1.relu", 99)
    with pytest.raises(ValueError, match=r"split 'val' is not recorded"):
        run.histogram("val", "block1.relu", 0)
    with pytest.raises(ValueError, match=r"no histogram for epoch 7 .* recorded epochs 0..3"):
        run.histogram("test", "block1.relu", 7)
    # known names, all of them: the values
    assert run.metric("test", "loss").index.tolist() == [0, 1, 2, 3]


def test_plots_name_the_valid_splits_layers_and_statistics(run: History) -> None:
    with pytest.raises(plots.NoData, match=r"No layer sparsity for split 'validation'; .*\['train', 'test'\]"):
        plots.timeline(run, "validation")
    torch.manual_seed(0)
    tabular = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with pytest.warns(RuntimeWarning, match="no spatial extent"):
        report = measure(tabular, torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), nn.ReLU).compute()
    with pytest.raises(
        plots.NoData, match=r"records no 'spatial_mean'; recorded statistics: \['nonfinite', 'channel_mean'"
    ):
        plots.heatmap(report)  # (N, F) features: no spatial statistics; the message names the ones there are
    plots.heatmap(report, statistic="channel_mean")
    with pytest.raises(UnknownLayerError, match="closest recorded layers"):
        plots.distribution(run, "block9.relu")
    with pytest.raises(plots.NoData, match=r"no histograms for split 'val'; splits with histograms of it: \['train'"):
        plots.distribution(run, "block1.relu", split="val")


# --------------------------------------------------------------------------- 4. penalty() that cannot be missed
def test_penalty_outside_its_block_or_without_gradients_says_what_to_do() -> None:
    model, x = net1d().train(), sequences()
    penalty = SparsityPenalty(model, weight=0.1)
    model(x)
    with pytest.raises(RuntimeError, match=r"not attached.*inside `with penalty:`"):
        penalty()
    with penalty:
        with torch.no_grad():
            model(x)
        with pytest.raises(RuntimeError, match=r"ran under torch.no_grad\(\).*only after a training forward"):
            penalty()
        model(x)
        assert penalty().item() > 0
        with pytest.raises(RuntimeError, match=r"since the last penalty\(\) call"):
            penalty()
    with SparsityPenalty(model, weight=0.1, layer_weights=dict.fromkeys(SITES, 0.0)) as zero:
        model(x)
        assert zero().item() == 0.0  # every layer weighted 0: a forward was seen, the penalty is 0


# --------------------------------------------------------------------------- 5. shapes other than images
def test_squeeze_excitation_gates_are_left_out_of_the_default_selection() -> None:
    from torchvision.models import efficientnet_b0
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(0)
    model = efficientnet_b0().eval()
    gates = {
        f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, SqueezeExcitation) for c, _ in m.named_children()
    }
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all on one eval pass
        monitor = measure(model, x)
        report = monitor.compute()
    chosen = monitor.recorder.modules
    assert not gates & set(chosen)
    feature_acts = [n for n, m in model.features.named_modules() if isinstance(m, nn.SiLU)]
    assert len(chosen) == len([n for n in feature_acts if f"features.{n}" not in gates]) == 33
    spatial = report.layers[report.layers.statistic == "spatial_mean"]
    assert len(spatial) == len(monitor.layer_names) and np.isfinite(spatial.value).all()
    assert SparsityMonitor(model, "features.1.0.block.1.fc1").recorder.modules  # still selectable by name


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_tabular_features_are_measured_on_the_channel_axis_with_one_warning_per_layer() -> None:
    model = mlp()
    g = torch.Generator().manual_seed(5)
    train, test = [torch.randn(n, 10, generator=g) for n in (8, 8, 5)], [torch.randn(7, 10, generator=g)]
    monitor = SparsityMonitor(model, nn.ReLU)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for split, batches in (("train", train), ("test", test)):
            with monitor.track(split), torch.no_grad():
                for b in batches:
                    model(b)
        report = monitor.compute()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # one per layer: not per split, not per batch shape
    assert "layer '1' has no spatial extent (activations (N, 32))" in messages[0] and "channel axis" in messages[0]
    assert report.channels.value.notna().all() and report.layers.value.notna().all()  # no NaN rows
    assert "spatial_mean" not in set(report.layers.statistic)
    with torch.no_grad():
        hidden = model[1](model[0](torch.cat(train))).double().numpy()
    np.testing.assert_allclose(
        report.layer_value("train", "1", "channel_mean"), oracle.sparsity_rows(hidden).mean(), atol=ATOL
    )
    # the penalty measures the same axis
    with SparsityPenalty(model, "1", weight=1.0) as penalty:
        with pytest.warns(RuntimeWarning, match="channel-axis"):
            model(torch.cat(train))
        value = penalty().item()
    np.testing.assert_allclose(value, oracle.sparsity_rows(hidden).mean(), rtol=1e-5)


def test_sequences_n_c_l_are_measured_over_the_length_axis() -> None:
    model, x = net1d(), sequences()
    report = measure(model, x, "relu").compute()
    acts = model.reference(x)["relu"].double().numpy()  # (N, 16, 32)
    maps = oracle.sparsity_rows(acts)  # one value per (sample, channel): its sparsity along L
    got = report.channels[(report.channels.statistic == "spatial_mean")].value.to_numpy()
    np.testing.assert_allclose(got, maps.mean(0), rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- 6. plots for real models
def test_plots_take_the_report_of_one_eval_pass() -> None:
    model, x = net1d(), sequences()
    report = measure(model, x).compute()
    for draw in (plots.timeline, plots.heatmap, plots.distribution):
        got, want = {}, {}
        draw(report, data=got)
        draw(History.from_report(report), data=want)
        assert got.keys() == want.keys() and got
    with pytest.raises(TypeError, match="History .* or the SparsityReport of monitor.compute\\(\\), got dict"):
        plots.timeline({})


def test_distribution_of_thousands_of_channels_draws_a_chosen_few() -> None:
    h = synthetic_history(epochs=2, layers=("mlp",), channels=3072, seed=4)
    means = h.channel_values("test", "mlp", 1, "spatial_mean")
    sparsest_first = np.argsort(-means, kind="stable")
    drawn: dict = {}
    notes: list[str] = []
    plots.distribution(h, "mlp", data=drawn, notes=notes)
    assert drawn["order"].tolist() == [*sparsest_first[:32], *sparsest_first[-32:]] and drawn["channels"] == 3072
    assert any("showing 64 of 3072 channels" in n for n in notes)
    for channels, expected in ((10, sparsest_first[:10]), (-5, sparsest_first[-5:]), ([7, 3, 2999], None)):
        plots.distribution(h, "mlp", channels=channels, data=drawn)
        want = [c for c in sparsest_first if c in (7, 3, 2999)] if expected is None else list(expected)
        assert drawn["order"].tolist() == want
    with pytest.raises(ValueError, match=r"indices in \[0, 3072\)"):
        plots.distribution(h, "mlp", channels=[3072])


def test_timeline_with_65_layers_stays_legible() -> None:
    from xaisparse.plots import figure_png

    names = tuple(f"features.{i}.act" for i in range(65))
    h = synthetic_history(epochs=6, layers=names, channels=2, seed=5)
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "constrained_layout not applied"
        fig = plots.timeline(h, notes=notes)
        figure_png(fig)
    legend = fig.axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert not any(label.startswith("features.") for label in labels)  # losses and markers only
    box, frame = legend.get_window_extent(), fig.bbox
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
    assert any("65 layers: colour shows depth" in n for n in notes)
    drawn: dict = {}
    plots.timeline(h, layers=["features.1*"], data=drawn)  # globs choose layers
    assert list(drawn["frame"].columns) == ["features.1.act", *(f"features.{i}.act" for i in range(10, 20))]


# --------------------------------------------------------------------------- 7. fit's inputs and the CLI
class DictItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 32), "label": 0}


def test_fit_checks_its_data_first() -> None:
    model = net1d()
    x = sequences(8)
    good = TensorDataset(x, torch.arange(8) % 4)
    with pytest.raises(TypeError, match=r"train\[0\] is a dict with keys \['image', 'label'\]"):
        fit(model, DictItems(), good, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"test\[0\]'s label is a float tensor \(1\).*y.long\(\)"):
        fit(model, good, TensorDataset(x, torch.ones(8)), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"parameters are torch.float64 but the inputs of train\[0\] are torch.float32"):
        fit(net1d().double(), good, good, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"inputs of train\[0\] are torch.uint8"):
        fit(model, TensorDataset((x * 10).to(torch.uint8), torch.arange(8) % 4), None, epochs=1, progress=False)


def test_report_on_a_run_recorded_by_an_own_loop(tmp_path) -> None:
    model, x = net1d(), sequences()
    h = History(config={"name": "own loop"})
    for epoch in (1, 2, 3):  # an own loop: epochs from 1, no timing, no detector
        h.record_epoch(epoch, {"test": {"loss": 1.0 / epoch}}, measure(model, x).compute())
    h.save(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-m", "xaisparse.cli", "report", str(tmp_path / "run"), "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    first = out.splitlines()[0]
    assert first == "run: own loop  (3 recorded epochs, 1–3)", out
    assert "None" not in out and "no sparsity detector was run" in out
    assert "validated" not in out  # the detector's caveat only where a detector ran


def test_finding_functional_calls_leaves_the_model_as_it_was() -> None:
    """The fx trace neither runs a batch norm defined outside torch.nn (as timm's BatchNormAct2d) nor
    leaves the tensor constants of a forward on the model (as it did on MaxViT)."""

    class BatchNormAct(nn.BatchNorm1d):
        def __init__(self, c: int) -> None:
            super().__init__(c)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                self.num_batches_tracked.add_(1)  # as nn.BatchNorm does, in Python: a trace would run it
            return self.act(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training))

    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv1d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.c(x)) + torch.linspace(0, 1, 28)  # a tensor made in forward: a constant to fx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 3), BatchNormAct(4), Shifted(), nn.Flatten(), nn.LazyLinear(2))
    model(sequences(2))  # materialise the lazy layer; one real training step of the norm
    before = {k: (v.clone(), v._version) for k, v in model.state_dict(keep_vars=True).items()}
    attributes = {name: sorted(vars(m)) for name, m in model.named_modules()}
    for train in (True, False):
        model.train(train)
        SparsityMonitor(model)
        SparsityPenalty(model)
        exposed = expose_functional_activations(model)
        if not train:  # (a train-mode forward would move the running statistics itself)
            torch.testing.assert_close(exposed(sequences(3)), model(sequences(3)))
    for k, (value, version) in before.items():
        now = model.state_dict(keep_vars=True)[k]
        assert torch.equal(now, value) and now._version == version, k
    assert {name: sorted(vars(m)) for name, m in model.named_modules()} == attributes
