"""Sketch-conditioned DDPMs: pseudo-sketches, training pairs, guidance, and the CLI path."""

import json

import numpy as np
import pytest
import torch
from conftest import DSB_DIR, dim_and_bright_nuclei, run_cellsynth
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.ddpm.checkpoint import load_model
from cellsynth_cli.ddpm.patches import PatchSampler
from cellsynth_cli.ddpm.pseudo_sketch import pseudo_sketches
from cellsynth_cli.ddpm.synthesize import (
    SynthesisOptions,
    guided_predictor,
    synthesize_volume,
    with_defaults,
)
from cellsynth_cli.ddpm.tiling import TiledPredictor
from cellsynth_cli.diffusion.conditioning import (
    NULL_CONDITION,
    drop_condition,
    guided,
    network_input,
)
from cellsynth_cli.diffusion.defaults import GUIDANCE as DEFAULT_GUIDANCE
from cellsynth_cli.diffusion.process import sampling_timesteps
from cellsynth_cli.diffusion.unet import UNet, UNetConfig
from cellsynth_cli.errors import InputError
from cellsynth_cli.measure.matching import iou_matrix
from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.simulators import get_simulator

TINY = ["--channels", "8,16", "--batch", "2", "--lr", "2e-3", "--patch", "32,32"]


def _best_iou(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """For each reference instance, its best IoU with any predicted instance."""
    iou, _, _ = iou_matrix(pred, ref)
    return iou.max(axis=1) if iou.size else np.zeros(int(ref.max()))


@pytest.mark.parametrize("dims", [2, 3])
def test_pseudo_sketch_recovers_the_instances_of_a_simulated_image(dims):
    shape = [128, 128] if dims == 2 else [24, 96, 96]
    config = replace(
        load_preset("nuclei"),
        {
            "shape": shape,
            "voxel_size": [1.0] * dims,
            "radius": [7, 10],
            "n_cells": [18, 18] if dims == 2 else [14, 14],
            "intensity": [0.25, 0.9],  # dim nuclei beside bright ones
            "deform_strength": 0.0,
        },
        source="test",
    )
    rng = np.random.default_rng(3)
    made = get_simulator("nuclei")(config, rng)
    image = ndimage.gaussian_filter(made.sketch, 1.0) + rng.normal(0, 0.03, made.sketch.shape)
    image = (image * 900 + 100).astype(np.float32)
    [(sketch, labels)] = pseudo_sketches([image], 100.0, 1000.0)
    best = _best_iou(labels, made.masks)
    assert (best >= 0.7).mean() >= 0.7, best
    # each region is filled with its mean intensity on the unit scale, background 0
    assert sketch[labels == 0].max() == 0.0
    region = labels == labels.max()
    expected = (image[region].mean() - 100.0) / 900.0
    assert sketch[region].mean() == pytest.approx(expected, abs=0.02)


def test_pseudo_sketch_of_an_empty_image_is_a_clear_error():
    with pytest.raises(InputError, match="no nuclei"):
        pseudo_sketches([np.full((64, 64), 5.0, np.float32)], 0.0, 10.0)


def test_training_patches_of_image_and_sketch_stay_aligned():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(40, 36)).astype(np.float32)
    sampler = PatchSampler([volume], (16, 16), 2, conditions=[volume * 2.0])
    patches = sampler.sample(32, torch.Generator().manual_seed(1))
    assert patches.shape == (32, 2, 16, 16)
    torch.testing.assert_close(patches[:, 1], patches[:, 0] * 2.0)


def test_unconditional_patches_draw_the_same_stream_as_before():
    """One channel: identical patches from the same generator (the old layout's stream)."""
    volume = np.arange(40 * 36, dtype=np.float32).reshape(40, 36)
    patches = PatchSampler([volume], (16, 16), 2).sample(4, torch.Generator().manual_seed(5))
    assert patches.shape == (4, 1, 16, 16)
    # every patch is a flipped/rotated crop of the volume: its values are a crop's values
    for p in patches[:, 0].numpy():
        corner = p.min()
        y, x = divmod(int(corner), 36)
        assert set(p.ravel()) == set(volume[y : y + 16, x : x + 16].ravel())


