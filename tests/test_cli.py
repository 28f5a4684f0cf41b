"""The entry points as a user runs them: sample.py once in a Python process of its own and once under
`accelerate launch`; the other checks run the same command lines in this process (helpers.run_cli)."""
import re
import subprocess

import numpy as np
import pytest
import torch

from helpers import ROOT, accelerate_launch, run_cli


def test_sampling_the_embedded_default_model_writes_a_grid_and_the_samples_it_shows(tmp_path):
    """`samples.npz` holds the images of `samples.png`, in [-1, 1] (few-step Skip-Tuning overshoots it).
    In this process (helpers.run_cli); the installed console command runs it end to end (test_install)."""
    import torch
    from PIL import Image
    from fewstep.evaluation.output import save_grid

    done = run_cli("sample.py", "sampler=ddim+skiptune", "num_samples=6", "steps=3", f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'samples.png'}" in done.stdout
    assert "Skip-Tuning: rho_top 1.0, rho_bottom " in done.stdout  # the factors shipped beside the model
    samples = np.load(tmp_path / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 16, 16) and samples.min() >= -1 and samples.max() <= 1
    save_grid(torch.from_numpy(samples), tmp_path / "again.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "samples.png")), np.asarray(Image.open(tmp_path / "again.png")))


def test_samples_depend_on_the_seed_not_on_the_batch_size_or_the_processes(tmp_path):
    common = ["model=gmm", "sampler=ddim", "sampler.options.eta=1.0", "num_samples=10", "steps=4"]
    for name, batch in [("a", 10), ("b", 3)]:
        done = run_cli("sample.py", *common, f"batch_size={batch}", f"out_dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr
    two = subprocess.run([*accelerate_launch(2), str(ROOT / "scripts" / "sample.py"), *common, "batch_size=4",
                          f"out_dir={tmp_path / 'c'}"], capture_output=True, text=True, cwd=ROOT)
    assert two.returncode == 0, two.stderr
    a, b, c = (np.load(tmp_path / n / "samples.npz")["samples"] for n in "abc")
    assert np.array_equal(a, b) and np.array_equal(a, c)


def without(available: bool, device: str):
    return pytest.mark.skipif(available, reason=f"{device} is available here")


@pytest.mark.parametrize("overrides, message", [
    (["model=diffusers", "model.path=/nonexistent/model"], "error: model path does not exist: /nonexistent/model"),
    (["steps=0"], "error: the number of steps must be a whole number of at least 1, got 0"),
    (["image_size=15"], "error: the model takes image sizes divisible by 4, got (15, 15)"),
    pytest.param(["device=cuda"], "error: device=cuda asked for, but torch sees no CUDA device",
                 marks=without(torch.cuda.is_available(), "CUDA")),
])
def test_bad_input_gives_one_clear_line(tmp_path, overrides, message):
    done = run_cli("sample.py", *overrides, f"out_dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == message
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize("name, message", [  # the command line's own refusal: test_bad_input_gives_one_clear_line
    ("gpu:0", "device=gpu:0 is not a device to run on: use auto, cpu, cuda, cuda:N or mps"),
    pytest.param("mps", "device=mps asked for, but torch sees no MPS device",
                 marks=without(torch.backends.mps.is_available(), "MPS")),
    ("cuda:x", "device=cuda:x is not a device to run on"),
    ("meta", "device=meta is not a device to run on"),
    ("", "device= is not a device to run on"),
    pytest.param("cuda:7", "device=cuda:7 asked for, but torch sees no CUDA device",
                 marks=without(torch.cuda.is_available(), "CUDA")),
])
def test_devices_torch_cannot_use_are_refused_by_name(name, message):
    from fewstep.cli.common import resolve_device

    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("script, overrides, message", [
    ("sample.py", ["sampler=lms"], "Could not find 'sampler/lms'"),
    ("train.py", ["train.lr=fast"], "Value 'fast' of type 'str' could not be converted to Float"),
])
def test_hydra_rejects_unknown_choices_and_wrong_types(script, overrides, message):
    done = run_cli(script, *overrides)
    assert done.returncode != 0 and message in done.stderr


@pytest.mark.parametrize("overrides, message", [
    (["steps=ten"], "Value 'ten' of type 'str' could not be converted to Integer"),
    (["schedule.kind=cosine"], "Invalid value 'cosine', expected one of"),
])
def test_the_sample_schema_rejects_wrong_types_and_values(overrides, message):
    """The same validation the command line runs (above), composed in this process."""
    from hydra import compose, initialize_config_dir

    from fewstep.cli import schemas; schemas.register()

    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"), \
            pytest.raises(ConfigCompositionException) as error:
        compose("sample", overrides=overrides)
    assert message in str(error.value.__cause__)  # Hydra's "Error merging override" wraps the schema's words
