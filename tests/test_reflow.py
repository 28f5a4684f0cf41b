"""Rectified-flow rounds (ReFlow) and one-step distillation: straightness, reflow pairs, their data
set, starting a round from the previous one, the distillation objective, the 2-D data and MLP."""
import json
import math
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_unet
from fewstep import samplers
from fewstep.flows import (DistillationObjective, MLPVelocity, PairsDataset, RectifiedFlowObjective,
                           straightness, write_pairs)
from fewstep.flows.distill import pseudo_huber
from fewstep.flows.straightness import record_straightness
from fewstep.training import Trainer, data2d
from fewstep.training.init import init_from

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMAS = samplers.get_sigmas("karras", 4, 0.002, 80.0)


# -- straightness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_flow_to_one_point_is_straight(dtype):
    """The exact flow between noise and a single point c, `v = (x_t - c) / t`, moves on straight lines."""
    c = torch.tensor([[0.3, -1.2, 2.0]], dtype=dtype)
    noise = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    calls = []

    def velocity(x, s):  # s = t * 1000
        calls.append(s)
        return (x - c) / (s[:, None] / 1000)

    assert straightness(velocity, noise, steps=40, time_scale=1000.0) < 1e-10
    assert straightness(velocity, noise, time_scale=1000.0) < 1e-10 and len(calls) == 40 + 100  # 100 by default
    del calls[40:]
    assert len(calls) == 40 and torch.allclose(calls[0], torch.full((7,), 1000.0, dtype=dtype))
    assert torch.allclose(calls[-1], torch.full((7,), 1000.0 / 40, dtype=dtype))


