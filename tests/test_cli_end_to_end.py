"""train.py, sample.py, eval_fid.py and calibrate_skiptune.py with Hydra overrides, checked through
the files and lines they write.

The command lines run in this process (helpers.run_cli: the script's Hydra main with sys.argv set,
its output captured, its exit code from SystemExit), as a separate Python process would spend most of
its time importing torch and diffusers; each is run once, when the first test that reads it asks
(`runs.get(name)`), and kept for the others. The same scripts run in processes of their own in
test_cli.py (sample.py), test_evaluation.py (eval_fid.py, one and two processes), test_skip_tuning.py
(calibrate_skiptune.py) and under `accelerate launch` (train.py: test_gan_objective.py,
test_reflow_multiprocess.py, test_reflow_multiprocess_resume.py).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from fewstep import samplers
from helpers import ROOT, ok, run_cli, the_error
from fewstep.evaluation import frechet_distance, save_stats

# A 45k-parameter 8x8 UNet on 8x8 digits, 12 steps, a checkpoint every 4 steps (2 kept), a loss row every 2.
TRAIN = ["net=unet_tiny", "data.image_size=8", "train.steps=12", "train.batch_size=16", "train.lr=2e-3",
         "train.warmup_steps=0", "train.ema_decay=0.9", "train.checkpoint_every=4", "train.keep_checkpoints=2",
         "train.log_every=2", "seed=3"]
# The schedule overrides of two sampling runs (the analytic mixture, and the model trained here, whose
# own range is 0.01..157), with what samplers.get_sigmas must then have been given.
GMM = ["model=gmm", "num_samples=64", "batch_size=64"]
SCHEDULES = {
    "logsnr": (["sampler=heun", "nfe=7", "schedule.kind=logsnr", "schedule.sigma_max=40"],
               dict(name="heun", nfe=7, kind="logsnr", sigma_max=40.0)),
    "karras_rho3": (["sampler=dpmpp_2m", "nfe=5", "schedule.sigma_max=80", "schedule.sigma_min=0.05", "schedule.rho=3"],
                    dict(name="dpmpp_2m", nfe=5, kind="karras", sigma_max=80.0, sigma_min=0.05, rho=3.0)),
}
EVAL_REFERENCE = (np.array([0.5, -0.25]), np.array([[2.0, 0.3], [0.3, 1.5]]))  # an arbitrary Gaussian
CALIBRATE = ["sampler=ddim", "nfes=[3]", "rho_grid=[0.8,1.0]", "num_samples=64", "batch_size=64", "write=true"]


def run(script, *overrides):
    """`python scripts/<script> <overrides>`, in this process (helpers.run_cli; ok() shows its seconds)."""
    return run_cli(script, *overrides)


def files_state(root: Path) -> dict:
    """Every file under `root` with its size and modification time (a rewrite changes the time)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def exported_weights(out):
    return load_file(out / "model" / "unet" / "diffusion_pytorch_model.safetensors")


# -- the commands (each a function of the module's temporary directory) ----------------------------
def _train(tmp):
    """Train 12 steps; then, as after a kill between the checkpoints of steps 8 and 12, remove the last
    checkpoint and the export and run the same command again; then sample the exported model (with
    the karras_rho3 schedule)."""
    out = tmp / "train"
    first = run("train.py", *TRAIN, f"out_dir={out}")
    if first.returncode:
        return {"first": first}
    state = {"first": first, "out": out, "checkpoints": sorted(p.name for p in (out / "checkpoints").iterdir()),
             "loss_rows": list(csv.reader(open(out / "loss.csv", newline=""))), "weights": exported_weights(out),
             "step_8": files_state(out / "checkpoints" / "step_00000008"),
             "model_files": sorted(str(p.relative_to(out / "model")) for p in (out / "model").rglob("*") if p.is_file())}
    shutil.rmtree(out / "checkpoints" / "step_00000012")
    shutil.rmtree(out / "model")
    state["again"] = run("train.py", *TRAIN, f"out_dir={out}")
    state["sample"] = run("sample.py", "model=diffusers", f"model.path={out / 'model'}", "num_samples=5",
                          *SCHEDULES["karras_rho3"][0], f"out_dir={tmp / 'sample-karras_rho3'}")
    return state


