"""What a command writes in its out_dir: its results and, once the run is accepted, its config in
`.hydra/` and its log file (cli.common.record_config); a refused run writes nothing at all, `.hydra/` and
a log file included, and an out_dir that is a file is one line."""
import pytest
from omegaconf import OmegaConf

from helpers import ok, run_cli, the_error

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = ["objective=rectified_flow", "net=mlp2d", "data=moons", "train.steps=2", "train.batch_size=32",
         "train.checkpoint_every=2", "train.log_every=1", "train.cpu=true"]


def snapshot(root):
    """Every file under `root` with its bytes."""
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_refused_resume_leaves_the_run_and_its_recorded_config_as_they_were(tmp_path):
    out = tmp_path / "run"
    ok(run_cli("train.py", *TRAIN, f"out_dir={out}"))
    recorded = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert recorded.train.batch_size == 32 and recorded.out_dir == str(out)
    assert list(OmegaConf.load(out / ".hydra" / "overrides.yaml")) == [*TRAIN, f"out_dir={out}"]
    assert [p.name for p in out.glob("*.log")] == ["train.log"] and not list(tmp_path.glob("*.log"))
    before = snapshot(out)
    refused = run_cli("train.py", *TRAIN, "train.batch_size=16", f"out_dir={out}")
    assert the_error(refused).startswith(f"error: {out} holds a run made with batch_size=32; this run has batch_size=16")
    assert snapshot(out) == before


@pytest.mark.parametrize("script, overrides", [
    ("sample.py", ["model=gmm", "steps=0"]),
    ("sample.py", ["model=gmm", "sampler=dopri5", "sampler.options.rtol=-1"]),
    ("train.py", [*TRAIN, "train.steps=0"]),
])
def test_a_refused_run_writes_nothing(tmp_path, script, overrides):
    out = tmp_path / "run"
    the_error(run_cli(script, *overrides, f"out_dir={out}", cwd=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_dopri5_tolerances_as_the_api_does(tmp_path):
    refused = run_cli("sample.py", "model=gmm", "sampler=dopri5", "sampler.options.atol=0", f"out_dir={tmp_path}")
    assert the_error(refused) == "error: dopri5 atol must be a positive number, got 0"


@pytest.mark.parametrize("out_dir, message", [
    ("notes.md", "error: out_dir=notes.md is a file; give a directory"),
    ("notes.md/run", "error: out_dir=notes.md/run cannot be made: notes.md is a file"),
])
@pytest.mark.parametrize("script", ["sample.py", "train.py"])
def test_an_out_dir_that_is_a_file_is_one_line(tmp_path, script, out_dir, message):
    (tmp_path / "notes.md").write_text("kept\n")
    assert the_error(run_cli(script, f"out_dir={out_dir}", cwd=tmp_path)) == message
    assert snapshot(tmp_path) == {tmp_path.joinpath("notes.md").relative_to(tmp_path): b"kept\n"}


def test_eval_refuses_reference_statistics_of_another_dimension_before_sampling(tmp_path, monkeypatch):
    import numpy as np

    from fewstep.evaluation import save_stats
    from fewstep.scripts import eval_fid

    def never(*args, **kwargs):
        raise AssertionError("sampled before the reference was checked")

    monkeypatch.setattr(eval_fid, "statistics_of", never)
    reference = save_stats(tmp_path / "three.npz", np.zeros(3), np.eye(3))
    refused = run_cli("eval_fid.py", "model=gmm", "steps=2", "extractor=raw", f"reference={reference}",
                      f"out_dir={tmp_path / 'eval'}")
    assert the_error(refused) == (f"error: reference={reference} holds statistics of 3 features; extractor=raw gives "
                                  f"2 for samples of shape (2,)")
    assert not (tmp_path / "eval").exists()


def test_a_one_step_generators_run_is_named_after_the_generator_not_a_default_sampler(tmp_path):
    from fewstep.cli.schemas import run_label

    done = ok(run_cli("sample.py", "model=digits_gan", "num_samples=2", cwd=tmp_path))
    [run] = (tmp_path / "runs" / "sample").iterdir()
    assert run.name.endswith("-digits_gan-generator") and f"wrote {run.relative_to(tmp_path)}/samples.png" in done.stdout
    assert run_label("fewstep.gan.load_generator", "ddim") == "generator"
    assert run_label("fewstep.samplers.from_pretrained", "ddim") == "ddim"


def test_counts_of_one_are_singular():
    from fewstep.cli.common import counted

    assert [counted(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