class Curved(torch.nn.Module):
    """The flow `v = w t x` (w = 1), a module with a parameter, as `record_straightness` expects."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, s):
        return self.w * s[:, None] * x


def test_the_recorded_straightness_is_that_of_256_seeded_noises_in_50_steps(tmp_path):
    value = record_straightness(Curved(), (2,), tmp_path)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    assert value == straightness(Curved(), noise, steps=50, time_scale=1.0) > 0.01
    assert json.loads((tmp_path / "straightness.json").read_text()) == {
        "straightness": value, "noises": 256, "steps": 50, "seed": 0}
    value = record_straightness(Curved(), (2,), tmp_path, time_scale=1000.0, n=8, steps=5, seed=3)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    assert value == straightness(Curved(), noise, steps=5, time_scale=1000.0)
    assert json.loads((tmp_path / "straightness.json").read_text()) == {
        "straightness": value, "noises": 8, "steps": 5, "seed": 3}


def test_a_flow_is_exported_with_its_time_scale_and_straightness(tmp_path, caplog):
    torch.manual_seed(0)
    net = MLPVelocity(hidden=8, depth=1)
    with caplog.at_level("INFO", logger="fewstep.flows.rectified_flow"):
        RectifiedFlowObjective(time_scale=500.0).export({"net": net}, tmp_path)
    config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert (config["_class_name"], config["num_train_timesteps"]) == ("FlowMatchEulerDiscreteScheduler", 500)
    value = straightness(net, torch.randn(256, 2, generator=torch.Generator().manual_seed(0)), steps=50,
                         time_scale=500.0)
    assert json.loads((tmp_path / "straightness.json").read_text())["straightness"] == value
    assert caplog.messages[-1] == (
        f"straightness {value:.6f} (256 noises, 50 Euler steps): {tmp_path / 'straightness.json'}")


def test_a_constant_velocity_is_exactly_straight_even_in_one_step():
    """The velocities are accumulated relative to the first, so a straight path sums zeros: exactly 0."""
    d = torch.tensor([0.1234567, -2.7182818])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    assert straightness(lambda x, s: d.expand_as(x), noise, steps=37) == 0.0
    assert straightness(lambda x, s: x, noise, steps=1) == 0.0  # one velocity: nothing varies


def test_a_curved_flow_has_the_straightness_of_its_closed_form():
    """`v = t x`: Euler's `x_{i+1} = x_i (1 - h t_i)`, so `x_i = P_i noise`, `v_i = t_i P_i noise`,
    `noise - x0 = (1 - P_N) noise` and `S = mean(noise^2) mean_i (1 - P_N - t_i P_i)^2`."""
    noise = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    n, h = 25, 1 / 25
    t = [1 - i * h for i in range(n)]
    p = [1.0]
    for ti in t:
        p.append(p[-1] * (1 - h * ti))
    expected = float(noise.pow(2).mean()) * sum((1 - p[n] - ti * pi) ** 2 for ti, pi in zip(t, p)) / n
    got = straightness(lambda x, s: s[:, None] * x, noise, steps=n)
    assert got > 0.01 and math.isclose(got, expected, rel_tol=1e-9)
    with pytest.raises(ValueError, match="steps must be a whole number of at least 1, got 0"):
        straightness(lambda x, s: x, noise, steps=0)


# -- reflow pairs ---------------------------------------------------------------------------------

class Counting:
    """A denoiser that counts the samples it is asked about, with the weights of the one it wraps."""

    def __init__(self, denoiser):
        self.denoiser, self.seen = denoiser, 0
        self.sigma_min, self.sigma_max = denoiser.sigma_min, denoiser.sigma_max
        self.sample_shape, self.state_dict = denoiser.sample_shape, denoiser.state_dict

    def __call__(self, x, sigma):
        self.seen += len(x)
        return self.denoiser(x, sigma)


class FakeAccelerator:
    """Process `index` of `count`, run one after the other in one test process."""

    def __init__(self, index, count):
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0

    def wait_for_everyone(self):
        pass


def pairs_of(root):
    data = PairsDataset(root)
    return torch.stack([s for s, _ in data]), torch.stack([n for _, n in data])


def test_pairs_refuse_the_analytical_first_step_whose_noise_they_could_not_record(tmp_path, gmm):
    with pytest.raises(ValueError, match="heun with afs=True makes none there"):
        write_pairs(gmm, "heun", SIGMAS, (2,), range(4), tmp_path, 4, options={"afs": True})
    assert not any(tmp_path.iterdir())


def test_a_pair_is_the_seeds_noise_and_the_samplers_output(tmp_path, gmm):
    seeds = range(100, 111)
    write_pairs(gmm, "heun", SIGMAS, (2,), seeds, tmp_path, shard_size=4, metadata={"model": "gmm"}, batch_size=3)
    shards = [f"shard_0000{k}.safetensors" for k in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.json", *shards]
    sample, noise = pairs_of(tmp_path)
    for i, seed in enumerate(seeds):
        expected_noise = torch.randn(1, 2, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(noise[i], expected_noise[0])
        assert torch.equal(sample[i], samplers.sample("heun", gmm, expected_noise, SIGMAS)[0])
    assert sample.dtype == noise.dtype == torch.float32
    seeds_kept = load_file(str(tmp_path / shards[2]))["seeds"]
    assert seeds_kept.dtype == torch.int64 and seeds_kept.tolist() == [108, 109, 110]
    index = json.loads((tmp_path / "pairs.json").read_text())
    assert index == {"fingerprint": samplers.fingerprint(gmm), "model": "gmm", "sampler": "heun",
                     "options": {"afs": False}, "sigmas": SIGMAS.tolist(),
                     "shape": [2], "seed_start": 100, "num_pairs": 11, "shard_size": 4}


def test_the_pairs_depend_neither_on_shards_batches_nor_processes(tmp_path, gmm):
    seeds = range(7, 30)
    write_pairs(gmm, "dpmpp_2m", SIGMAS, (2,), seeds, tmp_path / "a", shard_size=5, batch_size=5)
    write_pairs(gmm, "dpmpp_2m", SIGMAS, (2,), seeds, tmp_path / "b", shard_size=8, batch_size=3)
    first = write_pairs(gmm, "dpmpp_2m", SIGMAS, (2,), seeds, tmp_path / "c", shard_size=5, batch_size=2,
                        accelerator=FakeAccelerator(0, 2))
    assert sorted(p.name for p in first.glob("shard_*")) == [f"shard_0000{k}.safetensors" for k in (0, 2, 4)]
    write_pairs(gmm, "dpmpp_2m", SIGMAS, (2,), seeds, tmp_path / "c", shard_size=5, batch_size=2,
                accelerator=FakeAccelerator(1, 2))
    a, b, c = (pairs_of(tmp_path / name) for name in "abc")
    assert len(a[0]) == 23 and len(set(a[1][:, 0].tolist())) == 23
    for other in (b, c):
        assert torch.equal(a[0], other[0]) and torch.equal(a[1], other[1])


def test_a_killed_run_resumes_making_only_the_missing_shard(tmp_path, gmm):
    write_pairs(gmm, "euler", SIGMAS, (2,), range(20), tmp_path, shard_size=6)
    before = pairs_of(tmp_path)
    (tmp_path / "shard_00002.safetensors").unlink()
    (tmp_path / "shard_00002.safetensors.tmp").write_bytes(b"half a shard")  # the save the kill interrupted
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard_*.safetensors")}
    counting = Counting(gmm)
    write_pairs(counting, "euler", SIGMAS, (2,), range(20), tmp_path, shard_size=6)
    assert counting.seen == 6 * 4  # the 6 seeds of shard 2, one call per step
    assert not list(tmp_path.glob("*.tmp"))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard_*.safetensors") if p.name in stamps} == stamps
    after = pairs_of(tmp_path)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_a_resumed_run_shows_its_progress_in_pairs_and_logs_each_shard_and_what_it_made(tmp_path, gmm, monkeypatch,
                                                                                        caplog):
    from fewstep.flows import pairs

    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.updates = kwargs, kwargs.get("initial", 0), []
            bars.append(self)

        def update(self, n):
            self.n += n
            self.updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(pairs, "tqdm", Bar)
    out = tmp_path / "a" / "b"  # folders made
    write_pairs(gmm, "euler", SIGMAS, (2,), range(5), out, shard_size=2, batch_size=1)
    (out / "shard_00001.safetensors").unlink()
    with caplog.at_level("INFO", logger=pairs.log.name):
        write_pairs(gmm, "euler", SIGMAS, (2,), range(5), out, shard_size=2)
    assert [bar.kwargs for bar in bars] == [dict(total=5, initial=0, desc="pairs", unit="pair", disable=False),
                                            dict(total=5, initial=3, desc="pairs", unit="pair", disable=False)]
    assert [bar.n for bar in bars] == [5, 5] and [bar.updates for bar in bars] == [[1] * 5, [2]]  # every batch
    assert caplog.messages == [f"{out / 'shard_00001.safetensors'}: the pairs of seeds 2..3", f"5 pairs in 3 shards in {out}"]
    text = (out / "pairs.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"  # for a person to read


@pytest.mark.parametrize("change, message", [
    (dict(metadata={"model": "other"}), "has model='gmm', this run model='other'"),
    (dict(seeds=range(0, 12)), "has num_pairs=10, this run num_pairs=12"),
    (dict(shard_size=5), "has shard_size=4, this run shard_size=5"),
    (dict(options={"max_order": 2}),
     "has options={'max_order': 4, 'afs': False}, this run options={'max_order': 2, 'afs': False}"),
    (dict(sigmas=SIGMAS[-3:]), "has sigmas=[80.0, "),
])
def test_another_setting_in_the_same_directory_is_refused_and_nothing_is_written(tmp_path, gmm, change, message):
    settings = dict(denoiser=gmm, sampler="ipndm", sigmas=SIGMAS, shape=(2,), seeds=range(10), out_dir=tmp_path,
                    shard_size=4, metadata={"model": "gmm"})
    write_pairs(**settings)
    (tmp_path / "shard_00001.safetensors").unlink()
    index = (tmp_path / "pairs.json").read_text()
    with pytest.raises(ValueError) as error:
        write_pairs(**{**settings, **change})
    assert message in str(error.value) and str(error.value).startswith(str(tmp_path / "pairs.json"))
    assert "\n" not in str(error.value)
    assert (tmp_path / "pairs.json").read_text() == index and not (tmp_path / "shard_00001.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    (dict(seeds=[1, 2, 4]), "seeds must be consecutive integers, got 4 after 2 at position 2"),
    (dict(seeds=[]), "^seeds is empty: give at least one seed$"),
    (dict(shard_size=0), "^shard_size must be a whole number of at least 1, got 0$"),
    (dict(batch_size=0), "^batch_size must be a whole number of at least 1, got 0$"),
    (dict(sampler="amed", options={"predictor": "dir"}),
     r"^reflow pairs record their sampler's options; an AMED predictor is not one they can record: give amed its "
     r"frozen table \(r, c lists\) instead$"),
    (dict(metadata={"sigmas": 1}), "metadata key 'sigmas' is one write_pairs sets itself; use another name"),
    (dict(sampler="rk4"), "unknown sampler 'rk4'"),
])
def test_bad_arguments_are_one_line(tmp_path, gmm, change, message):
    settings = dict(denoiser=gmm, sampler="euler", sigmas=SIGMAS, shape=(2,), seeds=range(3), out_dir=tmp_path,
                    shard_size=2)
    with pytest.raises(ValueError, match=message):
        write_pairs(**{**settings, **change})
    assert not tmp_path.joinpath("pairs.json").exists()


def test_pairs_are_made_with_the_samplers_options_one_at_a_time_if_asked(tmp_path, gmm):
    """iPNDM of order 1 is Euler; shards and batches of one pair."""
    write_pairs(gmm, "euler", SIGMAS, (2,), range(3), tmp_path / "euler", shard_size=2)
    write_pairs(gmm, "ipndm", SIGMAS, (2,), range(3), tmp_path / "ipndm", shard_size=1, batch_size=1,
                options={"max_order": 1})
    (euler_samples, euler_noise), (samples, noise) = pairs_of(tmp_path / "euler"), pairs_of(tmp_path / "ipndm")
    assert torch.allclose(samples, euler_samples, rtol=1e-6, atol=1e-6) and torch.equal(noise, euler_noise)
    assert len(list((tmp_path / "ipndm").glob("shard_*.safetensors"))) == 3


def damage(root, how):
    shard = root / "shard_00001.safetensors"
    if how == "missing":
        shard.unlink()
    elif how == "empty":
        shard.write_bytes(b"")
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-12])
    elif how == "shape":
        from safetensors.torch import save_file
        save_file({"noise": torch.zeros(4, 3), "sample": torch.zeros(4, 3), "seeds": torch.arange(4, 8)}, str(shard))
    elif how == "seeds":
        from safetensors.torch import save_file
        tensors = load_file(str(shard))
        save_file({**tensors, "seeds": tensors["seeds"] + 1}, str(shard))
    elif how == "tensors":
        from safetensors.torch import save_file
        save_file({"noise": torch.zeros(4, 2), "x0": torch.zeros(4, 2)}, str(shard))
    elif how == "index":
        (root / "pairs.json").unlink()


@pytest.mark.parametrize("how, error, message", [
    ("missing", FileNotFoundError, "shard {root}/shard_00001.safetensors is missing"),
    ("empty", ValueError, "shard {root}/shard_00001.safetensors cannot be read (Error while deserializing header"),
    ("truncated", ValueError, "shard {root}/shard_00001.safetensors cannot be read (Error while deserializing header"),
    ("shape", ValueError, "shard {root}/shard_00001.safetensors has noise of shape (4, 3), pairs.json says (4, 2)"),
    ("seeds", ValueError, "shard {root}/shard_00001.safetensors holds seeds 5..8, pairs.json says 4..7"),
    ("tensors", ValueError, "shard {root}/shard_00001.safetensors holds tensors ['noise', 'x0'], not "
                            "['noise', 'sample', 'seeds']"),
    ("index", FileNotFoundError, "no pairs.json in {root}: not a pair set written by write_pairs"),
])
def test_a_damaged_pair_set_is_named(tmp_path, gmm, how, error, message):
    write_pairs(gmm, "euler", SIGMAS, (2,), range(10), tmp_path, shard_size=4)
    damage(tmp_path, how)
    with pytest.raises(error) as raised:
        PairsDataset(tmp_path)
    assert str(raised.value).startswith(message.format(root=tmp_path)) and "\n" not in str(raised.value)


def test_a_pair_set_travels_to_a_worker_process_without_its_open_files(tmp_path, gmm):
    write_pairs(gmm, "euler", SIGMAS, (2,), range(10), tmp_path, shard_size=4)
    data = PairsDataset(tmp_path)
    first = data[0]  # opens a shard
    copy = pickle.loads(pickle.dumps(data))
    assert all(torch.equal(a, b) for a, b in zip(copy[0], first)) and torch.equal(copy[9][1], data[9][1])


def test_a_pair_set_written_with_a_setting_this_run_lacks_is_not_added_to(tmp_path, gmm):
    write_pairs(gmm, "euler", SIGMAS, (2,), range(4), tmp_path, shard_size=4, metadata={"teacher": "big"})
    with pytest.raises(ValueError) as error:
        write_pairs(gmm, "euler", SIGMAS, (2,), range(4), tmp_path, shard_size=4)
    assert str(error.value) == (f"{tmp_path / 'pairs.json'} has teacher='big', this run teacher=None: "
                                "use another out_dir or the same settings")


def other_gmm():
    return samplers.GMMDenoiser(means=[[-2.0, 0.0], [2.0, 1.5], [0.0, -3.0]], stds=[0.3, 0.5, 0.2],
                                weights=[0.3, 0.5, 0.2])


def files_of(root):
    return {p.name: p.read_bytes() for p in root.iterdir()}


def test_a_stopped_set_is_not_finished_by_other_weights_and_the_refusal_names_both(tmp_path, gmm):
    """Shard 0 of 3 made, then another model (the same name, other weights): refused, nothing written."""
    write_pairs(gmm, "euler", SIGMAS, (2,), range(12), tmp_path, shard_size=4, metadata={"model": "gmm"})
    for k in (1, 2):
        (tmp_path / f"shard_0000{k}.safetensors").unlink()
    before, other = files_of(tmp_path), other_gmm()
    with pytest.raises(ValueError) as error:
        write_pairs(other, "euler", SIGMAS, (2,), range(12), tmp_path, shard_size=4, metadata={"model": "gmm"})
    assert str(error.value) == (f"{tmp_path / 'pairs.json'} holds pairs of a model with weights "
                                f"{samplers.fingerprint(gmm)}; this model's weights are {samplers.fingerprint(other)}: "
                                f"use another out_dir or the same model")
    assert samplers.fingerprint(gmm) != samplers.fingerprint(other) and files_of(tmp_path) == before
    (tmp_path / "pairs.json").write_text("{")
    with pytest.raises(ValueError, match=r"pairs.json is no pair index: Expecting property name"):
        write_pairs(gmm, "euler", SIGMAS, (2,), range(12), tmp_path, shard_size=4)
    (tmp_path / "pairs.json").write_text("[]")
    with pytest.raises(ValueError, match=r"pairs.json is no pair index: it holds a list, not an object$"):
        PairsDataset(tmp_path)


def test_a_denoiser_without_weights_has_no_fingerprint_to_record(tmp_path):
    def denoiser(x, sigma):
        return x * 0
    denoiser.sigma_min, denoiser.sigma_max, denoiser.sample_shape = 0.002, 80.0, (2,)
    with pytest.raises(TypeError, match="^a weight fingerprint needs a torch module or a model loaded from a "
                                        "directory, got function$"):
        write_pairs(denoiser, "euler", SIGMAS, (2,), range(3), tmp_path, shard_size=2)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_shards_have_the_mode_of_any_new_file(tmp_path, gmm, umask):
    old = os.umask(umask)
    try:
        write_pairs(gmm, "euler", SIGMAS, (2,), range(3), tmp_path, shard_size=2)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask} and len(modes) == 3


def test_a_training_run_on_pairs_is_not_resumed_on_pairs_of_other_weights(tmp_path, gmm):
    """run.json records what made the pairs; two sets of one size and shape, of other weights, differ there."""
    for name, model in (("a", gmm), ("b", other_gmm())):
        write_pairs(model, "euler", SIGMAS, (2,), range(32), tmp_path / name, shard_size=16)

    def trainer(pairs):
        torch.manual_seed(0)
        return Trainer(MLPVelocity(hidden=8, depth=1), RectifiedFlowObjective(), PairsDataset(tmp_path / pairs),
                       out_dir=tmp_path / "run", steps=2, batch_size=16, lr=1e-3, checkpoint_every=1, cpu=True)

    trainer("a").fit()
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["data_settings"] == json.loads((tmp_path / "a" / "pairs.json").read_text())
    assert recorded["data_shape"] == [[2], [2]] and recorded["data_size"] == 32
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as error:
        trainer("b").fit()
    assert str(error.value) == (f"{tmp_path / 'run'} holds a run made with data_settings.fingerprint="
                                f"{samplers.fingerprint(gmm)}; this run has data_settings.fingerprint="
                                f"{samplers.fingerprint(other_gmm())}: use another out_dir or the same settings")
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_the_data_set_checks_what_it_is_told_to_expect(tmp_path, gmm):
    write_pairs(gmm, "euler", SIGMAS, (2,), range(10), tmp_path, shard_size=4, metadata={"model": {"path": "a"}})
    assert len(PairsDataset(tmp_path, expect={"sampler": "euler", "shape": (2,), "model": {"path": "a"}})) == 10
    with pytest.raises(ValueError, match=r"pairs.json has sampler='euler', expected sampler='heun'$"):
        PairsDataset(tmp_path, expect={"sampler": "heun"})
    with pytest.raises(ValueError, match=r"pairs.json has teacher=None, expected teacher='big'$"):
        PairsDataset(tmp_path, expect={"teacher": "big"})
    data = PairsDataset(tmp_path)
    assert torch.equal(data[-1][0], data[9][0]) and torch.equal(data[-10][0], data[0][0])
    for i in (10, -11):
        with pytest.raises(IndexError) as error:
            data[i]
        assert str(error.value) == f"pair {i} of a set of 10"


# -- starting a round from the previous one --------------------------------------------------------

def test_a_fresh_run_starts_from_the_exported_weights_and_a_resume_does_not(tmp_path):
    torch.manual_seed(0)
    trained = MLPVelocity(hidden=16, depth=2)
    RectifiedFlowObjective().export({"net": trained}, tmp_path / "model")
    for path in (tmp_path / "model", tmp_path / "model" / "unet"):
        net = MLPVelocity(hidden=16, depth=2)
        assert init_from(net, path, tmp_path / "run")
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), trained.parameters()))
    (tmp_path / "run" / "checkpoints" / "step_00000010").mkdir(parents=True)
    net = MLPVelocity(hidden=16, depth=2)
    untouched = [p.clone() for p in net.parameters()]
    assert not init_from({"net": net}, tmp_path / "model", tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), untouched))
    assert not init_from(net, None, tmp_path / "other")


@pytest.mark.parametrize("net, path, error, message", [
    (dict(hidden=32, depth=2), "model", ValueError,
     "the weights in {tmp}/model/unet/diffusion_pytorch_model.safetensors do not fit the network: layers.0.weight "
     "has shape (16, 2) there, (32, 2) here"),
    (dict(hidden=16, depth=3), "model", ValueError, "do not fit the network: they have no layers.2.weight"),
    (dict(hidden=16, depth=1), "model", ValueError, "do not fit the network: it has no layers.1.bias"),
    (dict(hidden=16, depth=2), "nowhere", FileNotFoundError, "init_from path does not exist: {tmp}/nowhere"),
    (dict(hidden=16, depth=2), "empty", FileNotFoundError,
     "no diffusion_pytorch_model.safetensors in {tmp}/empty/unet or {tmp}/empty"),
])
def test_weights_that_do_not_fit_are_one_line(tmp_path, net, path, error, message):
    RectifiedFlowObjective().export({"net": MLPVelocity(hidden=16, depth=2)}, tmp_path / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(error) as raised:
        init_from(MLPVelocity(**net), tmp_path / path, tmp_path / "run")
    assert message.format(tmp=tmp_path) in str(raised.value) and "\n" not in str(raised.value)


def test_init_from_takes_one_network(tmp_path):
    with pytest.raises(ValueError, match=r"init_from loads one network; this run trains 2 \(critic, generator\)"):
        init_from({"generator": MLPVelocity(), "critic": MLPVelocity()}, tmp_path, tmp_path / "run")


# -- one-step distillation --------------------------------------------------------------------------

def test_the_distillation_losses_are_those_of_the_one_step_prediction():
    calls = []

    def model(x, s):
        calls.append(s)
        return 0.5 * x + 0.1

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    d = (noise - (0.5 * noise + 0.1)) - x0
    l2 = DistillationObjective(time_scale=1000.0).losses({"net": model}, (x0, noise), 0, [])["net"]
    assert torch.equal(calls[0], torch.full((3,), 1000.0)) and torch.allclose(l2, (d ** 2).mean())
    huber = DistillationObjective("pseudo_huber").losses({"net": model}, [x0, noise], 0, [])["net"]
    c = 0.00054 * math.sqrt(32)
    by_hand = sum(math.sqrt(float((di ** 2).sum()) + c * c) - c for di in d) / 3
    assert math.isclose(float(huber), by_hand, rel_tol=1e-5)
    assert float(pseudo_huber(torch.zeros(2, 5))[0]) == 0.0
    with pytest.raises(ValueError, match=r"trains on \(sample, noise\) pairs \(data=pairs\), got a Tensor"):
        DistillationObjective().losses({"net": model}, x0, 0, [])
    with pytest.raises(ValueError, match=r"trains on \(sample, noise\) pairs \(data=pairs\), got a tuple"):
        DistillationObjective().losses({"net": model}, (x0, noise, x0), 0, [])
    DistillationObjective(time_scale=1000.0).one_step(model, noise.double())
    assert calls[-1].dtype == torch.float64  # t in the noise's dtype
    with pytest.raises(ValueError, match="unknown loss 'l1': use l2 or pseudo_huber"):
        DistillationObjective("l1")


def test_the_distilled_model_is_exported_with_its_time_scale(tmp_path):
    DistillationObjective(time_scale=500.0).export({"net": tiny_unet()}, tmp_path)
    config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert (config["_class_name"], config["num_train_timesteps"]) == ("FlowMatchEulerDiscreteScheduler", 500)


def test_one_euler_step_from_a_huge_sigma_is_the_students_one_step_prediction():
    """FlowDenoiser: `sigma = t / (1 - t)`; from `[S, 0]` one Euler step gives `D = x_t - t v(x_t, t)` with
    `x_t = t noise`, `t = S / (1 + S)`: S = 1e8 makes it `noise - v(noise, 1)` to float32 precision, while
    the model's own sigma_max 999 (t = 0.999) does not."""
    torch.manual_seed(0)
    net = MLPVelocity(hidden=32, depth=2).eval()
    noise = torch.randn(64, 2)
    with torch.no_grad():
        target = DistillationObjective(time_scale=1000.0).one_step(net, noise)
    denoiser = samplers.FlowDenoiser(net, time_scale=1000.0, sample_shape=(2,))
    calls = []
    sigmas = samplers.get_sigmas("karras", 1, 0.002, 1e8)
    assert len(sigmas) == 2 and math.isclose(sigmas[0], 1e8) and sigmas[1] == 0  # steps=1 schedule.sigma_max=1e8
    one = samplers.sample("euler", denoiser, noise, sigmas, callback=calls.append)
    assert len(calls) == 1 and (one - target).abs().max() < 1e-5
    coarse = samplers.sample("euler", denoiser, noise, [999.0, 0.0])
    assert (coarse - target).abs().max() > 1e-3


