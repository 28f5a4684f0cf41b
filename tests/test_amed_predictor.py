"""AMED's learned predictor (samplers/amed_predictor.py) and its distillation (samplers/amed_distill.py):
on the analytic mixture, training lowers the sampler's distance to the teacher and the frozen table keeps
it; the bottleneck hook on a tiny UNet reads the mid block of each step's first call, no call of its own;
save and load; every refusal in one line; `scripts/train_amed.py` trains and exports the predictor (one and
two processes train the same: tests/test_engine_processes.py)."""
import csv
import json
import math
import sys

import pytest
import torch
from diffusers import DDPMScheduler
from omegaconf import OmegaConf

from helpers import ROOT, ok, run_cli, the_error, tiny_unet
from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.tuning import amed_predictor
from fewstep.samplers.amed import between
from fewstep.tuning.amed_distill import AMEDDistillation, NoiseDataset, inserted, squared_distance
from fewstep.tuning.amed_predictor import (AMEDPredictor, bottleneck, bottleneck_size, frozen_table, mid_block,
                                             network, sinusoid)
from fewstep.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def karras(denoiser, steps, sigma_max=80.0):
    """The default grid of scripts/train_amed.py: Karras from 80, the sample returned at sigma_min."""
    return samplers.get_sigmas("karras", steps, denoiser.sigma_min, sigma_max, final_sigmas_type="sigma_min")


def unet_denoiser(**overrides):
    return samplers.DiffusersUNetDenoiser(tiny_unet(**overrides), DDPMScheduler().alphas_cumprod)


