"""The wheel, as a user installs it: built from (a copy of) the checkout, installed into a folder
outside it, and used from another working directory with the checkout's editable install out of
sight (`python -S` skips the .pth file that installs it; PYTHONPATH is the wheel's folder, then the
dependencies of this environment). The default model, the FD-digits extractor and the Skip-Tuning
tables must come from the wheel, found by name, and the console command must sample."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

from helpers import ROOT

NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", ".ci", "runs", "outputs", "multirun", "build", "dist",
                                     "mutants", "*.egg-info", "__pycache__", ".pytest_cache", "tests")


def pip(*args, cwd=None):
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, f"pip {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the folder the wheel is installed into, a working directory outside the checkout, the environment)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout
    shutil.copytree(ROOT, source, ignore=NOT_SHIPPED)
    # The build backend of pyproject.toml: from this environment when it has it, else pip fetches it.
    have_backend = int(version("setuptools").split(".")[0]) >= 68
    pip("wheel", "--no-deps", *(["--no-build-isolation"] if have_backend else []), "-w", str(tmp / "dist"),
        str(source))
    (wheel,) = (tmp / "dist").glob("fewstep-*.whl")
    target = tmp / "site"
    pip("install", "--no-deps", "--no-compile", "--target", str(target), str(wheel))
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    dependencies = sysconfig.get_paths()["purelib"]  # this environment's site-packages: torch, diffusers, ...
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), dependencies]), "OMP_NUM_THREADS": "1",
           "PYTHONNOUSERSITE": "1"}
    return target, elsewhere, env


def python(installed, *args):
    target, elsewhere, env = installed
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=300)


PROBE = """
import json, torch
import fewstep.samplers as samplers, fewstep.evaluation, fewstep.conf, fewstep.assets, fewstep.scripts, fewstep.cli
from fewstep.evaluation import get_extractor
from fewstep.tuning import skiptune_tables
from fewstep.tuning.amed_predictor import shipped

denoiser = samplers.DiffusersUNetDenoiser.from_pretrained("digits_ddpm")
sigmas = samplers.get_sigmas("karras", 2, denoiser.sigma_min, denoiser.sigma_max)
x = samplers.sample("ddim", denoiser, torch.randn(2, *denoiser.sample_shape, generator=torch.Generator().manual_seed(0)), sigmas)
features = get_extractor("digits")(x.clamp(-1, 1))
table = skiptune_tables.default_path(denoiser, "ddim")
generators = {}  # the one-step generators, by their model configs in the wheel (they take no sampler)
for name in ("digits_gan", "digits_rf_gan"):
    if name in fewstep.assets.names():
        from hydra.utils import instantiate
        from importlib.resources import files
        from omegaconf import OmegaConf
        generator = instantiate(OmegaConf.load(files("fewstep.conf") / "model" / f"{name}.yaml"))
        generators[name] = [str(fewstep.assets.path(name)), list(generator(torch.randn(2, *generator.latent_shape)).shape)]
print(json.dumps({"generators": generators, "files": [m.__file__ for m in (samplers, fewstep.evaluation, fewstep.conf, fewstep.assets, fewstep.scripts,
                                                 fewstep.cli)],
                  "table": str(table), "by_nfe": {k: e["rho_bottom"] for k, e in skiptune_tables.load(table)["by_nfe"].items()},
                  "features": list(features.shape),
                  "amed": {n: str(p) for n, p in shipped(denoiser, "amed").items()}}))
"""


def shipped_ddim_table() -> dict:
    """`{nfe: rho_bottom}` of the checkout's assets/digits_ddpm/skiptune/ddim.json, which the wheel must carry."""
    table = json.loads((ROOT / "assets" / "digits_ddpm" / "skiptune" / "ddim.json").read_text())
    return {int(k): e["rho_bottom"] for k, e in table["by_nfe"].items()}


def test_the_installed_wheel_finds_its_model_extractor_and_tables_by_name(installed):
    target = installed[0]
    done = python(installed, "-c", PROBE)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(target) for f in [*found["files"], found["table"]]), found
    assert found["by_nfe"] == {str(k): v for k, v in shipped_ddim_table().items()} and found["features"] == [2, 64]
    # the AMED predictors travel with the model (sample.py sampler=amed nfe=N finds them: test_amed_shipped)
    assert sorted(found["amed"]) == ["3", "5", "7", "9"] and all(Path(f).is_relative_to(target)
                                                                 for f in found["amed"].values())
    assert found["generators"] and all(Path(where).is_relative_to(target) and shape == [2, 1, 16, 16]
                                       for where, shape in found["generators"].values()), found["generators"]


def test_the_installed_console_command_samples_every_shipped_model_by_name(installed):
    """`fewstep-sample` of the wheel, run from elsewhere: one Hydra multirun (`-m`, one process) for the
    default model and the flows; each job writes into a run directory named like its model, so the name
    still means the shipped one. The default model's Skip-Tuning factors and the one-step generators come
    from the wheel too (the probe above)."""
    from fewstep.assets import names

    models = ["digits_ddpm", *(m for m in ("digits_rf1", "digits_rf2", "digits_rf_1step") if m in names())]
    assert {"digits_rf1", "digits_rf2"} <= set(models)
    target, elsewhere, _ = installed
    done = python(installed, str(target / "bin" / "fewstep-sample"), "-m", f"model={','.join(models)}", "sampler=euler",
                  "nfe=1", "num_samples=2", "out_dir=${hydra:runtime.choices.model}", f"hydra.sweep.dir={elsewhere}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("NFE used per sample: 1") == len(models), done.stdout
    for model in models:
        out = elsewhere / model
        assert f"wrote {model}/samples.png" in done.stdout or f"wrote {out / 'samples.png'}" in done.stdout, done.stdout
        assert (out / "samples.png").stat().st_size > 100