def _train_bf16(tmp):
    return run("train.py", *TRAIN, "train.mixed_precision=bf16", f"out_dir={tmp / 'train-bf16'}")


def image_folder(tmp) -> Path:
    """24 RGB PNGs of 10x10 (12 of them one folder down) and a file that is no image."""
    root = tmp / "images"
    rng = np.random.default_rng(0)
    for i in range(24):
        path = root / ("nested" if i % 2 else ".") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)
    (root / "notes.txt").write_text("not an image\n")
    return root


# One batch is all 24 images: a run that missed the nested ones (12, fewer than a batch) or took the
# text file for an image would stop with an error.
IMAGE_FOLDER = ["data=image_folder", "data.image_size=8", "data.channels=1", "net.in_channels=1", "net.out_channels=1",
                "train.steps=4", "train.batch_size=24", "train.log_every=2", "train.checkpoint_every=100"]


def _train_image_folder(tmp):
    return run("train.py", "net=unet_tiny", *IMAGE_FOLDER, f"data.root={image_folder(tmp)}",
               f"out_dir={tmp / 'train-images'}")


def _train_image_folder_missing(tmp):
    return run("train.py", "net=unet_tiny", *IMAGE_FOLDER, f"data.root={tmp / 'no-such-folder'}",
               f"out_dir={tmp / 'train-missing'}")


def _sample_logsnr(tmp):
    return run("sample.py", *GMM, *SCHEDULES["logsnr"][0], f"out_dir={tmp / 'sample-logsnr'}")


def _sample_discrete(tmp):
    return run("sample.py", "sampler=ddim", "nfe=4", "schedule.kind=discrete", "schedule.spacing=trailing",
               "num_samples=4", f"out_dir={tmp / 'sample-discrete'}")


def _eval(tmp):
    """The FD of the logsnr run's samples (same model, sampler, grid and seeds) to a saved Gaussian."""
    reference = save_stats(tmp / "reference.npz", *EVAL_REFERENCE)
    return run("eval_fid.py", *GMM, *SCHEDULES["logsnr"][0], "extractor=raw", f"reference={reference}",
               f"out_dir={tmp / 'eval'}")


def _eval_missing(tmp):
    return run("eval_fid.py", *GMM, "steps=2", "extractor=raw", f"reference={tmp / 'missing.npz'}",
               f"out_dir={tmp / 'eval-missing'}")


def _calibrate(tmp):
    table = tmp / "tables" / "ddim.json"
    tracked = (ROOT / "assets" / "digits_ddpm" / "skiptune" / "ddim.json").read_bytes()
    done = run("calibrate_skiptune.py", *CALIBRATE, f"table={table}", f"cache_dir={tmp / 'cache'}",
               f"out_dir={tmp / 'calibrate'}")
    return {"done": done, "table": table, "tracked_before": tracked,
            "tracked_after": (ROOT / "assets" / "digits_ddpm" / "skiptune" / "ddim.json").read_bytes()}


JOBS = {f.__name__.lstrip("_"): f for f in (
    _train, _calibrate, _eval, _train_bf16, _sample_logsnr, _train_image_folder,
    _sample_discrete, _train_image_folder_missing, _eval_missing)}


