"""The store keyed by guidance (tuning.store): schedule tables, Skip-Tuning factors and AMED predictors tuned
for a guided model are named and found by its scale; the tuning passes a run's conditioning through."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from fewstep.cli.conditioning import conditioned
from fewstep.cli.sampling import planned_grid
from fewstep.cli.schemas import SampleConfig
from fewstep.samplers import DiffusersUNetDenoiser, get_sigmas
from fewstep.tuning import amed_predictor, schedule_tables, skiptune_tables
from fewstep.tuning.amed_distill import AMEDDistillation, NoiseDataset
from fewstep.tuning.schedule_search import run_search
from helpers import TABLE, fewstep, tiny_unet

GRID = [80.0, 5.0, 0.5, 0.0]


@pytest.fixture
def model_dir(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=tiny_unet(num_class_embeds=4), scheduler=DDPMScheduler(**TABLE)).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def guided(path, scale, classes=None):
    return conditioned({"guidance_scale": scale, "classes": classes}, DiffusersUNetDenoiser.from_pretrained(str(path)))


def plan(denoiser, **schedule):
    cfg = OmegaConf.merge(OmegaConf.structured(SampleConfig), {
        "model": {}, "sampler": {"name": "euler", "options": {}}, "nfe": 3, "out_dir": "x", "schedule": schedule})
    return planned_grid(cfg, denoiser)


def test_a_table_searched_at_a_scale_is_named_and_found_by_it_and_records_it(model_dir):
    at2 = guided(model_dir, 2, [1])
    path = schedule_tables.write(schedule_tables.default_path(at2.denoiser, "euler"), at2.denoiser, "euler", {}, "m",
                                 "ode_error", 3, GRID, at2.record, command="test")
    assert path == model_dir / "schedules" / "euler-cfg2.json"
    table = json.loads(path.read_text())
    assert table["guidance_scale"] == 2.0 and table["conditioning"] == {"classes": [1]}
    steps, sigmas, how = plan(at2.denoiser)
    assert sigmas.tolist() == GRID and how == f"schedule: auto, the searched grid for NFE 3 at guidance 2 ({path})"
    _, sigmas, how = plan(guided(model_dir, 3).denoiser)
    assert how == "schedule: auto, karras rho 7 (no schedule table of euler for guidance 3 (tuned at guidance 2))"
    assert sigmas.tolist() != GRID
    with pytest.raises(ValueError, match=f"^{path} was tuned at guidance 2; this run samples at guidance 3$"):
        plan(guided(model_dir, 3).denoiser, kind="table", table=str(path))
    unguided = DiffusersUNetDenoiser.from_pretrained(str(model_dir))
    assert schedule_tables.default_path(unguided, "euler") == model_dir / "schedules" / "euler.json"
    with pytest.raises(ValueError, match="tuned at guidance 2; this run samples at no guidance$"):
        plan(unguided, kind="table", table=str(path))


def test_the_scheduler_plans_the_table_of_the_scale_it_is_given_and_refuses_a_scale_without_one(model_dir):
    at2 = guided(model_dir, 2).denoiser
    path = schedule_tables.write(schedule_tables.default_path(at2, "euler"), at2, "euler", {}, "m", "ode_error", 3, GRID)
    scheduler = fewstep("euler", schedule_table=str(model_dir), guidance_scale=2)
    scheduler.set_timesteps(3)
    torch.testing.assert_close(scheduler.grid.double(), torch.tensor(GRID, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"has no schedule table of euler for guidance_scale=4 \(tuned at guidance 2\)$"):
        fewstep("euler", schedule_table=str(model_dir), guidance_scale=4).set_timesteps(3)
    with pytest.raises(ValueError, match=r"was searched at guidance 2, not at guidance 4 \(guidance_scale=4\)$"):
        fewstep("euler", schedule_table=str(path), guidance_scale=4).set_timesteps(3)


def test_skip_tuning_factors_are_found_at_their_scale_and_another_scale_samples_without_them(model_dir):
    at2, at3 = guided(model_dir, 2).denoiser, guided(model_dir, 3).denoiser
    path = skiptune_tables.write(skiptune_tables.default_path(at2, "euler"), at2, "euler", "m", "fd", 1.0,
                                 {3: {"rho_bottom": 0.8}}, {"classes": None})
    assert path.name == "euler-cfg2.json" and json.loads(path.read_text())["guidance_scale"] == 2.0
    assert skiptune_tables.factors(at2, "euler", 3)[:2] == (1.0, 0.8)
    assert skiptune_tables.missing_at_scale(at2, "euler") is None
    assert skiptune_tables.missing_at_scale(at3, "euler") == ("Skip-Tuning: no factors of euler for guidance 3 "
                                                             "(tuned at guidance 2): none applied")
    with pytest.raises(ValueError, match="was tuned at guidance 2; this run samples at guidance 3$"):
        skiptune_tables.factors(at3, "euler", 3, path)


def test_amed_predictors_are_stored_and_found_by_scale_and_refuse_another(model_dir):
    at2, at3 = guided(model_dir, 2).denoiser, guided(model_dir, 3).denoiser
    assert amed_predictor.shipped_name("amed_plugin", "ipndm", 5, 2.5) == "amed_plugin-ipndm-cfg2.5-nfe5"
    target = amed_predictor.destination(at2, "amed", None, 3)
    assert target == model_dir / "amed" / "amed-cfg2-nfe3"
    amed_predictor.AMEDPredictor(sampler="amed", nfe=3, fingerprint=amed_predictor.fingerprint(at2),
                                 guidance_scale=2.0).save_pretrained(str(target))
    assert amed_predictor.find(at2, "amed", None, 3) == target
    with pytest.raises(ValueError, match=r"no AMED predictor of amed for NFE 3: it has none at guidance 3 "
                                         r"\(tuned at guidance 2\)"):
        amed_predictor.find(at3, "amed", None, 3)
    with pytest.raises(ValueError, match="^this AMED predictor was tuned at guidance 2; this run samples at guidance 3$"):
        with amed_predictor.load(target, "amed").watch(at3):
            pass


class Spy(torch.nn.Module):
    """The guided denoiser, noting the class labels of every call."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser, self.labels = denoiser, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("denoiser"), name)

    def forward(self, x, sigma, **cond):
        self.labels.append(cond["class_labels"].tolist())
        return self.denoiser(x, sigma, **cond)


