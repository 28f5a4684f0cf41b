"""The one store of tuned artifacts (tuning.store): paths beside the model, the refusal of another
model's artifact (the fingerprint itself: test_fingerprints.py)."""
import pytest
from diffusers import DDPMScheduler

from helpers import tiny_unet
from fewstep import samplers
from fewstep.tuning import store


def denoiser():
    return samplers.DiffusersUNetDenoiser(tiny_unet(), DDPMScheduler().alphas_cumprod)


def denoiser_at(path):
    model = denoiser()
    model.pretrained_path = path
    return model


def test_artifacts_lie_beside_the_model_in_known_folders_only(tmp_path):
    assert store.beside(denoiser_at(tmp_path), "schedules", "heun.json") == tmp_path / "schedules" / "heun.json"
    assert store.beside(denoiser(), "amed", "amed-nfe5") is None
    with pytest.raises(ValueError, match="^unknown kind of tuned artifact .tables.: use one of schedules, amed, skiptune, solvers$"):
        store.beside(denoiser_at(tmp_path), "tables", "x")


def test_another_models_artifact_is_refused_naming_both_fingerprints():
    model = denoiser()
    with pytest.raises(ValueError, match=f"^T.json was tuned for another model \\(weights 0123\\); this one's weights "
                                         f"are {samplers.fingerprint(model)}$"):
        store.check_made_for("0123", model, "T.json")
    store.check_made_for(samplers.fingerprint(model), model, "T.json")