def noise(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- distillation on the mixture -------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["amed", "amed_plugin"])
def test_distillation_lowers_the_error_against_the_teacher_and_the_frozen_table_keeps_it(gmm, tmp_path, sampler):
    """Held-out noises (seeds 2000000..), 60 Adam steps of 64 training noises (seeds 1000000..): the
    distance to the teacher's sample at NFE 5 falls below 0.4 times the untrained predictor's and half
    that at r = 1/2, c = 1 (about 0.2 and 0.3 here); the frozen table's is within 10% (a time-only
    predictor: the same r and c for every sample, so the table is the predictor)."""
    objective = AMEDDistillation(gmm, karras(gmm, 3), sampler, {"afs": True}, nfe=5, held_out=256)
    torch.manual_seed(0)
    predictor = objective.new_predictor()
    before = objective.error(predictor=predictor)
    Trainer({"predictor": predictor}, objective, NoiseDataset(gmm.sample_shape, 4096), out_dir=tmp_path, steps=60,
            batch_size=64, lr=5e-3, optimizer="adam", grad_clip=None, ema_decay=None, checkpoint_every=60,
            cpu=True).fit()
    trained = AMEDPredictor.from_pretrained(tmp_path / "model")
    after = objective.error(predictor=trained)
    assert after < 0.4 * before and after < 0.5 * objective.error(), (before, after)  # untrained; r = 1/2, c = 1
    table = json.loads((tmp_path / "model" / "frozen_table.json").read_text())
    assert table["nfe"] == 5 and table["sigmas"] == objective.sigmas.tolist()
    frozen = objective.error(r=table["sampler_options"]["r"], c=table["sampler_options"]["c"])
    assert frozen <= 1.1 * after, (after, frozen)
    metrics = next(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert float(metrics["error"]) == pytest.approx(after, rel=1e-4)
    assert float(metrics["untrained_error"]) > float(metrics["error"])


# -- the bottleneck hook ---------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher", ["heun", "dopri5"])
def test_the_teacher_points_are_its_solution_at_every_time_of_the_grid(gmm, teacher):
    """Heun on each step with 2 times inserted evenly in sigma^(1/7), or dopri5 (its tolerances) from
    each time of the grid to the next."""
    sigmas = karras(gmm, 3)
    objective = AMEDDistillation(gmm, sigmas, "amed", {"afs": True}, nfe=5, teacher=teacher, teacher_steps=2,
                                 rtol=1e-3, atol=1e-4)
    x = noise(4, 2).double() * sigmas[0]
    expected = [x]
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        if teacher == "heun":
            fine = torch.stack([a, *((a ** (1 / 7) + w * (b ** (1 / 7) - a ** (1 / 7))) ** 7 for w in (1 / 3, 2 / 3)), b])
            expected.append(samplers.solve("heun", gmm, expected[-1], fine))
        else:
            expected.append(samplers.solve("dopri5", gmm, expected[-1], torch.stack([a, b]), rtol=1e-3, atol=1e-4))
    points = objective.teacher_points(x)
    assert len(points) == len(sigmas) and all(torch.allclose(p, e, rtol=1e-12, atol=0) for p, e in zip(points, expected))


def test_the_held_out_noises_are_seeded_and_their_targets_the_teachers_last_points(gmm, tmp_path):
    objective = AMEDDistillation(gmm, karras(gmm, 3), "amed", {"afs": True}, nfe=5, held_out=6, held_out_seed=7)
    held_out, target = objective.held_out_noise()
    assert torch.equal(held_out, torch.stack([noise(2, seed=7 + i) for i in range(6)]))
    assert torch.equal(target, objective.teacher_points(held_out.double() * 80.0)[-1])
    predictor = objective.new_predictor()
    r, c = frozen_table(predictor, gmm, held_out, objective.sigmas)
    rms = lambda x: float(((x.double() - target) ** 2).sum(1).mean().sqrt())  # noqa: E731
    run = lambda **options: samplers.sample("amed", gmm, held_out, objective.sigmas, afs=True, **options)  # noqa: E731
    assert objective.report({"predictor": predictor}, 0, tmp_path) == pytest.approx(
        {"error": rms(run(predictor=predictor)), "frozen_error": rms(run(r=r, c=c)), "untrained_error": rms(run())},
        rel=1e-12)


def test_the_frozen_table_is_exported_beside_the_predictor_with_what_it_was_made_for(gmm, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/train_amed.py", "sampler=amed_plugin", "nfe=5"])
    objective = AMEDDistillation(gmm, karras(gmm, 3), "amed_plugin", {"afs": True, "base": "dpmpp_2m"}, nfe=5,
                                 held_out=4, model="gmm")
    predictor = objective.new_predictor()
    objective.export({"predictor": predictor}, tmp_path)
    r, c = frozen_table(predictor, gmm, objective.held_out_noise()[0], objective.sigmas)
    assert json.loads((tmp_path / "frozen_table.json").read_text()) == {
        "sampler": "amed_plugin", "sampler_options": {"afs": True, "base": "dpmpp_2m", "r": r, "c": c},
        "sigmas": objective.sigmas.tolist(), "nfe": 5, "model": "gmm", "fingerprint": objective.fingerprint,
        "command": "python scripts/train_amed.py sampler=amed_plugin nfe=5"}
    assert (tmp_path / "config.json").is_file()


def test_the_noise_data_set_is_each_seeds_noise_and_ends_where_it_says():
    data = NoiseDataset((2,))
    assert len(data) == 65536 and torch.equal(data[0], noise(2, seed=1_000_000))
    assert torch.equal(NoiseDataset((3,), size=4, seed=9)[3], noise(3, seed=12))
    for call, error, message in [(lambda: data[65536], IndexError, "noise 65536 of 65536"),
                                 (lambda: NoiseDataset(None), ValueError,
                                  "NoiseDataset needs the sample shape (scripts/train_amed.py gives the model's)")]:
        with pytest.raises(error) as raised:
            call()
        assert str(raised.value) == message


@pytest.mark.parametrize("change, message", [
    ({"seed": 5}, "data_settings.seed=1000000; this run has data_settings.seed=5"),
    ({"model": "other"}, "objective_settings.fingerprint={mine}; this run has objective_settings.fingerprint={theirs}"),
])
def test_a_distillation_is_not_resumed_on_other_noises_or_another_model(gmm, tmp_path, change, message):
    """run.json records the noise set (shape, size, seeds) and the model's fingerprint; a resume with another
    of either is refused in one line naming both values."""
    other = samplers.GMMDenoiser(means=gmm.means + 1, stds=gmm.stds, weights=gmm.weights)

    def fit(model, seed):
        objective = AMEDDistillation(model, karras(model, 3), "amed", {"afs": True}, nfe=5, held_out=4)
        Trainer({"predictor": objective.new_predictor()}, objective, NoiseDataset(model.sample_shape, 64, seed),
                out_dir=tmp_path, steps=1, batch_size=8, lr=5e-3, optimizer="adam", grad_clip=None, ema_decay=None,
                checkpoint_every=1, cpu=True).fit()

    fit(gmm, 1_000_000)
    assert json.loads((tmp_path / "run.json").read_text())["data_settings"] == {"shape": [2], "size": 64,
                                                                                  "seed": 1_000_000}
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as error:
        fit(other if change.get("model") else gmm, change.get("seed", 1_000_000))
    assert message.format(mine=samplers.fingerprint(gmm), theirs=samplers.fingerprint(other)) in str(error.value)
    assert "\n" not in str(error.value) and {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("afs", [False, True])
def test_the_predictor_reads_the_mid_block_of_each_steps_first_call_without_a_call_of_its_own(afs):
    denoiser = unet_denoiser()
    sigmas = karras(denoiser, 3)
    torch.manual_seed(0)
    predictor = AMEDPredictor(feature_dim=bottleneck_size(denoiser), afs=afs)
    assert predictor.config.feature_dim == 16  # 8x8 through two levels: 4x4
    mids, timesteps, read = [], [], []
    denoiser.unet.mid_block.register_forward_hook(lambda module, args, out: mids.append(out.mean(1).flatten(1)))
    denoiser.unet.register_forward_pre_hook(lambda module, args: timesteps.append(args[1]))
    predictor.register_forward_hook(lambda module, args, out: read.append((args[0], [v.double() for v in out])))
    start = noise(4, 1, 8, 8)
    samplers.sample("amed", denoiser, start, sigmas, afs=afs, predictor=predictor)

    assert len(timesteps) == len(mids) == samplers.nfe("amed", sigmas, {"afs": afs}) == 6 - afs
    firsts = [mids[0], mids[2], mids[4]] if not afs else [torch.zeros(4, 16), mids[1], mids[3]]
    assert len(read) == 3 and all(torch.equal(features, first) for (features, _), first in zip(read, firsts))
    middles = timesteps[1::2] if not afs else timesteps[0::2]
    assert all(t.shape == (4,) for t in middles)  # s_n per sample, distinct where the features are
    assert all(len(set(t.tolist())) == 4 for t in middles[afs:]) and len(set(middles[0].tolist())) == (1 if afs else 4)

    # the frozen table: per step the batch mean of s_n, as r, and of c; sampled with it, no predictor runs
    steps = list(read)
    r, c = frozen_table(predictor, denoiser, start, sigmas)
    for n, (_, (r_n, c_n)) in enumerate(steps):
        s = between(sigmas[n], sigmas[n + 1], r_n).mean()
        assert r[n] == pytest.approx(float((s / sigmas[n]).log() / (sigmas[n + 1] / sigmas[n]).log()), rel=1e-12)
        assert c[n] == pytest.approx(float(c_n.mean()), rel=1e-12)
    read.clear()
    samplers.sample("amed", denoiser, start, sigmas, afs=afs, r=r, c=c)
    assert read == []


def test_a_model_without_a_mid_block_or_a_unet_is_refused_in_one_line(gmm):
    denoiser = unet_denoiser(mid_block_type=None)
    with pytest.raises(ValueError, match=r"^AMED's predictor reads the UNet's mid block, and this UNet2DModel has "
                                         r"none \(mid_block_type=None\)$"):
        samplers.sample("amed", denoiser, noise(2, 1, 8, 8), karras(denoiser, 3),
                        predictor=AMEDPredictor(feature_dim=16))
    with pytest.raises(ValueError, match=r"^AMED's predictor reads a UNet's mid block, and GMMDenoiser has no UNet: "
                                         r"use a time-only predictor \(feature_dim=0\)$"):
        samplers.sample("amed", gmm, noise(2, 2), karras(gmm, 3), predictor=AMEDPredictor(feature_dim=16))
    assert bottleneck_size(gmm) == 0  # so distillation gives the mixture a time-only predictor


# -- save and load, and what a predictor was made for ----------------------------------------------------
def test_a_saved_predictor_loads_with_its_metadata_and_gives_the_same_samples(tmp_path):
    denoiser = unet_denoiser()
    sigmas = karras(denoiser, 3)
    objective = AMEDDistillation(denoiser, sigmas, "amed_plugin", {"afs": True, "base": "dpmpp_2m"}, nfe=5,
                                 model="tiny")
    torch.manual_seed(0)
    objective.new_predictor().save_pretrained(tmp_path)
    torch.manual_seed(0)
    predictor, loaded = objective.new_predictor(), AMEDPredictor.from_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert {k: loaded.config[k] for k in ("sampler", "base", "afs", "nfe", "sigmas", "model", "fingerprint")} == {
        "sampler": "amed_plugin", "base": "dpmpp_2m", "afs": True, "nfe": 5, "sigmas": sigmas.tolist(),
        "model": "tiny", "fingerprint": samplers.fingerprint(denoiser)}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == dict(predictor.config)
    x = noise(3, 1, 8, 8)
    runs = [samplers.sample("amed_plugin", denoiser, x, sigmas, base="dpmpp_2m", afs=True, predictor=p)
            for p in (predictor, loaded)]
    torch.testing.assert_close(*runs, rtol=1e-7, atol=0)  # a loaded copy's GEMMs may round differently
    assert not torch.equal(runs[0], samplers.sample("amed_plugin", denoiser, x, sigmas, base="dpmpp_2m", afs=True))


def made_for_nfe_5(gmm):
    return AMEDDistillation(gmm, karras(gmm, 3), "amed", {"afs": True}, nfe=5, model="gmm").new_predictor()


REFUSALS = {
    "another NFE": (lambda g, p: samplers.sample("amed", g, noise(2, 2), karras(g, 4), afs=True, predictor=p),
                    r"^this AMED predictor was trained for amed afs=True at NFE 5, not 7 \(a grid of 4 steps\)$"),
    "another grid": (lambda g, p: samplers.sample("amed", g, noise(2, 2), karras(g, 3, 40.0), afs=True, predictor=p),
                     r"^this AMED predictor was trained on the grid \[80, 9\.7232, 0\.469979, 0\.002\], not "
                     r"\[40, 5\.2238, 0\.292586, 0\.002\]$"),
    "another sampler": (lambda g, p: samplers.sample("amed_plugin", g, noise(2, 2), karras(g, 3), afs=True,
                                                     predictor=p),
                        r"^this AMED predictor was trained for amed afs=True, not amed_plugin base=ipndm afs=True$"),
    "no afs": (lambda g, p: samplers.sample("amed", g, noise(2, 2), karras(g, 3), predictor=p),
               r"^this AMED predictor was trained for amed afs=True, not amed afs=False$"),
    "another model": (lambda g, p: samplers.sample("amed", samplers.GMMDenoiser(g.means + 1, g.stds, g.weights),
                                                   noise(2, 2), karras(g, 3), afs=True, predictor=p),
                      r"^this AMED predictor was trained on model gmm \(weights [0-9a-f]{16}\); this model's weights "
                      r"are [0-9a-f]{16}$"),
    "r beside it": (lambda g, p: samplers.sample("amed", g, noise(2, 2), karras(g, 3), afs=True, r=0.4, predictor=p),
                    r"^amed takes r and c from its predictor; drop r=0\.4, c=1\.0$"),
    "a path (hydra)": (lambda g, p: samplers.sample("amed", g, noise(2, 2), karras(g, 3), afs=True,
                                                    predictor="runs/amed/model"),
                       r"^amed predictor must be an AMEDPredictor \(AMEDPredictor\.from_pretrained\(DIR\)\), got str "
                       r"'runs/amed/model'; where options are text .* give its frozen table instead"),
    "a pipeline": (lambda g, p: FewstepScheduler(sampler="amed", sampler_options={"predictor": p}),
                   r"^FewstepScheduler cannot take an AMED predictor .*: give amed its frozen table, frozen_table=DIR "
                   r"or sampler_options r=\[\.\.\.\], c=\[\.\.\.\]$"),
    "the step generator itself": (
        lambda g, p: next(samplers.SOLVERS["amed_plugin"].run(noise(2, 2), karras(g, 3), predictor="dir")),
        r"^amed_plugin predictor must be an AMEDPredictor \(AMEDPredictor\.from_pretrained\(DIR\)\), got str 'dir'; "),
    "an NFE the grid cannot cost": (
        lambda g, p: AMEDDistillation(g, karras(g, 2), "amed", {"afs": True}, nfe=4),
        r"^amed with afs=True on a grid ending at sigma_min costs 3 NFE for 2 steps, not nfe=4: it reaches NFE "
        r"1, 3, 5, 7, 9, 11, \.\.\.$"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_predictor_made_for_another_use_is_refused_in_one_line(gmm, case):
    call, message = REFUSALS[case]
    with pytest.raises(ValueError, match=message) as error:
        call(gmm, made_for_nfe_5(gmm))
    assert "\n" not in str(error.value)


class NaNBelowOne(samplers.GMMDenoiser):
    """The mixture's denoiser, NaN wherever sigma < 1."""

    def forward(self, x, sigma):
        out = super().forward(x, sigma)
        return out.masked_fill(torch.as_tensor(sigma).reshape(-1, 1).expand(len(x), 1) < 1, float("nan"))


def test_a_teacher_that_gives_nan_is_refused_in_one_line(gmm):
    broken = NaNBelowOne(gmm.means, gmm.stds, gmm.weights)
    objective = AMEDDistillation(broken, karras(broken, 3), "amed", {"afs": True}, nfe=5)
    with pytest.raises(FloatingPointError, match=r"^the teacher \(heun\) gives NaN or inf at sigma=0\.469979 for 4 of "
                                                 r"4 noises: the model fails there$"):
        objective.losses({"predictor": objective.new_predictor()}, noise(4, 2), 0, [])


# -- scripts/train_amed.py: a run and an NFE out of reach (1 and 2 processes: test_engine_processes) ----------
RUN = ["model=gmm", "train.steps=20", "train.batch_size=32", "train.checkpoint_every=20", "train.log_every=5",
       "train.cpu=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run, and one asking for NFE 4 (in this process: helpers.run_cli)."""
    tmp = tmp_path_factory.mktemp("train_amed")
    one = ok(run_cli("train_amed.py", *RUN, f"out_dir={tmp / 'one'}"))
    refused = run_cli("train_amed.py", *RUN, "nfe=4", f"out_dir={tmp / 'nfe4'}")
    return tmp, one, refused


def test_train_amed_trains_the_predictor_and_exports_it_with_its_grid(runs):
    tmp = runs[0]
    logged = [float(row["loss"]) for row in csv.DictReader(open(tmp / "one" / "loss.csv"))]
    assert logged[-1] < 0.5 * logged[0], logged
    summary = json.loads((tmp / "one" / "train_summary.json").read_text())
    assert summary["num_processes"] == 1 and summary["updates"] == {"predictor": 20}
    config = json.loads((tmp / "one" / "model" / "config.json").read_text())
    assert (config["sampler"], config["afs"], config["nfe"], config["model"], config["feature_dim"]) == (
        "amed", True, 5, "gmm", 0)
    assert config["sigmas"][0] == 80.0 and len(config["sigmas"]) == 4


def test_an_nfe_the_sampler_cannot_reach_is_refused_in_one_line(runs):
    refused = runs[2]
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: amed with afs=True on a grid ending at sigma_min costs 3 NFE for 2 steps, not nfe=4: it reaches NFE "
        "1, 3, 5, 7, 9, 11, ...")


def test_noise_of_another_shape_than_the_models_is_refused_before_anything_is_written(tmp_path):
    done = run_cli("train_amed.py", *RUN, "data.shape=[3]", f"out_dir={tmp_path / 'run'}")
    assert the_error(done) == ("error: the data (NoiseDataset) has samples of shape (3,); the model (GMMDenoiser) "
                               "makes samples of shape (2,): use data and network of one shape")
    assert not (tmp_path / "run").exists()


# -- the objective's settings -----------------------------------------------------------------------------
def test_the_defaults_are_conf_objective_amed_and_the_model_is_frozen(gmm):
    conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "objective" / "amed.yaml"))
    del conf["_target_"]
    sigmas = karras(gmm, 3)
    objective = AMEDDistillation(gmm, sigmas)
    assert {key: getattr(objective, key) for key in conf} == conf
    assert (objective.sampler, objective.afs, objective.base, objective.nfe) == ("amed", False, None, 6)
    assert objective.model == "GMMDenoiser"  # no name given: the denoiser's class
    assert [float(s) for s in objective.settings()["grid"].split(" ")] == sigmas.tolist()  # every digit, for run.json
    unet = unet_denoiser()
    assert AMEDDistillation(unet, karras(unet, 3)).new_predictor().config.feature_dim == 16  # the bottleneck's 4x4
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training


@pytest.mark.parametrize("args, kwargs, message", [
    ((None, "grid"), {}, "objective=amed needs the model and the grid: train it with scripts/train_amed.py "
                             "(e.g. python scripts/train_amed.py sampler=amed nfe=5)"),
    (("gmm", None), {}, "objective=amed needs the model and the grid: train it with scripts/train_amed.py "
                        "(e.g. python scripts/train_amed.py sampler=amed nfe=5)"),
    (("gmm", "grid"), dict(sampler="heun"), "AMED distillation trains amed or amed_plugin, got sampler=heun"),
    (("gmm", "grid"), dict(teacher="euler"), "unknown teacher 'euler': use heun or dopri5"),
    (("gmm", "grid"), dict(teacher_steps=-1), "teacher_steps must be a whole number of at least 0, got -1"),
    (("gmm", "grid"), dict(teacher_steps=1.5), "teacher_steps must be a whole number of at least 0, got 1.5"),
    (("gmm", "grid"), dict(options={"r": 0.4}), "AMED distillation learns amed's r and c: drop sampler.options.r=0.4"),
    (("gmm", "grid"), dict(sampler="amed_plugin", options={"c": 1.1}),
     "AMED distillation learns amed_plugin's r and c: drop sampler.options.c=1.1"),
    (("gmm", "zero"), dict(options={"afs": True}, nfe=5),
     "amed with afs=True on a grid ending at 0 costs 4 NFE for 3 steps, not nfe=5: it reaches NFE 2, 4, 6, 8, 10, ..."),
])
def test_bad_settings_are_refused_in_one_line(gmm, args, kwargs, message):
    named = {"gmm": gmm, "grid": karras(gmm, 3), "zero": samplers.get_sigmas("karras", 3, gmm.sigma_min, 80.0)}
    with pytest.raises(ValueError) as error:
        AMEDDistillation(*(named.get(a) for a in args), **kwargs)
    assert str(error.value) == message


def test_no_teacher_steps_is_heun_on_the_grid_itself(gmm):
    objective = AMEDDistillation(gmm, karras(gmm, 3), teacher_steps=0)
    x = noise(3, 2) * 80
    points = objective.teacher_points(x)
    sigmas = karras(gmm, 3)
    for n in range(3):
        torch.testing.assert_close(points[n + 1], samplers.solve("heun", gmm, points[n], sigmas[n:n + 2]))
    assert inserted(sigmas.to("meta"), 2).device.type == "meta"  # inserted times are made where the grid is


# -- the predictor network ----------------------------------------------------------------------------------
def test_the_time_embedding_is_sin_then_cos_of_t_times_10000_powers():
    t = torch.tensor([2.0, 0.25], dtype=torch.float64)
    frequencies = [10000.0 ** (-k / 3) for k in range(4)]  # 8 channels: k = 0..3, endpoint 1e-4 included
    expected = torch.tensor([[math.sin(v * f) for f in frequencies] + [math.cos(v * f) for f in frequencies]
                             for v in t.tolist()], dtype=torch.float64)
    got = sinusoid(t, 8)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
    assert sinusoid(torch.empty(3, device="meta"), 6).shape == (3, 6)  # its frequencies where t is


def test_c_spans_one_plus_minus_c_range_and_each_sample_has_its_own_times():
    predictor = AMEDPredictor(feature_dim=3, hidden_dim=4, c_range=0.25)
    features = noise(5, 3)
    for bias, expected in ((50.0, 1.25), (-50.0, 0.75), (0.0, 1.0)):
        with torch.no_grad():
            predictor.head_c.weight.zero_()
            predictor.head_c.bias.fill_(bias)
        assert torch.equal(predictor(features, 2.0, 1.0)[1], torch.full((5,), expected))
    sigma, sigma_next = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2])
    r = predictor(features, sigma, sigma_next)[0]
    alone = torch.cat([predictor(features[i:i + 1], sigma[i], sigma_next[i])[0] for i in range(5)])
    torch.testing.assert_close(r, alone)


def test_a_predictor_on_another_device_takes_its_times_there():
    predictor = AMEDPredictor(feature_dim=3, hidden_dim=4).to("meta")
    r, c = predictor(torch.empty(2, 3, device="meta"), 2.0, torch.tensor([1.0, 0.5]))
    assert r.device.type == c.device.type == "meta" and r.shape == c.shape == (2,)


@pytest.mark.parametrize("name, sampler, base", [("amed-nfe5", "amed", None),
                                                 ("amed_plugin-ipndm-nfe3", "amed_plugin", "ipndm")])
def test_a_shipped_predictor_reproduces_its_frozen_table(name, sampler, base):
    """The frozen table shipped beside each predictor was made from the 64 held-out noises (seeds
    2000000..): the loaded network (its bottleneck features first, then the two times) gives it again."""
    folder = ROOT / "assets" / "digits_ddpm" / "amed" / name
    denoiser = samplers.from_pretrained(ROOT / "assets" / "digits_ddpm")
    table = json.loads((folder / "frozen_table.json").read_text())
    data = NoiseDataset(denoiser.sample_shape, 64, 2_000_000)
    r, c = frozen_table(amed_predictor.load(folder, sampler, base), denoiser, torch.stack(list(data)), table["sigmas"])
    assert r == pytest.approx(table["sampler_options"]["r"], rel=1e-6)
    assert c == pytest.approx(table["sampler_options"]["c"], rel=1e-6)


def test_the_bottleneck_size_is_what_the_mid_block_gives_at_any_depth():
    for blocks in (1, 3):  # 8x8 halved 0 and 2 times
        unet = tiny_unet(block_out_channels=(8,) * blocks, down_block_types=("DownBlock2D",) * blocks,
                         up_block_types=("UpBlock2D",) * blocks)
        denoiser = samplers.DiffusersUNetDenoiser(unet, DDPMScheduler().alphas_cumprod)
        with bottleneck(denoiser) as seen:
            denoiser(noise(2, 1, 8, 8), torch.tensor(1.0))
        assert seen.features.shape == (2, bottleneck_size(denoiser)) == (2, (8 // 2 ** (blocks - 1)) ** 2)
        flow = samplers.FlowDenoiser(unet)
        assert network(flow) is unet and mid_block(flow) is unet.mid_block


def test_a_grid_off_by_more_than_float_rounding_is_refused():
    predictor = AMEDPredictor(sampler="amed", sigmas=[80.0, 2.0, 0.0])  # NFE not pinned: the grid alone
    predictor.check("amed", torch.tensor([80.0, 2.0, 0.0], dtype=torch.float32), afs=False)  # float32's rounding
    for grid in ([80.0, 2.0 * (1 + 3e-6), 0.0], [80.0, 2.0, 1e-9], [80.0, 2.5, 0.0]):
        with pytest.raises(ValueError, match=r"^this AMED predictor was trained on the grid \[80, 2, 0\], not "):
            predictor.check("amed", torch.tensor(grid, dtype=torch.float64), afs=False)


def test_step_ratios_come_in_the_samples_dtype_and_need_a_watched_unet():
    predictor = AMEDPredictor(feature_dim=16)
    x = noise(3, 1, 8, 8).double()
    r, c = predictor.step_ratios(x, 2.0, 1.0, analytic=True)  # an AFS step: zeros for features, no UNet
    assert r.dtype == c.dtype == torch.float64 and r.shape == c.shape == (3, 1, 1, 1)
    with pytest.raises(ValueError) as error:
        predictor.step_ratios(x, 2.0, 1.0, analytic=False)
    assert str(error.value) == ("this AMED predictor reads the UNet's bottleneck at each step's first call: run the "
                                "sampler through samplers.solve / sample, which watch the denoiser for it")
    denoiser = unet_denoiser()
    with predictor.watch(denoiser) as watching:
        denoiser(noise(2, 1, 8, 8), torch.tensor(1.0))  # features of a batch of 2 for samples of 3
        with pytest.raises(ValueError) as error:
            watching.step_ratios(x, 2.0, 1.0, analytic=False)
    assert str(error.value) == ("this AMED predictor takes 16 bottleneck features per sample, the model gave (2, 16) "
                                "for a batch of 3")


def test_amed_plugin_without_afs_reads_the_bottleneck_of_its_first_call_too():
    denoiser = unet_denoiser()
    sigmas = karras(denoiser, 3)
    torch.manual_seed(0)
    predictor = AMEDPredictor(feature_dim=bottleneck_size(denoiser), sampler="amed_plugin", base="ipndm")
    mids, read = [], []
    denoiser.unet.mid_block.register_forward_hook(lambda module, args, out: mids.append(out.mean(1).flatten(1)))
    predictor.register_forward_hook(lambda module, args, out: read.append(args[0]))
    samplers.sample("amed_plugin", denoiser, noise(4, 1, 8, 8), sigmas, base="ipndm", predictor=predictor)
    assert len(read) == 3 and all(torch.equal(features, mids[2 * n]) for n, features in enumerate(read))
    assert read[0].abs().sum() > 0


def test_amed_is_scored_restarting_each_step_from_the_teachers_point(gmm):
    """The loss of a batch: per sample, the distance of each of amed's steps, taken from the teacher's
    point, to the teacher's next point; the noise is brought to float64 first."""
    sigmas = karras(gmm, 3)
    objective = AMEDDistillation(gmm, sigmas, "amed")
    torch.manual_seed(3)
    predictor = AMEDPredictor(hidden_dim=8)  # time only, for any grid: each step's r and c from t_n, t_{n+1}
    batch = noise(5, 2)
    x = batch.double() * 80.0
    teacher = objective.teacher_points(x)
    expected = sum(squared_distance(samplers.sample("amed", gmm, teacher[n] / sigmas[n], sigmas[n:n + 2],
                                                    predictor=predictor), teacher[n + 1]) for n in range(3))
    torch.testing.assert_close(objective.student_error(predictor, x, teacher), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(objective.losses({"predictor": predictor}, batch, 0, [])["predictor"], expected.mean(),
                               rtol=1e-12, atol=0)


def test_train_amed_takes_a_table_grid_without_the_grid_values_its_yaml_sets_for_karras(tmp_path):
    """conf/train_amed.yaml sets schedule.sigma_max 80 and final_sigmas_type sigma_min for its Karras grid;
    `schedule.kind=table` refuses only the values the command line gives."""
    from fewstep.tuning import schedule_tables

    gmm = samplers.GMMDenoiser(**{k: v for k, v in OmegaConf.load(ROOT / "conf" / "model" / "gmm.yaml").items()
                                  if k != "_target_"})
    grid = [60.0, 5.0, 0.5, gmm.sigma_min]  # amed with afs on 3 steps to sigma_min: NFE 5
    table = schedule_tables.write(tmp_path / "amed.json", gmm, "amed", {"afs": True}, "gmm", "ode_error", 5, grid,
                                  command="written here")
    run = ["model=gmm", "train.steps=2", "train.batch_size=32", "train.checkpoint_every=2", "train.cpu=true",
           "schedule.kind=table", f"schedule.table={table}"]
    done = ok(run_cli("train_amed.py", *run, f"out_dir={tmp_path / 'run'}"))
    assert f"AMED amed at NFE 5: schedule: table, the searched grid for NFE 5 ({table}); sigmas 60, 5, 0.5, 0.002" in done.stdout
    refused = run_cli("train_amed.py", *run, "schedule.sigma_max=80", f"out_dir={tmp_path / 'refused'}")
    assert the_error(refused) == (f"error: schedule.kind=table takes its whole grid from schedule.table={table}; "
                                  f"drop schedule.sigma_max=80.0")
    assert not (tmp_path / "refused").exists()


def test_the_teacher_points_of_the_held_out_noises_are_said_and_shown_as_a_bar(gmm, capsys, caplog):
    objective = AMEDDistillation(gmm, karras(gmm, 3), "amed", {"afs": True}, nfe=5, held_out=6)
    with caplog.at_level("INFO", logger="fewstep.tuning.amed_distill"):
        objective.held_out_noise()
        objective.held_out_noise()  # made once
    assert caplog.messages == ["the teacher's points (heun) for 6 held-out noises"]
    assert "teacher (heun): " in capsys.readouterr().err
    objective.teacher_points(torch.zeros(2, 2, dtype=torch.float64))  # a training batch's: no bar
    assert capsys.readouterr().err == ""