def test_the_search_conditions_every_call_teacher_included_as_a_run_conditions_its_samples(model_dir):
    given = guided(model_dir, 2, [2, 0])
    spy = Spy(given.denoiser)
    result = next(run_search("euler", spy, [2], num_noises=3, iterations=1, rtol=1e-1, atol=1e-1, progress=False,
                             cond=given.cond_of(range(3)), log=lambda line: None))
    assert result.best.sigmas[0] > 0 and len(spy.labels) > 20
    assert all(labels == [2, 0, 2] for labels in spy.labels)  # dopri5, the lever grids, the refinement, held out


def test_amed_distillation_conditions_noise_i_as_sample_i_of_a_run(model_dir):
    given = guided(model_dir, 2)
    spy = Spy(given.denoiser)
    sigmas = get_sigmas("karras", 2, sigma_min=0.01, sigma_max=80.0)
    objective = AMEDDistillation(spy, sigmas, "amed", {}, teacher="dopri5", rtol=1e-1, atol=1e-1, held_out=2,
                                 cond_of=given.cond_of, conditioning=given.record)
    data = NoiseDataset((1, 8, 8), size=8, seed=0, indexed=True)
    noise, index = data[5]
    assert torch.equal(noise, NoiseDataset((1, 8, 8), size=8, seed=0)[5]) and int(index) == 5
    batch = [torch.stack([data[i][0] for i in (5, 7)]), torch.tensor([5, 7])]
    loss = objective.losses({"predictor": objective.new_predictor()}, batch, 0, [0, 0])["predictor"]
    assert torch.isfinite(loss) and spy.labels and all(labels == [2, 1] for labels in spy.labels)
    spy.labels.clear()
    objective.error()
    assert spy.labels and all(labels == [0, 1] for labels in spy.labels)  # held-out noise j: class j mod 3
    recorded = AMEDDistillation(given.denoiser, sigmas, "amed", {}, cond_of=given.cond_of, conditioning=given.record)
    assert recorded.settings()["guidance_scale"] == 2.0 and recorded.new_predictor().config.guidance_scale == 2.0
    with pytest.raises(ValueError, match="needs noise with indices"):
        objective.losses({"predictor": objective.new_predictor()}, batch[0], 0, [0, 0])
