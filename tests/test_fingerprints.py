"""The weight fingerprint of a model (samplers.fingerprint): measured from its files when it was loaded
from a directory (once), else from its state dict; the store's folders beside a model are not its weights."""
import torch
from diffusers import DDPMScheduler

from helpers import tiny_unet
from fewstep import samplers
from fewstep.samplers.fingerprints import KINDS


def denoiser(path=None):
    model = samplers.DiffusersUNetDenoiser(tiny_unet(), DDPMScheduler().alphas_cumprod)
    if path is not None:
        model.pretrained_path = path
    return model


def test_a_models_fingerprint_is_kept_only_when_it_comes_from_files(tmp_path):
    """Weights in memory are measured at every call; a model loaded from files is measured once (its
    files are not read again at every sampling a predictor checks it for)."""
    model = denoiser()
    first = samplers.fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert samplers.fingerprint(model) != first
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    model.pretrained_path = tmp_path
    kept = samplers.fingerprint(model)
    assert kept != first and len(kept) == 16
    weights.write_bytes(b"other weights")
    assert samplers.fingerprint(model) == kept != samplers.fingerprint(denoiser(tmp_path))


def test_the_store_s_folders_are_not_part_of_the_weights(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.safetensors").write_bytes(b"weights")
    before = samplers.fingerprint(denoiser(tmp_path))
    for kind in KINDS:
        (tmp_path / kind / "x").mkdir(parents=True)
        (tmp_path / kind / "x" / "w.safetensors").write_bytes(b"tuned")
    assert samplers.fingerprint(denoiser(tmp_path)) == before
    (tmp_path / "vae.bin").write_bytes(b"more weights")
    assert samplers.fingerprint(denoiser(tmp_path)) != before
