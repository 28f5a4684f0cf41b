"""The one store of tuned artifacts (tuning.store): paths beside the model, the weight fingerprint that
ignores the store's folders, the refusal of another model's artifact."""
import pytest
import torch
from diffusers import DDPMScheduler

from helpers import tiny_unet
from fewstep import samplers
from fewstep.tuning import store


def denoiser():
    return samplers.DiffusersUNetDenoiser(tiny_unet(), DDPMScheduler().alphas_cumprod)


def test_a_models_fingerprint_is_kept_only_when_it_comes_from_files(tmp_path):
    """Weights in memory are measured at every call; a model loaded from files is measured once (its
    files are not read again at every sampling a predictor checks it for)."""
    model = denoiser()
    first = store.fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert store.fingerprint(model) != first
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    model.pretrained_path = tmp_path
    kept = store.fingerprint(model)
    assert kept != first and len(kept) == 16
    weights.write_bytes(b"other weights")
    again = denoiser()
    again.pretrained_path = tmp_path
    assert store.fingerprint(model) == kept != store.fingerprint(again)


def test_the_store_s_folders_are_not_part_of_the_weights(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.safetensors").write_bytes(b"weights")
    before = store.fingerprint(denoiser_at(tmp_path))
    for kind in store.KINDS:
        (tmp_path / kind / "x").mkdir(parents=True)
        (tmp_path / kind / "x" / "w.safetensors").write_bytes(b"tuned")
    assert store.fingerprint(denoiser_at(tmp_path)) == before
    (tmp_path / "vae.bin").write_bytes(b"more weights")
    assert store.fingerprint(denoiser_at(tmp_path)) != before


def denoiser_at(path):
    model = denoiser()
    model.pretrained_path = path
    return model


def test_artifacts_lie_beside_the_model_in_known_folders_only(tmp_path):
    assert store.beside(denoiser_at(tmp_path), "schedules", "heun.json") == tmp_path / "schedules" / "heun.json"
    assert store.beside(denoiser(), "amed", "amed-nfe5") is None
    with pytest.raises(ValueError, match="^unknown kind of tuned artifact 'tables': use one of schedules, amed, skiptune$"):
        store.beside(denoiser_at(tmp_path), "tables", "x")


def test_another_models_artifact_is_refused_naming_both_fingerprints():
    model = denoiser()
    with pytest.raises(ValueError, match=f"^T.json was tuned for another model \\(weights 0123\\); this one's weights "
                                         f"are {store.fingerprint(model)}$"):
        store.check_made_for("0123", model, "T.json")
    store.check_made_for(store.fingerprint(model), model, "T.json")
