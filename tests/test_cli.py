"""The entry points as a user runs them, the command lines in this process (helpers.run_cli); the installed
console command runs end to end in test_install, several processes in test_evaluation."""
import re

import numpy as np
import pytest
import torch

from helpers import ROOT, run_cli


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


def test_samples_depend_on_the_seed_not_on_the_batch_size(tmp_path):
    """Each sample from its own seed, its sampler noise too (ddim with eta 1); the seeds split over processes
    and gather back in their order (test_evaluation: eval_fid.py under two processes, and the split itself)."""
    common = ["model=gmm", "sampler=ddim", "sampler.options.eta=1.0", "num_samples=10", "steps=4"]
    for name, batch in [("a", 10), ("b", 3)]:
        done = run_cli("sample.py", *common, f"batch_size={batch}", f"out_dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr
    a, b = (np.load(tmp_path / n / "samples.npz")["samples"] for n in "ab")
    assert np.array_equal(a, b)


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


def logged(path):
    """The messages of a run's log file, without their time and source."""
    lines = path.read_text().splitlines()
    assert all(re.match(r"\[\d{4}-\d\d-\d\d [\d:,]+\]\[[\w.]+\]\[(INFO|WARNING)\] - ", line) for line in lines), lines
    return [line.split("] - ", 1)[1] for line in lines]


def test_what_a_command_says_is_on_stdout_as_bare_lines_and_in_its_log_file(tmp_path):
    done = run_cli("sample.py", "model=gmm", "sampler=heun", "num_samples=4", "steps=2", f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    said = done.stdout.splitlines()
    assert said[-1] == f"wrote {tmp_path / 'samples.png'} and {tmp_path / 'samples.npz'}" and len(said) == 4
    assert logged(tmp_path / "sample.log") == said


def test_train_says_first_what_it_trains_and_keeps_accelerates_checkpoint_lines_in_its_log_file(tmp_path):
    done = run_cli("train.py", "objective=rectified_flow", "net=mlp2d", "data=moons", "train.steps=2",
                   "train.batch_size=16", "train.checkpoint_every=1", f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    said = done.stdout.splitlines()
    assert said[0] == f"train objective=rectified_flow net=mlp2d data=moons in {tmp_path}"
    assert said[1].startswith("RectifiedFlowObjective: net (MLPVelocity, ") and ", 2 steps, " in said[1]
    assert "Saving current state" not in done.stdout + done.stderr and "[RANK" not in done.stdout
    messages = logged(tmp_path / "train.log")
    assert [m for m in messages if not m.startswith("[RANK 0] ")] == said
    assert sum(m.startswith("[RANK 0] Saving current state to ") for m in messages) == 2  # accelerate's, per checkpoint


def test_a_command_alone_under_a_launch_for_several_processes_warns_on_stderr_and_in_its_log(tmp_path, monkeypatch):
    from fewstep.training import processes

    monkeypatch.setattr(processes, "_launcher_num_processes", lambda cmdline: 2)
    for key, value in {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    done = run_cli("sample.py", "model=gmm", "num_samples=2", "steps=1", f"out_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    warning = ("accelerate launch asked for 2 processes, but this run has 1: several CPU processes need "
               "`accelerate launch --multi_gpu --num_processes 2 ...` (--cpu starts one process)")
    assert warning in done.stderr.splitlines() and warning not in done.stdout
    assert warning in logged(tmp_path / "sample.log")


def test_only_the_first_process_says_what_it_does_and_every_process_warns(monkeypatch):
    import logging

    from fewstep.cli.logs import ProcessFilter

    def record(level):
        return logging.LogRecord("x", level, __file__, 1, "message", None, None)

    said, kept = ProcessFilter(below="WARNING"), ProcessFilter()
    assert said.filter(record(logging.INFO)) and not said.filter(record(logging.WARNING))
    monkeypatch.setenv("RANK", "1")
    assert not said.filter(record(logging.INFO)) and not kept.filter(record(logging.INFO))
    assert kept.filter(record(logging.WARNING)) and kept.filter(record(logging.ERROR))


def test_the_run_log_holds_its_lines_until_the_run_is_accepted_then_writes_them_and_the_rest(tmp_path):
    import logging

    from fewstep.cli.logs import RunLog, keep

    def record(message):
        return logging.LogRecord("x", logging.INFO, __file__, 1, message, None, None)

    refused, accepted = RunLog("refused.log"), RunLog("run.log")
    accepted.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    for handler in (refused, accepted):
        handler.handle(record("said first"))
    refused.close()
    root = logging.getLogger()
    root.addHandler(accepted)
    try:
        keep(tmp_path)
        accepted.handle(record("said next"))
    finally:
        root.removeHandler(accepted)
        accepted.close()
    assert [p.name for p in tmp_path.iterdir()] == ["run.log"]
    assert (tmp_path / "run.log").read_text() == "[INFO] said first\n[INFO] said next\n"