def test_condition_dropout_replaces_whole_sketches_with_null():
    cond = torch.full((2000, 1, 4, 4), -1.0)
    dropped = drop_condition(cond, 0.25, torch.Generator().manual_seed(0))
    null = (dropped == NULL_CONDITION).flatten(1).all(dim=1)
    kept = (dropped == -1.0).flatten(1).all(dim=1)
    assert bool((null | kept).all())
    assert 0.2 < float(null.float().mean()) < 0.3
    assert torch.equal(drop_condition(cond, 0.0, torch.Generator()), cond)


def _tiny_conditional_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(dims=2, in_channels=2, channels=(8, 16)))
    for p in net.parameters():  # non-zero output layer: the prediction depends on the input
        torch.nn.init.normal_(p, std=0.2)
    return net.eval()


def test_guidance_mixes_conditional_and_unconditional_predictions():
    net = _tiny_conditional_unet()
    x = torch.randn(3, 1, 16, 16)
    sketch = torch.rand(3, 1, 16, 16) * 2 - 1
    t = torch.tensor([10, 500, 900])
    stacked = network_input(x, sketch)
    with torch.no_grad():
        cond = net(stacked, t)
        uncond = net(network_input(x, torch.full_like(sketch, NULL_CONDITION)), t)
        assert not torch.allclose(cond, uncond)
        torch.testing.assert_close(guided(net, 0.0)(stacked, t), uncond)
        torch.testing.assert_close(guided(net, 1.0)(stacked, t), cond)
        torch.testing.assert_close(guided(net, 3.0)(stacked, t), uncond + 3.0 * (cond - uncond))


@pytest.mark.parametrize("share,n_guided", [(1.0, 10), (0.25, 3), (0.0, 0)])
def test_guidance_share_guides_the_noisiest_steps_only(share, n_guided):
    net = _tiny_conditional_unet()
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])  # on a CPU a guided step is two calls: cond, then null
        return net(x, t)

    sketch = torch.rand(1, 1, 16, 16) * 2 - 1
    plain = TiledPredictor(counted, (16, 16), (16, 16), (0, 0), 1, "cpu", sketch)
    options = SynthesisOptions(t_start=100, steps=10, guidance=3.0, guidance_share=share)
    eps = guided_predictor(plain, counted, options, 1000)
    x = torch.randn(1, 1, 16, 16)
    per_step = []
    with torch.no_grad():
        for i, t in enumerate(sampling_timesteps(100, 10, 1000)):
            w = 3.0 if i < n_guided else 1.0
            want = TiledPredictor(guided(net, w), (16, 16), (16, 16), (0, 0), 1, "cpu", sketch)
            before = len(calls)
            torch.testing.assert_close(eps(x, t), want(x, t))
            per_step.append(len(calls) - before)
    assert per_step == [2] * n_guided + [1] * (10 - n_guided)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    made = run_cellsynth(
        "train",
        "--data",
        DSB_DIR,
        "-o",
        out,
        "--condition",
        "pseudo-sketch",
        "--steps",
        3,
        "--checkpoint-every",
        2,
        "--json",
        *TINY,
    )
    assert made.returncode == 0, made.stderr
    return out


