"""prompts=FILE on the command line (cli.conditioning.prompted): a user's own text-to-image pipeline, its grid
searched under guidance with search_schedule.py, then sampled by the pipeline with FewstepScheduler and that
table; and the bad input of a prompted run, each refused in one line before anything is written."""
import hashlib
import json
import math
import re

import pytest
import torch

from fewstep import samplers
from fewstep.cli.conditioning import conditioned
from fewstep.pipelines import FewstepScheduler
from fewstep.samplers.prompts import load_pipeline, rows_of_run, text_guided
from fewstep.suites.tiny_pipelines import tiny_text_to_image
from helpers import LatentRecorder, ok, range_gap, run_cli, the_error
from test_guided_cli import save_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread

PROMPTS = ["a red cat", "a dog"]
FAST = ["sampler=dpmpp_2m", "nfes=[5]", "num_noises=4", "iterations=2", "rtol=1e-3", "atol=1e-3", "device=cpu"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random StableDiffusionPipeline saved to disk, a prompt file of two prompts and a plain DDPM model."""
    root = tmp_path_factory.mktemp("prompted")
    tiny_text_to_image(root / "tok").save_pretrained(root / "pipe")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"pipe": root / "pipe", "prompts": root / "prompts.txt", "plain": save_pipeline(root / "plain")}


@pytest.fixture(scope="module")
def searched(saved, tmp_path_factory):
    """The issue's recipe, step one: the grid of dpmpp_2m at NFE 5 searched under guidance 7.5 with the prompts."""
    return ok(run_cli("search_schedule.py", "model=diffusers", f"model.path={saved['pipe']}",
                      f"prompts={saved['prompts']}", "guidance_scale=7.5", *FAST, "write=true",
                      f"out_dir={tmp_path_factory.mktemp('search')}"))




def pipeline_and_ours(pipe_dir, sampler, steps, options=None, **config):
    """The latents of the saved pipeline with `FewstepScheduler(sampler, **config)` at guidance 7.5, and
    `samplers.solve` of the guided UNet (with the sampler's `options`) from the pipeline's start on the
    pipeline's grid, and that grid."""
    pipe = load_pipeline(pipe_dir)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, sampler=sampler, **config)
    recorder = LatentRecorder(pipe)
    latents = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=7.5, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
    grid = pipe.scheduler.grid
    guided, embeds = text_guided(pipe, PROMPTS, 7.5)
    x = recorder.latents.double() * math.sqrt(1 + float(grid[0]) ** 2)  # diffusers' unit-variance start
    with torch.no_grad():
        ours = samplers.solve(sampler, guided, x, grid, cond=rows_of_run(embeds, range(2)), **(options or {}))
    return latents.double(), ours / math.sqrt(1 + float(grid[-1]) ** 2), grid.double()  # x_vp, as the pipeline's


