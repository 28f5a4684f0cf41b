"""AMED's learned predictor (samplers/amed_predictor.py) and its distillation (samplers/amed_distill.py):
on the analytic mixture, training lowers the sampler's distance to the teacher and the frozen table keeps
it; the bottleneck hook on a tiny UNet reads the mid block of each step's first call, no call of its own;
save and load; every refusal in one line; `scripts/train_amed.py` in two processes trains the predictor
one process trains."""
import csv
import json
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from conftest import tiny_unet
from fewstep import samplers
from fewstep.samplers import schedule_tables
from fewstep.samplers.amed import between
from fewstep.samplers.amed_distill import AMEDDistillation, NoiseDataset
from fewstep.samplers.amed_predictor import AMEDPredictor, bottleneck_size, frozen_table
from fewstep.training import Trainer
from test_reflow_multiprocess import ENV, command, finish, start, stop

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
        "model": "tiny", "fingerprint": schedule_tables.fingerprint(denoiser)}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == dict(predictor.config)
    x = noise(3, 1, 8, 8)
    runs = [samplers.sample("amed_plugin", denoiser, x, sigmas, base="dpmpp_2m", afs=True, predictor=p)
            for p in (predictor, loaded)]
    assert torch.equal(*runs)
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
    "a pipeline": (lambda g, p: samplers.FewstepScheduler(sampler="amed", sampler_options={"predictor": p}),
                   r"^FewstepScheduler cannot take an AMED predictor .*: give amed its frozen table, frozen_table=DIR "
                   r"or sampler_options r=\[\.\.\.\], c=\[\.\.\.\]$"),
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
        objective.losses({"predictor": objective.new_predictor()}, noise(4, 2), 0)


# -- scripts/train_amed.py: one process, two processes, an NFE out of reach --------------------------------
RUN = ["model=gmm", "train.steps=20", "train.batch_size=32", "train.checkpoint_every=20", "train.log_every=5",
       "train.cpu=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in one process and in two, and one asking for NFE 4, all at once."""
    tmp = tmp_path_factory.mktemp("train_amed")
    procs = [start(command("train_amed.py", *RUN, f"out_dir={tmp / 'one'}"), tmp / "one"),
             start(command("train_amed.py", *RUN, f"out_dir={tmp / 'two'}", processes=2), tmp / "two")]
    try:
        refused = subprocess.run(command("train_amed.py", *RUN, "nfe=4", f"out_dir={tmp / 'nfe4'}"), env=ENV,
                                 capture_output=True, text=True, timeout=120)
        one, two = map(finish, procs)
    finally:
        stop(*procs)
    return tmp, one, two, refused


def test_two_processes_train_the_predictor_one_process_trains(runs):
    tmp = runs[0]
    weights = [load_file(str(tmp / run / "model" / "diffusion_pytorch_model.safetensors")) for run in ("one", "two")]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    # the same batches; the gradients' all-reduce adds in another order, so equal to rounding
    assert all(torch.allclose(weights[0][k], weights[1][k], rtol=1e-4, atol=1e-5) for k in weights[0])
    logged = [[float(row["loss"]) for row in csv.DictReader(open(tmp / run / "loss.csv"))] for run in ("one", "two")]
    assert logged[0] == pytest.approx(logged[1], rel=1e-5) and logged[0][-1] < 0.5 * logged[0][0], logged
    summaries = [json.loads((tmp / run / "train_summary.json").read_text()) for run in ("one", "two")]
    assert [s["num_processes"] for s in summaries] == [1, 2]
    assert [s["updates"] for s in summaries] == [{"predictor": 20}] * 2
    config = json.loads((tmp / "two" / "model" / "config.json").read_text())
    assert (config["sampler"], config["afs"], config["nfe"], config["model"], config["feature_dim"]) == (
        "amed", True, 5, "gmm", 0)
    assert config["sigmas"][0] == 80.0 and len(config["sigmas"]) == 4


def test_an_nfe_the_sampler_cannot_reach_is_refused_in_one_line(runs):
    refused = runs[3]
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: amed with afs=True on a grid ending at sigma_min costs 3 NFE for 2 steps, not nfe=4: it reaches NFE "
        "1, 3, 5, 7, 9, 11, ...")