def test_a_conditional_model_trains_resumes_and_says_so(conditional_run):
    state = torch.load(conditional_run / "checkpoint.pt", weights_only=True)
    assert state["config"]["condition"] == "pseudo-sketch"
    assert state["unet"]["in_channels"] == 2
    config = json.loads((conditional_run / "config.json").read_text())
    assert config["pseudo_sketches"]["nuclei_per_image"][0] > 20
    assert (conditional_run / "pseudo-sketch.png").stat().st_size > 0
    resumed = run_cellsynth("train", "--resume", "-o", conditional_run, "--steps", 4, "--json")
    assert resumed.returncode == 0, resumed.stderr
    state = torch.load(conditional_run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["condition"] == "pseudo-sketch"


def test_a_conditional_model_synthesizes_from_sketches_through_the_cli(conditional_run, tmp_path):
    sim = run_cellsynth(
        "simulate", "hela", "-n", 1, "-o", tmp_path / "sim", "--shape", "40,48", "--seed", 1
    )
    assert sim.returncode == 0, sim.stderr
    out = tmp_path / "synth"
    args = ["--model", conditional_run, "--sketches", tmp_path / "sim", "--steps", 3]
    made = run_cellsynth("synthesize", *args, "--t-start", 1000, "-o", out)
    assert made.returncode == 0, made.stderr
    volume = io.read_volume(io.list_volumes(out)[0])
    assert volume.image.shape == (40, 48) and np.isfinite(volume.image).all()
    made_by = io.read_provenance(io.list_volumes(out)[0])
    # no --guidance: a conditional model is guided with the default w = 2
    assert made_by["conditional"] is True and made_by["guidance"] == DEFAULT_GUIDANCE == 2.0
    # resuming with another guidance would mix two sets
    again = run_cellsynth(
        "synthesize", *args, "--t-start", 1000, "-o", out, "--resume", "--guidance", 1
    )
    assert again.returncode == 2 and "guidance" in again.stderr


def test_a_conditional_model_refuses_to_synthesize_without_a_sketch(conditional_run):
    model = load_model(conditional_run)
    start = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="needs a sketch"):
        synthesize_volume(model, start, SynthesisOptions(t_start=5), 0, torch.device("cpu"))
    # with one it works, from any start
    out = synthesize_volume(
        model, start, SynthesisOptions(t_start=5), 0, torch.device("cpu"), condition=start
    )
    assert out.shape == (32, 32)


def test_guidance_needs_a_conditional_model(tmp_path):
    from cellsynth_cli.ddpm.checkpoint import save_checkpoint

    net = UNet(UNetConfig(dims=2, channels=(8, 16)))
    save_checkpoint(
        tmp_path / "checkpoint.pt",
        {
            "config": {"patch": [32, 32], "T": 1000, "schedule": "cosine"},
            "unet": net.config.to_dict(),
            "normalization": {"low": 0.0, "high": 1.0},
            "dims": 2,
            "step": 0,
            "ema": net.state_dict(),
        },
    )
    model = load_model(tmp_path)
    sketch = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="not a conditional model"):
        synthesize_volume(
            model, sketch, SynthesisOptions(t_start=5, guidance=2.0), 0, torch.device("cpu")
        )
    # an unconditional model ignores the condition: the same image with or without it
    options = SynthesisOptions(t_start=5)
    assert with_defaults(model, options).guidance == 1.0  # unguided unless asked
    plain = synthesize_volume(model, sketch, options, 0, torch.device("cpu"))
    given = synthesize_volume(model, sketch, options, 0, torch.device("cpu"), condition=sketch)
    np.testing.assert_array_equal(plain, given)


def test_phantom_and_vanished_cells_are_found_without_a_trained_model():
    from cellsynth_cli.measure.qc import phantom_vanished

    config = replace(
        load_preset("nuclei"),
        {"shape": [128, 128], "radius": [7, 9], "n_cells": [16, 16], "deform_strength": 0.0},
        source="test",
    )
    rng = np.random.default_rng(7)
    made = get_simulator("nuclei")(config, rng)

    def photograph(sketch):
        blurred = ndimage.gaussian_filter(sketch, 1.0)
        return blurred + rng.normal(0, 0.03, sketch.shape).astype(np.float32)

    faithful = phantom_vanished(photograph(made.sketch), made.masks)
    assert faithful["phantom"] <= 0.1 and faithful["vanished"] <= 0.1
    # erase half of the cells from the image: they vanished
    ids = np.unique(made.masks[made.masks > 0])
    erased = made.sketch * ~np.isin(made.masks, ids[::2])
    lost = phantom_vanished(photograph(erased), made.masks)
    assert 0.35 <= lost["vanished"] <= 0.65
    # the image keeps its cells but half of the masks are gone: the unmatched are phantoms
    kept_masks = made.masks * np.isin(made.masks, ids[::2])
    extra = phantom_vanished(photograph(made.sketch), kept_masks)
    assert 0.35 <= extra["phantom"] <= 0.65 and extra["vanished"] <= 0.1


