"""Skip-Tuning factors stored beside the model they were calibrated for (tuning.skiptune_tables), and
the command line's choice between given and calibrated factors (cli.sampling.skip_tuning_for)."""
import json
from contextlib import nullcontext

import pytest
from diffusers import DDPMPipeline, DDPMScheduler
from omegaconf import OmegaConf

from helpers import ROOT, tiny_unet
from fewstep import samplers
from fewstep.cli.sampling import skip_tuning_for
from fewstep.tuning import skiptune_tables


@pytest.fixture
def model(tmp_path):
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    return samplers.from_pretrained(tmp_path / "pipe")


def entry(rho_bottom, fd=1.0):
    return {"rho_bottom": rho_bottom, "fd": fd, "fd_plain": 2.0, "grid": "schedule: karras", "command": "python x"}


@pytest.mark.parametrize("nfe, chosen", [(1, 5), (5, 5), (7, 5), (8, 10), (15, 10), (16, 20), (100, 20)])
def test_the_nearest_calibrated_nfe_wins_and_halfway_the_smaller(nfe, chosen):
    assert skiptune_tables.nearest({"20": 0.95, "5": 0.85, "10": 0.9}, nfe) == chosen


def test_a_table_lies_beside_the_model_and_gives_the_factors_of_the_nearest_nfe(model):
    path = skiptune_tables.default_path(model, "heun")
    assert path == model.pretrained_path / "skiptune" / "heun.json"
    fingerprint = samplers.fingerprint(model)
    assert skiptune_tables.write(path, model, "heun", "tiny", "FD-raw", 0.95, {10: entry(0.9), 5: entry(0.8)}) == path
    assert samplers.fingerprint(model) == fingerprint  # the store is not part of the weights
    table = json.loads(path.read_text())
    assert list(table["by_nfe"]) == ["5", "10"] and table["fingerprint"] == fingerprint and table["model"] == "tiny"
    assert skiptune_tables.factors(model, "heun", 6) == (0.95, 0.8, f"calibrated at NFE 5 ({path})")
    assert skiptune_tables.factors(model, "heun", 9)[:2] == (0.95, 0.9)


def test_writing_keeps_the_other_nfes_of_the_same_rho_top_and_refuses_another_model_or_sampler(model, tmp_path):
    path = tmp_path / "t" / "heun.json"
    skiptune_tables.write(path, model, "heun", "tiny", "FD", 1.0, {5: entry(0.8)})
    skiptune_tables.write(path, model, "heun", "tiny", "FD", 1.0, {10: entry(0.9)})
    assert list(skiptune_tables.load(path)["by_nfe"]) == ["5", "10"]
    skiptune_tables.write(path, model, "heun", "tiny", "FD", 0.9, {10: entry(0.7)})
    assert list(skiptune_tables.load(path)["by_nfe"]) == ["10"]  # other factors: the old entries go
    with pytest.raises(ValueError, match=f"^{path} holds the factors of another model or sampler \\(tiny heun\\); "
                                         f"write to another table=$"):
        skiptune_tables.write(path, model, "ddim", "tiny", "FD", 1.0, {5: entry(0.8)})


def test_a_model_without_factors_is_refused_and_never_borrows_the_digits_model_s(model, gmm, tmp_path):
    with pytest.raises(ValueError, match="^this model has no calibrated Skip-Tuning factors for ddim \\(no .*skiptune/"
                                         "ddim.json\\): calibrate them \\(calibrate_skiptune.py sampler=ddim "
                                         "write=true\\) or set sampler.skip.rho_bottom$"):
        skiptune_tables.factors(model, "ddim", 5)
    with pytest.raises(ValueError, match="\\(GMMDenoiser was not loaded from a directory\\)"):
        skiptune_tables.factors(gmm, "ddim", 5)
    shipped = ROOT / "assets" / "digits_ddpm" / "skiptune" / "ddim.json"
    with pytest.raises(ValueError, match=f"^{shipped} was tuned for another model \\(weights "
                                         f"{json.loads(shipped.read_text())['fingerprint']}\\); this one's weights are "
                                         f"{samplers.fingerprint(model)}$"):
        skiptune_tables.factors(model, "ddim", 5, path=shipped)
    with pytest.raises(ValueError, match=f"^{shipped} holds the factors of sampler ddim, not of heun$"):
        skiptune_tables.factors(model, "heun", 5, path=shipped)


@pytest.mark.parametrize("text, problem", [("{", "Expecting property name"), ('{"sampler": "ddim"}', "it lacks by_nfe, "
                                           "fingerprint, rho_top"), ("[]", "it lacks all keys"),
                                          ('{"sampler": "ddim", "fingerprint": "0", "rho_top": 1, "by_nfe": {}}',
                                           "it has no factors \\(by_nfe is empty\\)")])
def test_a_file_that_is_no_table_is_named(tmp_path, text, problem):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path} is no Skip-Tuning table: {problem}"):
        skiptune_tables.load(path)
    with pytest.raises(FileNotFoundError, match=f"^no Skip-Tuning table at {tmp_path / 'none.json'}$"):
        skiptune_tables.load(tmp_path / "none.json")


def test_the_shipped_factors_are_the_digits_model_s():
    digits = samplers.from_pretrained("digits_ddpm")
    for path in sorted((ROOT / "assets" / "digits_ddpm" / "skiptune").glob("*.json")):
        table = skiptune_tables.load(path)
        assert table["fingerprint"] == samplers.fingerprint(digits) and table["sampler"] == path.stem
        assert all(e["command"].startswith("python scripts/calibrate_skiptune.py") for e in table["by_nfe"].values())
    assert skiptune_tables.factors(digits, "ddim", 4)[:2] == (1.0, 0.8)
    assert skiptune_tables.factors(digits, "ddim", 10)[:2] == (1.0, 0.9)


def skip_config(**skip):
    return OmegaConf.create({"sampler": {"name": "heun", "skip": skip}})


def test_given_factors_win_and_rho_top_defaults_to_1(model):
    with skip_tuning_for(skip_config(rho_top=None, rho_bottom=0.7, sigma_range=None), model, 5) as handle:
        assert (handle.rho_top, handle.rho_bottom) == (1.0, 0.7)
    with skip_tuning_for(skip_config(rho_top=0.9, rho_bottom=0.6, sigma_range=[1, 80]), model, 5) as handle:
        assert str(handle) == "Skip-Tuning: rho_top 0.9, rho_bottom 0.6, sigma in [1.0, 80.0]"
    assert isinstance(skip_tuning_for(OmegaConf.create({"sampler": {"name": "heun"}}), model, 5), nullcontext)


def test_unset_factors_come_from_the_model_s_table_and_a_model_without_one_is_refused(model):
    unset = skip_config(rho_top=None, rho_bottom=None, sigma_range=None)
    with pytest.raises(ValueError, match="^this model has no calibrated Skip-Tuning factors for heun"):
        skip_tuning_for(unset, model, 5)
    skiptune_tables.write(skiptune_tables.default_path(model, "heun"), model, "heun", "tiny", "FD", 0.95,
                          {5: entry(0.8), 10: entry(0.9)})
    with skip_tuning_for(unset, model, 9) as handle:
        assert (handle.rho_top, handle.rho_bottom) == (0.95, 0.9)
    with skip_tuning_for(skip_config(rho_top=1.0, rho_bottom=None, sigma_range=None), model, 4) as handle:
        assert (handle.rho_top, handle.rho_bottom) == (1.0, 0.8)
