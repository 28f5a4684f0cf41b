"""A model's own AMED predictors (`<model dir>/amed/`): found by NFE, sampled on the grid and afs
they were trained with, and refused in one line for anything else (tuning.amed_predictor,
cli.sampling)."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fewstep import samplers
from fewstep.tuning import amed_predictor
from fewstep.tuning.amed_predictor import AMEDPredictor, bottleneck_size
from fewstep.cli.sampling import sampling_setup

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
GRIDS = {3: [80.0, 2.0, 0.01], 5: [80.0, 11.0, 0.8, 0.01], 7: [80.0, 20.0, 3.0, 0.4, 0.01]}


def compose_sample(*overrides):
    from hydra import compose, initialize_config_dir

    from fewstep.cli import schemas; schemas.register()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=list(overrides))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The digits model copied without its tables and predictors, and untrained amed predictors for
    NFE 3 and 5 and an amed_plugin one for NFE 5 stored beside it (weights seeded, so not r = 1/2)."""
    root = tmp_path_factory.mktemp("model") / "digits"
    shutil.copytree(ROOT / "assets" / "digits_ddpm", root, ignore=shutil.ignore_patterns("schedules", "amed"))
    denoiser = samplers.from_pretrained(root)
    for sampler, base, nfe in (("amed", None, 3), ("amed", None, 5), ("amed_plugin", "ipndm", 5)):
        torch.manual_seed(nfe)
        predictor = AMEDPredictor(feature_dim=bottleneck_size(denoiser), hidden_dim=8, sampler=sampler, base=base,
                                  afs=True, nfe=nfe, sigmas=GRIDS[nfe], model="digits",
                                  fingerprint=samplers.fingerprint(denoiser))
        predictor.save_pretrained(str(amed_predictor.destination(denoiser, sampler, base, nfe)))
    return root, denoiser


def test_the_predictor_folder_is_not_part_of_the_models_fingerprint(model, tmp_path):
    root, denoiser = model
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns("amed"))
    assert samplers.fingerprint(samplers.from_pretrained(bare)) == samplers.fingerprint(denoiser)
    (bare / "unet" / "extra.safetensors").write_bytes(b"0")  # a weight file of the model's own does count
    assert samplers.fingerprint(samplers.from_pretrained(bare)) != samplers.fingerprint(denoiser)


@pytest.mark.parametrize("sampler, base, nfe", [("amed", None, 5), ("amed", None, 3), ("amed_plugin", "ipndm", 5)])
def test_auto_samples_with_the_models_predictor_for_the_nfe_on_its_grid_and_afs(model, sampler, base, nfe):
    root, denoiser = model
    cfg = compose_sample(f"sampler={sampler}", f"nfe={nfe}")
    _, _, steps, sigmas, line, options = sampling_setup(cfg, "cpu", denoiser)
    folder = root / "amed" / amed_predictor.shipped_name(sampler, base, nfe)
    assert (steps, sigmas.tolist()) == (len(GRIDS[nfe]) - 1, GRIDS[nfe])
    assert line == f"schedule: the grid the AMED predictor {folder} was trained on (NFE {nfe}, afs True)"
    assert options["afs"] is True and options["predictor"].config.nfe == nfe
    assert samplers.nfe(sampler, sigmas, options) == nfe
    noise = torch.randn(3, *denoiser.sample_shape, generator=torch.Generator().manual_seed(0))
    by_config = samplers.sample(sampler, denoiser, noise, sigmas, **options)
    direct = samplers.sample(sampler, denoiser, noise, sigmas, afs=True,
                             predictor=AMEDPredictor.from_pretrained(str(folder)))
    fixed = samplers.sample(sampler, denoiser, noise, sigmas, afs=True)  # r = 1/2, c = 1
    assert torch.equal(by_config, direct) and not torch.allclose(by_config, fixed, atol=1e-3)