def test_a_grid_searched_with_prompts_is_the_one_the_pipeline_samples_on(saved, searched):
    pipe_dir, prompts = saved["pipe"], saved["prompts"]
    assert searched.stdout.splitlines()[0] == (f"text-to-image pipeline StableDiffusionPipeline: guidance_scale 7.5, "
                                               f"2 prompts from {prompts}: sample i for prompt i mod 2")
    assert re.search(r"^dopri5 references of 8 noises: \d+ s, NFE \d+ \+ \d+ \(batches of 4\)$", searched.stdout, re.M)
    table = json.loads((pipe_dir / "schedules" / "dpmpp_2m-cfg7.5.json").read_text())
    assert table["guidance_scale"] == 7.5 and table["conditioning"] == {"prompts": {
        "file": str(prompts), "sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(), "count": 2}}
    searched = torch.tensor(table["by_nfe"]["5"]["sigmas"], dtype=torch.float64)

    latents, ours, grid = pipeline_and_ours(pipe_dir, "dpmpp_2m", 5, schedule_table=pipe_dir, guidance_scale=7.5)
    assert torch.allclose(grid, searched, rtol=1e-6, atol=0)
    own = load_pipeline(pipe_dir).scheduler.config  # the pipeline's DDIMScheduler's
    karras = FewstepScheduler.from_config(own, sampler="dpmpp_2m")
    karras.set_timesteps(5)
    assert range_gap(karras.grid.double(), searched) > 1e-2  # the table changed the grid, so the check could fail
    assert range_gap(latents, ours) < 1e-5
    with pytest.raises(ValueError, match=r"has no schedule table of dpmpp_2m for guidance_scale=3"):
        FewstepScheduler.from_config(own, sampler="dpmpp_2m", schedule_table=pipe_dir, guidance_scale=3).set_timesteps(5)


def test_an_amed_predictor_distilled_with_prompts_gives_the_pipeline_its_frozen_table(saved, tmp_path):
    done = ok(run_cli("train_amed.py", "model=diffusers", f"model.path={saved['pipe']}", f"prompts={saved['prompts']}",
                      "guidance_scale=7.5", "nfe=5", "schedule.sigma_max=null", "train.steps=2", "train.batch_size=4",
                      "train.cpu=true", "objective.held_out=4", "write=true", f"out_dir={tmp_path}"))
    assert "text-to-image pipeline StableDiffusionPipeline: guidance_scale 7.5, 2 prompts from" in done.stdout
    stored = saved["pipe"] / "amed" / "amed-cfg7.5-nfe5"
    table = json.loads((stored / "frozen_table.json").read_text())
    assert table["guidance_scale"] == 7.5 and table["conditioning"]["prompts"]["count"] == 2
    r_and_c = {key: table["sampler_options"][key] for key in ("r", "c")}
    latents, ours, grid = pipeline_and_ours(saved["pipe"], "amed", len(table["sigmas"]) - 1, r_and_c, frozen_table=stored)
    assert torch.allclose(grid, torch.tensor(table["sigmas"], dtype=torch.float64), rtol=1e-6, atol=0)
    assert range_gap(latents, ours) < 1e-5


def test_unset_guidance_is_the_pipelines_default_and_sample_i_takes_prompt_i_mod_p(saved):
    given = conditioned({"prompts": str(saved["prompts"])}, samplers.from_pretrained(str(saved["pipe"])))
    assert "guidance_scale 7.5 (unset: the pipeline's default), 2 prompts" in given.line
    assert given.denoiser.guidance_scale == 7.5
    rows, embeds = given.cond_of([0, 1, 2, 5])["encoder_hidden_states"], given.cond_of([0, 1])["encoder_hidden_states"]
    assert torch.equal(rows, embeds[[0, 1, 0, 1]]) and not torch.equal(embeds[0], embeds[1])


def bad(saved, tmp_path, *overrides, script="search_schedule.py"):
    out = tmp_path / "out"
    device = "train.cpu=true" if script == "train_amed.py" else "device=cpu"
    done = run_cli(script, "model=diffusers", f"model.path={saved['pipe']}", "sampler=dpmpp_2m", device,
                   f"out_dir={out}", *overrides)
    error = the_error(done)
    assert not out.exists()
    return error


def test_bad_prompts_are_refused_in_one_line_before_anything_is_written(saved, tmp_path):
    plain, missing, empty = saved["plain"], tmp_path / "missing.txt", tmp_path / "empty.txt"
    assert bad(saved, tmp_path, f"prompts={saved['prompts']}", f"model.path={plain}") == (
        f"error: prompts={saved['prompts']} needs a text-to-image pipeline (model=diffusers model.path=DIR, a "
        f"Stable-Diffusion-style pipeline); DiffusersUNetDenoiser at {plain} is not one")
    assert bad(saved, tmp_path, f"prompts={missing}") == f"error: prompt file does not exist: {missing}"
    empty.write_text("\n  \n")
    assert bad(saved, tmp_path, f"prompts={empty}") == (
        f"error: the prompt file {empty} has no prompts: write one prompt a line")
    long = tmp_path / "long.txt"
    long.write_text("a cat\n" + " ".join("abcdefghijklmnopqrst") + "\n")
    assert bad(saved, tmp_path, f"prompts={long}").startswith("error: prompt 2 ('a b c d e f g h i j k l m n o p q r "
                                                               "s t') has 22 tokens; the pipeline's text encoder takes 16")
    assert bad(saved, tmp_path) == (f"error: DiffusersUNetDenoiser at {saved['pipe']} is text-conditional "
                                    f"(cross_attention_dim): give prompts=FILE, one prompt a line")
    assert bad(saved, tmp_path, f"prompts={saved['prompts']}", "classes=[1]") == (
        "error: classes=[1] needs a class-conditional model; DiffusersUNetDenoiser is text-conditional (prompts=FILE)")


def test_calibrate_skiptune_does_not_take_prompts_yet_and_says_so(saved, tmp_path):
    assert bad(saved, tmp_path, f"prompts={saved['prompts']}", script="calibrate_skiptune.py") == (
        f"error: prompts={saved['prompts']} is not supported by calibrate_skiptune.py yet: search a text-to-image "
        f"pipeline's grid with search_schedule.py prompts=FILE")
    assert bad(saved, tmp_path, f"prompts={saved['prompts']}", f"model.path={saved['plain']}",
               script="train_amed.py").startswith(f"error: prompts={saved['prompts']} needs a text-to-image pipeline")


def test_a_table_searched_at_another_guidance_scale_is_refused_when_asked_for(saved, searched, tmp_path):
    table = saved["pipe"] / "schedules" / "dpmpp_2m-cfg7.5.json"
    before = table.read_text()
    assert bad(saved, tmp_path, f"prompts={saved['prompts']}", "guidance_scale=3", *FAST, "write=true",
               f"table={table}") == f"error: {table} was tuned at guidance 7.5; this run samples at guidance 3"
    assert table.read_text() == before
    pipe = load_pipeline(saved["pipe"])
    with pytest.raises(ValueError, match=r"was searched at guidance 7.5, not at guidance 3"):
        FewstepScheduler.from_config(pipe.scheduler.config, sampler="dpmpp_2m", schedule_table=str(table),
                                     guidance_scale=3).set_timesteps(5)