def test_distillation_trains_a_one_step_student_on_pairs(tmp_path, gmm):
    write_pairs(gmm, "heun", SIGMAS, (2,), range(512), tmp_path / "pairs", shard_size=256, batch_size=256)
    torch.manual_seed(0)
    trainer = Trainer(MLPVelocity(hidden=64, depth=2), DistillationObjective(), PairsDataset(tmp_path / "pairs"),
                      out_dir=tmp_path / "run", steps=200, batch_size=128, lr=1e-2, log_every=50, ema_decay=None,
                      grad_clip=None, checkpoint_every=200, cpu=True).fit()
    losses = [float(line.split(",")[1]) for line in (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.1 * losses[0], losses
    student = samplers.from_pretrained(tmp_path / "run" / "model")
    assert student.time_scale == 1000.0 and student.sample_shape == (2,)
    sample, noise = pairs_of(tmp_path / "pairs")
    one = samplers.sample("euler", student, noise, [1e8, 0.0])
    assert torch.allclose(one, DistillationObjective().one_step(trainer.nets["net"].eval(), noise).detach(), atol=1e-4)


# -- 2-D data and the MLP ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", [data2d.moons, data2d.checkerboard, data2d.gaussians8])
def test_2d_data_is_seeded_centred_and_of_unit_variance(make):
    x = make(4000, seed=3)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert torch.equal(x, make(4000, seed=3)) and not torch.equal(x, make(4000, seed=4))
    assert x.mean(0).abs().max() < 1e-5 and abs(float(x.pow(2).mean()) - 1) < 1e-4
    with pytest.raises(ValueError, match="n must be a whole number of at least 2, got 1"):
        make(1)


def test_2d_data_has_its_shape():
    board = data2d.checkerboard(4000, seed=0)
    low, width = board.min(0).values, (board.max(0).values - board.min(0).values) / 4
    u = (board - low) / width  # cell coordinates, up to the sampling error of the min and max
    clear = ((u - u.round()).abs() > 0.01).all(1)
    cell = u[clear].floor()
    assert clear.float().mean() > 0.9 and ((cell.sum(1) % 2) == 0).all() and len(set(map(tuple, cell.tolist()))) == 8
    ring = data2d.gaussians8(4000, seed=0)
    angle = torch.atan2(ring[:, 1], ring[:, 0]) / (2 * math.pi / 8)
    off = (angle - angle.round()).abs()  # in eighths of a turn: 0.06 a standard deviation; a ring: 0.25 on average
    assert off.max() < 0.35 and off.mean() < 0.1 and len(set(angle.round().remainder(8).tolist())) == 8
    moons = data2d.moons(4000, seed=0, noise=0.0)
    centres = []
    for arc in (moons[:2000], moons[2000:]):  # half circles: the ends of each are a diameter
        centre = (arc[arc[:, 0].argmin()] + arc[arc[:, 0].argmax()]) / 2
        radius = (arc - centre).norm(dim=1)
        assert radius.std() < 0.01 * radius.mean()
        centres.append(centre)
    shift = centres[1] - centres[0]  # (1, 1/2) before scaling
    assert abs(float(shift[1] / shift[0]) - 0.5) < 0.01


def test_the_mlp_takes_a_batch_of_times_and_exports_like_a_unet(tmp_path):
    torch.manual_seed(0)
    net = MLPVelocity(dim=3, hidden=8, depth=2)
    x, t = torch.randn(5, 3), torch.rand(5) * 1000
    out = net(x, t)
    assert out.shape == (5, 3)
    assert torch.allclose(net(x[:2], t[:2]), out[:2]) and not torch.allclose(net(x, t.flip(0)), out)
    assert torch.allclose(net(x, torch.tensor(250.0)), net(x, torch.full((5,), 250.0)))
    RectifiedFlowObjective().export({"net": net}, tmp_path)
    assert sorted(os.listdir(tmp_path / "unet")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = samplers.from_pretrained(tmp_path)  # the MLP is one of samplers.denoisers.MODEL_CLASSES
    assert torch.allclose(loaded.velocity_model(x, t), out) and loaded.sample_shape == (3,)
    assert loaded.sigma_max == 999.0 and samplers.from_pretrained(tmp_path, sigma_max=1e8).sigma_max == 1e8
    with pytest.raises(ValueError, match="sigma_max=100.0 is for flow-matching models; .* has a VP noise table"):
        samplers.from_pretrained("digits_ddpm", sigma_max=100.0)
    with pytest.raises(ValueError, match="need dim >= 1, an even hidden >= 2 and depth >= 1, got dim=2, hidden=7"):
        MLPVelocity(hidden=7)


@pytest.mark.parametrize("data", ["moons", "checkerboard", "gaussians8"])
def test_the_configs_build_the_objective_the_net_and_the_data(data):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fewstep.cli import schemas; schemas.register()
    from fewstep.cli.common import config_dir
    from fewstep.cli import schemas; schemas.register()

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["objective=distill", "objective.loss=pseudo_huber", "net=mlp2d",
                                          f"data={data}", "init_from=somewhere", "out_dir=x"])
        pairs = compose("reflow_pairs", overrides=["model=gmm", "num_pairs=5"])
    objective, net, points = instantiate(cfg.objective), instantiate(cfg.net), instantiate(cfg.data)
    assert isinstance(objective, DistillationObjective) and objective.loss == "pseudo_huber"
    assert objective.time_scale == 1000.0 and cfg.init_from == "somewhere"
    assert isinstance(net, MLPVelocity) and net.config.hidden == 128 and points.shape == (10000, 2)
    assert pairs.sampler.name == "dpmpp_2m" and pairs.seed == 1000000 and pairs.shard_size == 1000