def test_predictor_null_is_the_fixed_r_and_c_on_the_usual_grid(model):
    _, denoiser = model
    cfg = compose_sample("sampler=amed", "nfe=6", "sampler.options.predictor=null")
    _, _, steps, sigmas, line, options = sampling_setup(cfg, "cpu", denoiser)
    assert steps == 3 and "karras" in line and options["predictor"] is None


def test_a_predictor_directory_is_taken_as_given(model):
    root, denoiser = model
    folder = root / "amed" / "amed-nfe3"
    cfg = compose_sample("sampler=amed", f"sampler.options.predictor={folder}")
    _, _, _, sigmas, _, options = sampling_setup(cfg, "cpu", denoiser)
    assert sigmas.tolist() == GRIDS[3] and options["predictor"].config.nfe == 3


@pytest.mark.parametrize("overrides, message", [
    (["sampler=amed", "nfe=7"], "this model has no AMED predictor of amed for NFE 7: it has NFE 3, 5 \\(nfe=N\\); "
                                "sampler.options.predictor=null runs fixed r and c, predictor=DIR a trained one"),
    (["sampler=amed"], "this model has no AMED predictor of amed for 10 steps: it has NFE 3, 5"),
    (["sampler=amed_plugin", "nfe=3"], "this model has no AMED predictor of amed_plugin-ipndm for NFE 3: it has NFE 5 "),
    (["sampler=amed_plugin", "nfe=5", "sampler.options.base=dpmpp_2m"],
     "this model has no AMED predictor of amed_plugin-dpmpp_2m for NFE 5: it has none;"),
    (["sampler=amed", "nfe=5", "schedule.rho=5"], "was trained on: drop schedule.rho=5.0$"),
    (["sampler=amed", "nfe=5", "schedule.kind=logsnr"], "was trained on: drop schedule.kind=logsnr$"),
    (["sampler=amed", "nfe=5", "sampler.options.predictor=MODEL/amed/amed-nfe3"],
     "the AMED predictor at .*amed-nfe3 was trained for NFE 3, not nfe=5$"),
    (["sampler=amed_plugin", "sampler.options.predictor=MODEL/amed/amed-nfe3"],
     "the AMED predictor at .*amed-nfe3 was trained for amed, not amed_plugin base=ipndm$"),
    (["sampler=amed", "sampler.options.predictor=MODEL/amed/none"], "no AMED predictor at .*none \\(a directory"),
    (["sampler=amed", "nfe=5", "sampler.options.r=0.4"],
     "^sampler.options.r=0.4 fixes what the predictor \\(auto\\) learns: add sampler.options.predictor=null$"),
])
def test_a_predictor_for_something_else_or_none_is_refused_in_one_line(model, overrides, message):
    root, denoiser = model
    cfg = compose_sample(*(o.replace("MODEL", str(root)) for o in overrides))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sampling_setup(cfg, "cpu", denoiser)


def test_a_models_predictors_are_its_amed_folders_with_a_config_by_nfe_or_by_steps(model, gmm):
    root, denoiser = model
    strays = [root / "amed" / "amed-nfeX", root / "amed" / "amed-nfe8"]  # not an NFE; no config.json
    for stray in strays:
        stray.mkdir()
    try:
        assert amed_predictor.shipped(denoiser, "amed") == {3: root / "amed" / "amed-nfe3", 5: root / "amed" / "amed-nfe5"}
    finally:
        for stray in strays:
            stray.rmdir()
    assert amed_predictor.shipped(denoiser, "amed_plugin", "ipndm") == {5: root / "amed" / "amed_plugin-ipndm-nfe5"}
    assert amed_predictor.shipped(gmm, "amed") == amed_predictor.shipped(SimpleNamespace(pretrained_path=None), "amed") == {}
    assert [amed_predictor.find(denoiser, "amed", steps=k).name for k in (2, 3)] == ["amed-nfe3", "amed-nfe5"]
    assert amed_predictor.load(root / "amed" / "amed-nfe5", "amed", "ipndm").config.nfe == 5  # base: amed_plugin's only
    for path, sampler, base, trained in [(root / "amed" / "amed-nfe5", "amed_plugin", "ipndm", "amed"),
                                         (root / "amed" / "amed_plugin-ipndm-nfe5", "amed", None, "amed_plugin base=ipndm")]:
        with pytest.raises(ValueError) as error:
            amed_predictor.load(path, sampler, base)
        assert str(error.value) == (f"the AMED predictor at {path} was trained for {trained}, not {sampler}"
                                    + (f" base={base}" if base else ""))


