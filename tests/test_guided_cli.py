"""Classifier-free guidance on the command line (cli.conditioning): guidance_scale= and classes= of the
sampling and tuning commands, on tiny random class-conditional UNets saved as DDPM pipelines."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.cli.conditioning import conditioned
from fewstep.evaluation.classifier import ClassHits
from fewstep.evaluation.generators import SamplerFn
from fewstep.evaluation.seeds import gather_by_seed, generate, split
from fewstep.samplers import DiffusersUNetDenoiser, get_sigmas
from fewstep.samplers.guidance import labels_of_run
from helpers import TABLE, run_cli, the_error, ok, tiny_unet


def save_pipeline(path, **unet):
    from diffusers import DDPMPipeline, DDPMScheduler

    net = tiny_unet(**unet)
    if "num_class_embeds" in unet:
        with torch.no_grad():
            net.class_embedding.weight.mul_(20)  # classes far apart, so a wrong label shows
    DDPMPipeline(unet=net, scheduler=DDPMScheduler(**TABLE)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A class-conditional 16x16 model (3 classes and the null class; 16x16 for the digits classifier) and an
    unconditional 8x8 one."""
    root = tmp_path_factory.mktemp("guided")
    return {"cond": save_pipeline(root / "cond", sample_size=16, num_class_embeds=4),
            "plain": save_pipeline(root / "plain")}


def sample_args(path, out, *more):
    return ["model=diffusers", f"model.path={path}", "sampler=euler", "nfe=2", "device=cpu", f"out_dir={out}", *more]


def test_a_guided_run_draws_sample_i_for_its_class_and_shows_one_row_per_class(models, tmp_path):
    done = ok(run_cli("sample.py", *sample_args(models["cond"], tmp_path, "guidance_scale=2", "num_samples=7")))
    first = done.stdout.splitlines()[0]
    assert first.startswith("class-conditional model (3 classes): guidance_scale 2, classes all"), first
    saved = np.load(tmp_path / "samples.npz")
    assert saved["class_labels"].tolist() == [0, 1, 2, 0, 1, 2, 0] and float(saved["guidance_scale"]) == 2
    tile = 64 + 2  # 16 pixels enlarged to 64, and the padding
    assert Image.open(tmp_path / "samples.png").size == (2 * tile + 2, 3 * tile + 2)  # 3 classes, 2 of each shown


def test_a_conditional_model_without_a_scale_samples_the_plain_conditional_model_and_says_so(models, tmp_path):
    done = ok(run_cli("sample.py", *sample_args(models["cond"], tmp_path, "classes=[2,0]", "num_samples=3")))
    assert "guidance_scale 1 (unset: the plain conditional model), classes [2, 0]" in done.stdout.splitlines()[0]
    assert np.load(tmp_path / "samples.npz")["class_labels"].tolist() == [2, 0, 2]


def test_the_benchmark_refuses_guidance_for_suites_of_unconditional_models(tmp_path):
    done = run_cli("benchmark.py", "--suite", "gmm", "--guidance-scale", "2", "--out-dir", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == (
        "benchmark.py: error: --guidance-scale 2 needs a conditional model; suite gmm samples unconditional models")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["sample.py", "eval_fid.py", "search_schedule.py", "train_amed.py",
                                    "calibrate_skiptune.py"])
def test_guidance_for_an_unconditional_model_is_refused_by_every_command_before_anything_is_written(
        models, tmp_path, script):
    out = tmp_path / "out"
    device = "train.cpu=true" if script == "train_amed.py" else "device=cpu"
    done = run_cli(script, "model=diffusers", f"model.path={models['plain']}", "guidance_scale=2", device,
                   f"out_dir={out}")
    assert the_error(done) == ("error: guidance_scale=2 needs a conditional model; DiffusersUNetDenoiser has no "
                               "class embeddings (num_class_embeds): drop guidance_scale")
    assert not out.exists()


def test_classes_the_model_does_not_have_are_refused_in_one_line(models, tmp_path):
    done = run_cli("sample.py", *sample_args(models["cond"], tmp_path / "out", "classes=[0,5]"))
    assert the_error(done) == "error: classes=[0, 5]: class 5 is not one of the model's 3 classes 0..2"
    assert not (tmp_path / "out").exists()
    cond, plain = (DiffusersUNetDenoiser.from_pretrained(str(models[k])) for k in ("cond", "plain"))
    with pytest.raises(ValueError, match=r"^classes=\[\] chooses no class: give at least one, or null for all$"):
        conditioned({"classes": []}, cond)
    with pytest.raises(ValueError, match=r"^classes=\[1\] needs a class-conditional model; DiffusersUNetDenoiser has "
                                         r"no class embeddings$"):
        conditioned({"classes": [1]}, plain)


class Halves:
    """A fake accelerator: process `index` of `count`."""

    def __init__(self, index, count):
        self.process_index, self.num_processes = index, count


def test_each_seed_keeps_its_class_when_the_seeds_are_split_over_processes(models):
    given = conditioned({"guidance_scale": 2.0, "classes": [2, 1]},
                        DiffusersUNetDenoiser.from_pretrained(str(models["cond"])))
    sigmas = get_sigmas("karras", 2, sigma_min=given.denoiser.sigma_min, sigma_max=given.denoiser.sigma_max)
    seen = []
    spy = given.of_seeds(10)
    fn = SamplerFn("euler", given.denoiser, sigmas, (1, 16, 16), cond=lambda seeds: seen.append(seeds) or spy(seeds))
    seeds = list(range(10, 15))
    alone = torch.cat(list(generate(fn, seeds, 5)))
    parts = [list(generate(fn, split(seeds, Halves(p, 2)), 2)) for p in range(2)]
    together = torch.stack([[x for batch in parts[i % 2] for x in batch][i // 2] for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-3, atol=1e-3)  # float32 UNet, other batch sizes
    assert seen[1:] == [[10, 12], [14], [11, 13]]  # process 0 in two batches, then process 1
    assert spy([14, 11])["class_labels"].tolist() == [2, 1]  # seed 10 + i: class [2, 1][i mod 2]
    assert gather_by_seed(seeds, [alone]).shape == alone.shape


def test_class_hits_count_the_samples_the_classifier_puts_in_the_class_asked_for():
    class FirstPixel(torch.nn.Module):  # "class 1" when the first pixel is positive, else class 0
        def forward(self, x):
            return torch.stack([-x[:, 0, 0, 0], x[:, 0, 0, 0]], 1)

    images = torch.tensor([1.0, -1.0, 1.0, 1.0]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    hits = ClassHits(lambda seeds: images[seeds], FirstPixel(), lambda seeds: labels_of_run(seeds, 2))
    list(generate(hits, range(4), 3))
    assert hits.count == 4 and hits.accuracy() == 0.25  # asked 0, 1, 0, 1; classified 1, 0, 1, 1


def test_eval_of_a_class_conditional_model_prints_its_class_accuracy(models, tmp_path):
    done = ok(run_cli("eval_fid.py", *sample_args(models["cond"], tmp_path, "guidance_scale=3", "num_samples=6",
                                                  "batch_size=4")))
    lines = done.stdout.splitlines()
    fd = next(line for line in lines if line.startswith("FD-digits "))
    accuracy = next(line for line in lines if line.startswith("class-accuracy "))
    result = json.loads(next(tmp_path.glob("fd-digits-*.json")).read_text())
    assert f"{result['class_accuracy']:.4f}" == accuracy.split()[1] and fd.split()[1] == f"{result['fd']:.4f}"
    assert result["class_accuracy"] in {k / 6 for k in range(7)} and result["guidance_scale"] == 3.0
