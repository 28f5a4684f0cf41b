"""samplers/prompts.py: a Stable-Diffusion-style pipeline's UNet, guided by prompts encoded with the
pipeline's own encode_prompt, samples what the pipeline with FewstepScheduler samples."""
import math

import pytest
import torch
from diffusers import DDPMPipeline

from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.samplers.prompts import encode_prompts, load_pipeline, read_prompts, rows_of_run, text_guided
from fewstep.suites.tiny_pipelines import tiny_text_to_image
from helpers import LatentRecorder, range_gap, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    tiny_text_to_image(root / "tok").save_pretrained(root / "pipe")
    return load_pipeline(root / "pipe")




@pytest.mark.parametrize("name", ["dpmpp_2m", "heun", "ddim"])
def test_a_guided_sample_is_the_pipelines_with_fewstep_scheduler(pipe, name):
    prompts, w = ["a red cat", "a dog"], 7.5
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, sampler=name)
    recorder = LatentRecorder(pipe)
    try:
        latents = pipe(prompts, guidance_scale=w, num_inference_steps=5, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
    finally:
        del pipe.prepare_latents
    guided, embeds = text_guided(pipe, prompts, w)
    grid = pipe.scheduler.grid
    x = recorder.latents.double() * math.sqrt(1 + float(grid[0]) ** 2)  # diffusers' unit-variance start
    with torch.no_grad():
        ours = samplers.solve(name, guided, x, grid, cond=rows_of_run(embeds, range(2)))
    assert range_gap(latents.double(), ours) < 1e-5
    unguided = samplers.solve(name, text_guided(pipe, prompts, 1.0)[0], x, grid, cond=rows_of_run(embeds, range(2)))
    assert range_gap(unguided, ours) > 1e-2  # guidance changes the sample, so the comparison could fail


def test_the_store_of_a_text_guided_model_is_its_pipeline_directory(pipe):
    guided, embeds = text_guided(pipe, ["a cat"], 3.0)
    assert guided.pretrained_path == pipe.pretrained_path
    assert samplers.fingerprint(guided) == samplers.fingerprint(text_guided(pipe, ["a dog"], 5.0)[0])
    assert rows_of_run(embeds.repeat(2, 1, 1), [0, 3])["encoder_hidden_states"].shape == (2, *embeds.shape[1:])


def test_prompt_files_are_read_one_prompt_a_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\n\n  a dog  \n")
    assert read_prompts(path) == ["a red cat", "a dog"]
    path.write_text("\n \n")
    with pytest.raises(ValueError, match=rf"the prompt file {path} has no prompts"):
        read_prompts(path)
    with pytest.raises(FileNotFoundError, match=r"prompt file does not exist: .*missing\.txt"):
        read_prompts(tmp_path / "missing.txt")


def test_prompts_the_text_encoder_cannot_take_are_refused(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"prompt 2 \('a b c d .*has 22 tokens; the pipeline's text encoder takes 16"):
        encode_prompts(pipe, ["a cat", " ".join("abcdefghijklmnopqrst")])
    pipe.unet.register_to_config(cross_attention_dim=64)
    try:
        with pytest.raises(ValueError, match=r"prompt embeddings of width 32; the UNet takes cross_attention_dim 64"):
            encode_prompts(pipe, ["a cat"])
    finally:
        pipe.unet.register_to_config(cross_attention_dim=32)
    unconditional = DDPMPipeline(unet=tiny_unet(), scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match=r"prompts need a Stable-Diffusion-style pipeline .*DDPMPipeline is not one"):
        encode_prompts(unconditional, ["a cat"])
    with pytest.raises(FileNotFoundError, match=r"no diffusers pipeline \(model_index.json\) at"):
        load_pipeline(tmp_path)