def test_a_predictor_is_stored_only_beside_a_model_loaded_from_a_directory_and_never_over_another(model, gmm):
    _, denoiser = model
    with pytest.raises(FileExistsError, match="amed-nfe5 holds a predictor already: remove it first"):
        amed_predictor.destination(denoiser, "amed", None, 5)
    with pytest.raises(ValueError, match="GMMDenoiser was not loaded from a directory"):
        amed_predictor.destination(gmm, "amed", None, 5)
    assert amed_predictor.destination(denoiser, "amed_plugin", "dpmpp_2m", 7).name == "amed_plugin-dpmpp_2m-nfe7"


def test_train_amed_stores_beside_the_model_what_sample_py_then_samples_with(tmp_path):
    """train_amed.py write=true on a copy of the digits model (2 updates), then sample.py sampler=amed
    nfe=5 on it: the stored predictor, its grid, afs and the command that trained it (the refusals
    are the in-process tests above). Both commands run in this process (helpers.run_cli), from tmp_path;
    train_amed.py runs in processes of its own in test_amed_predictor.py."""
    import json

    from helpers import run_cli

    root = tmp_path / "digits"
    shutil.copytree(ROOT / "assets" / "digits_ddpm", root, ignore=shutil.ignore_patterns("schedules", "amed"))

    def run(script, *overrides):
        return run_cli(script, "model=diffusers", f"model.path={root}", *overrides, cwd=tmp_path)

    train = ["sampler=amed", "nfe=5", "write=true", "train.steps=2", "train.batch_size=4", "train.log_every=1",
             "objective.teacher_steps=1", "objective.held_out=4", f"out_dir={tmp_path / 'run'}"]
    trained = run("train_amed.py", *train)
    assert trained.returncode == 0, trained.stderr[-3000:]
    stored = root / "amed" / "amed-nfe5"
    assert f"stored the predictor in {stored}" in trained.stdout
    table = json.loads((stored / "frozen_table.json").read_text())
    assert table["command"].endswith("train_amed.py model=diffusers model.path=" + " ".join([str(root), *train]))

    sampled = run("sample.py", "sampler=amed", "nfe=5", "num_samples=2", f"out_dir={tmp_path / 'samples'}")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    lines = sampled.stdout.splitlines()
    assert lines[0] == f"schedule: the grid the AMED predictor {stored} was trained on (NFE 5, afs True)"
    assert f"'predictor': '{stored}'" in lines[1] and "NFE used per sample: 5" in sampled.stdout


def test_the_api_refuses_a_shipped_predictor_on_a_grid_of_another_nfe_as_the_command_line_does(model):
    """`samplers.sample(..., predictor=)` and the command line's `predictor=DIR nfe=5` share the refusal."""
    root, denoiser = model
    trained_for_7 = AMEDPredictor.from_pretrained(str(ROOT / "assets" / "digits_ddpm" / "amed" / "amed-nfe7"))
    grid_of_5 = torch.tensor(GRIDS[5], dtype=torch.float64)
    with pytest.raises(ValueError) as refused:
        samplers.sample("amed", denoiser, torch.randn(1, 1, 16, 16), grid_of_5, predictor=trained_for_7, afs=True)
    assert str(refused.value) == "this AMED predictor was trained for amed afs=True at NFE 7, not 5 (a grid of 3 steps)"