class Runs:
    """Each command (chain) of JOBS run once, when first asked for, in this process."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.results = {}

    def get(self, name):
        if name not in self.results:
            self.results[name] = JOBS[name](self.tmp)
        return self.results[name]


def needs(*names):
    """The commands a test reads (documentation: `runs.get` runs each the first time it is asked for)."""
    def mark(test):
        test.needs = names
        return test
    return mark


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pool = Runs(tmp_path_factory.mktemp("cli"))
    yield pool
    print("\ncommand seconds:", {name: round(getattr(r, "seconds", 0), 1) for name, r in pool.results.items()
                                  if not isinstance(r, dict)})


# -- 1. train.py: checkpoints, loss.csv, the export, the resume; the export samples ---------------
@needs("train")
def test_training_writes_the_checkpoints_it_keeps_the_loss_log_and_a_pipeline(runs):
    r = runs.get("train")
    ok(r["first"])
    assert r["checkpoints"] == ["step_00000008", "step_00000012"]  # every 4 steps, the last 2 kept
    assert r["loss_rows"][0] == ["step", "loss", "lr"]
    assert [int(row[0]) for row in r["loss_rows"][1:]] == [2, 4, 6, 8, 10, 12]
    assert all(float(row[1]) > 0 and float(row[2]) == 2e-3 for row in r["loss_rows"][1:])
    assert r["model_files"] == ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                                "unet/diffusion_pytorch_model.safetensors"]
    assert f"exported the EMA model to {r['out'] / 'model'}" in r["first"].stdout


@needs("train")
def test_the_same_command_resumes_from_the_last_checkpoint_and_ends_where_an_unstopped_run_did(runs):
    r = runs.get("train")
    ok(r["first"])
    out = r["out"]
    again = ok(r["again"])
    assert f"resumed from {out / 'checkpoints' / 'step_00000008'} at step 8" in again.stdout
    assert files_state(out / "checkpoints" / "step_00000008") == r["step_8"]  # steps 1-8 were not redone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000008", "step_00000012"]
    assert list(csv.reader(open(out / "loss.csv", newline=""))) == r["loss_rows"]  # rows 10 and 12 once, the same
    weights = exported_weights(out)
    assert weights.keys() == r["weights"].keys()
    assert all(torch.equal(weights[k], r["weights"][k]) for k in weights)


@needs("train")
def test_the_exported_model_samples_from_the_command_line(runs):
    r = runs.get("train")
    ok(r["first"])
    done = ok(r["sample"])
    assert "dpmpp_2m {}: 5 steps, NFE 5, sigma 80 -> 0.05 -> 0, 5 samples of (1, 8, 8)" in done.stdout
    with np.load(runs.tmp / "sample-karras_rho3" / "samples.npz") as npz:
        samples = npz["samples"]
    assert samples.shape == (5, 1, 8, 8)
    assert samples.min() >= -1 and samples.max() <= 1 and samples.std() > 0.01


# -- 2. bf16 on the CPU -------------------------------------------------------------------------
@needs("train", "train_bf16")
def test_bf16_mixed_precision_trains_and_changes_the_weights(runs):
    done = runs.get("train_bf16")
    refusal = done.stderr.strip().splitlines()[-1:] if done.returncode else []
    if refusal and refusal[0].startswith("error:") and "bf16" in refusal[0]:
        pytest.skip(f"accelerate refuses bf16 on this CPU: {refusal[0]}")
    ok(done)
    fp32 = runs.get("train")
    ok(fp32["first"])
    bf16 = exported_weights(runs.tmp / "train-bf16")
    assert all(w.dtype == torch.float32 for w in bf16.values())  # autocast, not bf16 weights
    # The fp32 run is reproducible to the bit (the resumed run above ends on it), so any difference is
    # the bf16 autocast; a few steps keep it small.
    diff = max((bf16[k] - fp32["weights"][k]).abs().max().item() for k in bf16)
    assert 0 < diff < 0.05, diff
    rows = list(csv.reader(open(runs.tmp / "train-bf16" / "loss.csv", newline="")))
    assert [int(row[0]) for row in rows[1:]] == [2, 4, 6, 8, 10, 12]


# -- 3. data=image_folder -----------------------------------------------------------------------
@needs("train_image_folder", "train_image_folder_missing")
def test_training_reads_an_image_folder_and_names_a_missing_one(runs):
    out = runs.tmp / "train-images"
    ok(runs.get("train_image_folder"))
    rows = list(csv.reader(open(out / "loss.csv", newline="")))
    assert rows[0] == ["step", "loss", "lr"] and [int(row[0]) for row in rows[1:]] == [2, 4]
    config = json.loads((out / "model" / "unet" / "config.json").read_text())
    assert (config["in_channels"], config["out_channels"], config["sample_size"]) == (1, 1, 8)
    resolved = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert resolved.data == {"_target_": "fewstep.training.data.ImageFolder", "root": str(runs.tmp / "images"),
                             "image_size": 8, "channels": 1}

    missing = runs.get("train_image_folder_missing")
    assert the_error(missing) == f"error: image folder does not exist: {runs.tmp / 'no-such-folder'}"
    assert not (runs.tmp / "train-missing" / "checkpoints").exists()


# -- 4. sample.py: nfe= and schedule.* --------------------------------------------------------
def gmm_denoiser():
    from hydra.utils import instantiate

    return instantiate(OmegaConf.load(ROOT / "conf" / "model" / "gmm.yaml"))


@pytest.mark.parametrize("which", ["logsnr", "karras_rho3"])
@needs("sample_logsnr", "train")
def test_sampling_uses_the_grid_and_nfe_of_the_schedule_overrides(runs, which):
    if which == "logsnr":
        done, model = ok(runs.get("sample_logsnr")), gmm_denoiser()
    else:
        trained = runs.get("train")
        ok(trained["first"])
        done, model = ok(trained["sample"]), samplers.DiffusersUNetDenoiser.from_pretrained(trained["out"] / "model")
    want = SCHEDULES[which][1]
    steps = samplers.steps_for_nfe(want["name"], want["nfe"])
    expected = samplers.get_sigmas(want["kind"], steps, sigma_min=want.get("sigma_min", model.sigma_min),
                                   sigma_max=want["sigma_max"], rho=want.get("rho", 7.0)).numpy()
    own = samplers.get_sigmas("karras", steps, model.sigma_min, model.sigma_max).numpy()  # without the overrides
    with np.load(runs.tmp / f"sample-{which}" / "samples.npz") as npz:
        sigmas, nfe, sampler, stored_steps = npz["sigmas"], npz["nfe"], str(npz["sampler"]), int(npz["steps"])
    assert (sampler, stored_steps) == (want["name"], steps)
    np.testing.assert_allclose(sigmas, expected, rtol=1e-12, atol=0)
    assert not np.allclose(sigmas, own)
    assert float(nfe) == want["nfe"]
    assert f"NFE used per sample: {want['nfe']}" in done.stdout.splitlines()


@needs("sample_discrete")
def test_discrete_trailing_sampling_uses_diffusers_trailing_timesteps(runs):
    done = ok(runs.get("sample_discrete"))
    digits = samplers.DiffusersUNetDenoiser.from_pretrained(ROOT / "assets" / "digits_ddpm")
    trailing = samplers.get_sigmas("discrete", 4, alphas_cumprod=digits.alphas_cumprod, spacing="trailing").numpy()
    leading = samplers.get_sigmas("discrete", 4, alphas_cumprod=digits.alphas_cumprod, spacing="leading").numpy()
    with np.load(runs.tmp / "sample-discrete" / "samples.npz") as npz:
        sigmas, nfe, samples = npz["sigmas"], npz["nfe"], npz["samples"]
    np.testing.assert_allclose(sigmas, trailing, rtol=1e-12, atol=0)
    assert sigmas[0] == pytest.approx(digits.sigma_max) and not np.allclose(sigmas, leading)
    assert float(nfe) == 4 and "NFE used per sample: 4" in done.stdout.splitlines()
    assert samples.shape == (4, 1, 16, 16)


# -- 5. eval_fid.py reference=PATH.npz ------------------------------------------------------------
@needs("eval", "sample_logsnr", "eval_missing")
def test_eval_against_saved_statistics_is_the_frechet_distance_of_the_samples_statistics(runs):
    done = ok(runs.get("eval"))
    ok(runs.get("sample_logsnr"))  # the same model, sampler, grid, number and seeds of samples
    with np.load(runs.tmp / "sample-logsnr" / "samples.npz") as npz:
        x = npz["samples"].astype(np.float64)
    expected = frechet_distance(x.mean(0), np.cov(x, rowvar=False), *EVAL_REFERENCE)
    line = next(line for line in done.stdout.splitlines() if line.startswith("FD-raw "))
    printed = float(line.split()[1])
    assert printed == pytest.approx(expected, abs=1e-4), line
    assert "NFE 7, 64 samples" in line
    result = json.loads((runs.tmp / "eval" / "fd-raw-heun-steps4.json").read_text())
    assert result["fd"] == pytest.approx(expected, rel=1e-5)
    assert (result["nfe"], result["num_samples"], result["reference"]) == (7, 64, str(runs.tmp / "reference.npz"))

    assert the_error(runs.get("eval_missing")) == f"error: statistics file does not exist: {runs.tmp / 'missing.npz'}"


# -- 6. calibrate_skiptune.py write=true table=PATH -----------------------------------------------
def calibrate_config(*overrides):
    from hydra import compose, initialize_config_dir

    from fewstep.scripts import calibrate_skiptune  # noqa: F401  (registers the schema conf/calibrate.yaml names)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("calibrate", overrides=list(overrides))


def test_calibration_writes_no_table_unless_asked(tmp_path):
    from fewstep.cli.setup import model_of
    from fewstep.scripts import calibrate_skiptune

    cfg = calibrate_config()
    assert cfg.write is False and cfg.table is None
    model = model_of(cfg)
    assert calibrate_skiptune.table_path(cfg, model) == ROOT / "assets" / "digits_ddpm" / "skiptune" / "ddim.json"
    assert calibrate_skiptune.table_path(calibrate_config(f"table={tmp_path}/t.json"), model) == tmp_path / "t.json"
    # Refused before any sampling (main as Hydra calls it, unwrapped): a table path without write=true, a
    # directory, a model without a directory to store beside, an adaptive sampler.
    unwrapped = calibrate_skiptune.main.__wrapped__.__wrapped__
    with pytest.raises(ValueError, match=re.escape(f"table={tmp_path}/t.json is only written with write=true")):
        unwrapped(calibrate_config(f"table={tmp_path}/t.json"))
    with pytest.raises(ValueError, match=re.escape(f"table={tmp_path} is a directory")):
        unwrapped(calibrate_config(f"table={tmp_path}", "write=true"))
    with pytest.raises(ValueError, match=re.escape("GMMDenoiser was not loaded from a directory: give write=true a "
                                                   "table=FILE")):
        unwrapped(calibrate_config("model=gmm", "write=true"))
    with pytest.raises(ValueError, match=re.escape("Skip-Tuning is calibrated for fixed-grid samplers, got 'dopri5'")):
        unwrapped(calibrate_config("sampler=dopri5"))


@needs("calibrate")
def test_calibration_writes_the_best_rho_per_nfe_where_asked(runs):
    r = runs.get("calibrate")
    done = ok(r["done"])
    assert r["tracked_after"] == r["tracked_before"]  # the tracked table is left alone
    assert len(list((runs.tmp / "cache").glob("digits-*-digits.npz"))) == 1  # the reference statistics, cached
    assert f"wrote {r['table']}" in done.stdout
    scores = {float(m["rho"]): float(m["fd"]) for m in re.finditer(
        r"^ddim NFE 3 \(3 steps\) rho_top 1\.0 rho_bottom (?P<rho>[\d.]+): FD-digits (?P<fd>[\d.]+)$",
        done.stdout, re.MULTILINE)}
    assert sorted(scores) == [0.8, 1.0] and len(set(scores.values())) == 2, done.stdout
    best = min(scores, key=scores.get)

    table = json.loads(r["table"].read_text())
    assert (table["sampler"], table["model"], table["rho_top"]) == ("ddim", "digits_ddpm", 1.0)
    assert table["fingerprint"] == samplers.fingerprint(samplers.from_pretrained("digits_ddpm"))
    command = "python scripts/calibrate_skiptune.py " + " ".join(
        [*CALIBRATE, f"table={r['table']}", f"cache_dir={runs.tmp / 'cache'}", f"out_dir={runs.tmp / 'calibrate'}"])
    entry = table["by_nfe"]["3"]
    assert entry["rho_bottom"] == best and entry["command"] == command and entry["grid"].startswith("schedule: ")
    assert entry["fd"] == pytest.approx(scores[best], abs=5e-4) and entry["fd_plain"] == pytest.approx(scores[1.0], abs=5e-4)
    assert f"best factors: rho_top 1.0, NFE 3: rho_bottom {best} (FD {scores[best]:.3f})" in done.stdout