def test_qc_aware_t_start_keeps_the_most_cells_among_realistic_enough_t():
    from cellsynth_cli.ddpm.noise_analysis import recommend_t_start_qc

    timesteps = [0, 200, 400, 600, 800]
    kld = [3.0, 0.5, 0.06, 0.004, 0.001]
    qc = [
        {"t": 200, "phantom": 0.0, "vanished": 0.0},  # keeps every cell but KLD too high
        {"t": 400, "phantom": 0.05, "vanished": 0.1},
        {"t": 600, "phantom": 0.2, "vanished": 0.3},
        {"t": 800, "phantom": 0.05, "vanished": 0.1},  # a tie with 400: the larger t
    ]
    assert recommend_t_start_qc(timesteps, kld, qc, 0.1) == 800
    qc[3] = {"t": 800, "phantom": 0.4, "vanished": 0.4}
    assert recommend_t_start_qc(timesteps, kld, qc, 0.1) == 400
    assert recommend_t_start_qc(timesteps, kld, qc, 0.01) == 600
    assert recommend_t_start_qc(timesteps, kld, qc, 0.0001) is None


def test_noise_analysis_qc_through_the_cli(conditional_run, tmp_path):
    sim = run_cellsynth(
        "simulate", "hela", "-n", 1, "-o", tmp_path / "sim", "--shape", "64,64", "--seed", 2
    )
    assert sim.returncode == 0, sim.stderr
    args = ["noise-analysis", "--images", DSB_DIR, "--model", conditional_run, "--t", "0,300,600"]
    done = run_cellsynth(*args, "--steps", 2, "--qc", tmp_path / "sim", "--crop", "64,64", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [row["t"] for row in result["qc"]] == [300, 600]
    assert all(0.0 <= row["phantom"] <= 1.0 for row in result["qc"])
    assert result["qc_t_start"] in (None, 300, 600)
    refused = run_cellsynth("noise-analysis", "--images", DSB_DIR, "--qc", tmp_path / "sim")
    assert refused.returncode == 2 and "--qc needs --model" in refused.stderr


def test_classical_qc_moves_aside_images_that_lost_their_cells(tmp_path):
    """segment qc --judge classical: no model, no labels; an image that kept its cells passes,
    one whose dim half vanished fails on vanished and is moved aside."""
    config = replace(
        load_preset("nuclei"),
        {"shape": [128, 128], "voxel_size": [1.0, 1.0], "radius": [7, 10], "n_cells": [16, 16],
         "intensity": [0.5, 0.9], "deform_strength": 0.0},
        source="test",
    )  # fmt: skip
    rng = np.random.default_rng(5)
    made = get_simulator("nuclei")(config, rng)
    faithful = ndimage.gaussian_filter(made.sketch, 1.0) + rng.normal(0, 0.03, made.sketch.shape)
    # the same masks, but half of the cells erased from the image
    erased = faithful.copy()
    ids = np.unique(made.masks[made.masks > 0])
    gone = np.isin(made.masks, ids[::2])
    erased[gone] = rng.normal(0, 0.03, gone.sum())
    data = tmp_path / "synth"
    for name, image in (("faithful", faithful), ("erased", erased)):
        volume = io.Volume(name, image=(image * 900 + 100).astype(np.float32), masks=made.masks)
        io.write_volume(data, volume)
    result = run_cellsynth(
        "segment", "qc", "--judge", "classical", "--data", data, "--max-vanished", "0.3",
        "--move-failed", tmp_path / "rejected", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {r["name"]: r for r in report["volumes"]}
    assert report["judge"] == "classical"
    assert rows["faithful"]["vanished"] <= 0.2 and rows["faithful"]["phantom"] <= 0.2
    assert rows["erased"]["vanished"] >= 0.4
    assert report["passed"] == ["faithful"] and report["failed"] == ["erased"]
    assert [io.volume_name(p) for p in io.list_volumes(data)] == ["faithful"]
    assert [io.volume_name(p) for p in io.list_volumes(tmp_path / "rejected")] == ["erased"]
    # a bad judge name is one line and exit 2
    bad = run_cellsynth("segment", "qc", "--judge", "oracle", "--data", data)
    assert bad.returncode == 2 and "--judge must be model or classical" in bad.stderr


def test_label_sketches_are_drawn_from_each_images_own_masks(tmp_path):
    from cellsynth_cli.ddpm.train import load_training_images, training_sketches
    from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels

    found = load_training_images(DSB_DIR, None)
    ((sketch, labels),) = training_sketches(found, "label-sketch", 10.0, 200.0)
    np.testing.assert_array_equal(labels, found.masks[0])
    np.testing.assert_array_equal(sketch, sketch_from_labels(found.images[0], labels, 10, 200)[0])
    unlabelled = io.Volume("plain", image=found.images[0])
    io.write_volume(tmp_path / "plain", unlabelled)
    with pytest.raises(InputError, match="plain has no labelled cell"):
        training_sketches(load_training_images(tmp_path / "plain", None), "label-sketch", 0, 1)


FINE_TUNE = ["--batch", "2", "--patch", "32,32", "--steps", "1", "--json"]


def test_fine_tuning_starts_from_the_init_models_weights(conditional_run, tmp_path):
    out = tmp_path / "tuned"
    # one step at a vanishing learning rate: the weights are still the --init model's
    args = ["--data", DSB_DIR, "--condition", "label-sketch", "--lr", "1e-12", *FINE_TUNE]
    made = run_cellsynth("train", *args, "--init", conditional_run, "-o", out)
    assert made.returncode == 0, made.stderr
    start = torch.load(conditional_run / "checkpoint.pt", weights_only=True)
    tuned = torch.load(out / "checkpoint.pt", weights_only=True)
    assert tuned["unet"] == start["unet"] and tuned["config"]["condition"] == "label-sketch"
    for name, weight in start["ema"].items():
        torch.testing.assert_close(tuned["ema"][name], weight, atol=1e-6, rtol=0)
    assert tuned["init"]["model"] == str(conditional_run.resolve())
    assert tuned["init"]["step"] == start["step"]
    config = json.loads((out / "config.json").read_text())
    real_cells = len(np.unique(io.read_volume(DSB_DIR / "dsb2018.tif").masks)) - 1
    assert config["label_sketches"]["nuclei_per_image"] == [real_cells]
    assert config["init"] == tuned["init"]
    assert (out / "label-sketch.png").stat().st_size > 0
    resumed = run_cellsynth("train", "--resume", "-o", out, "--steps", 2, "--json")
    assert resumed.returncode == 0, resumed.stderr
    again = torch.load(out / "checkpoint.pt", weights_only=True)
    assert again["step"] == 2 and again["init"] == tuned["init"]
    assert again["config"]["channels"] == start["unet"]["channels"]  # the network's, recorded
    # resumed at its budget: the checkpoint stays byte for byte (synthesis records checksums)
    before = (out / "checkpoint.pt").read_bytes()
    at_budget = run_cellsynth("train", "--resume", "-o", out, "--steps", 2, "--json")
    assert at_budget.returncode == 0, at_budget.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--condition", "none"], "was trained with --condition pseudo-sketch"),
        (["--condition", "label-sketch", "--channels", "8,16"], "--channels and --init"),
        (["--condition", "label-sketch", "--init", "nowhere"], "no checkpoint at"),
        (["--condition", "label-sketch", "--resume"], "--resume continues a run"),
    ],
)
def test_fine_tuning_refuses_a_model_that_does_not_fit(conditional_run, tmp_path, extra, message):
    out = tmp_path / "tuned"
    init = ["--init", conditional_run]  # a later --init wins
    made = run_cellsynth("train", "--data", DSB_DIR, *init, "-o", out, *FINE_TUNE, *extra)
    assert made.returncode == 2, made.stderr
    assert message in made.stderr and "Traceback" not in made.stderr
    assert not (out / "checkpoint.pt").exists()


def test_pseudo_sketches_hold_the_dim_nuclei_beside_bright_ones():
    """The DDPM is taught on the nuclei the fit simulates: a nucleus five to ten times dimmer
    than its neighbours is in the pseudo-sketch (else it is learned as background)."""
    image, masks, level = dim_and_bright_nuclei()
    [(sketch, labels)] = pseudo_sketches([image * 1000 + 100], 100.0, 1100.0)
    for nucleus in range(1, int(masks.max()) + 1):
        inside = masks == nucleus
        assert np.mean(labels[inside] > 0) > 0.5, (nucleus, level[nucleus])
        assert len(np.unique(labels[inside & (labels > 0)])) == 1  # one region each
    dim = masks == 1
    assert 0 < np.median(sketch[dim]) < 0.5 * np.median(sketch[masks == 2])
