"""Fixtures every test module may take. The helpers they share are in helpers.py (test modules import
from there, never from each other)."""
import pytest
import torch

from helpers import NoiseLikeUNet, mixture_problem, tiny_unet


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and two threads spin badly when another job holds the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unet():
    return tiny_unet()


@pytest.fixture
def gmm():
    from fewstep import samplers
    return samplers.GMMDenoiser(means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], stds=[0.3, 0.5, 0.2],
                                weights=[0.3, 0.5, 0.2])


@pytest.fixture(scope="module")
def noise_like_unet():
    """helpers.NoiseLikeUNet with the tiny UNet's config, seeded (test_schedulers, test_amed)."""
    torch.manual_seed(0)
    return NoiseLikeUNet.from_config(tiny_unet().config).eval()


@pytest.fixture(scope="session")
def problem():
    """The mixture, 256 noises and their exact ODE solution (helpers.mixture_problem): computed once
    per worker, for test_solvers and test_amed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return mixture_problem()
    finally:
        torch.set_num_threads(threads)


# The files that start other Python processes or train (the longest first), run first: `--dist loadfile`
# hands whole files to the two workers in collection order (pytest_configure), so the long ones starting
# first keep one worker from ending the run alone on one of them. The SIGKILL resume of a reflow round and
# its pairs are two files, so that the two workers share them.
LONGEST_FIRST = ["test_reflow_multiprocess_resume.py", "test_install.py", "test_engine_processes.py",
                 "test_reflow_multiprocess.py", "test_evaluation.py", "test_cli.py", "test_training.py",
                 "test_skip_tuning.py", "test_schedule_search.py", "test_gan_objective.py", "test_reflow_cli.py",
                 "test_amed_predictor.py", "test_cli_end_to_end.py", "test_suites.py", "test_scheduler_conventions.py",
                 "test_amed_shipped.py", "test_amed.py", "test_schedulers.py", "test_reflow.py"]


def pytest_configure(config):
    """Keep the collection order under `--dist loadfile`: xdist would otherwise hand out the files with the
    most tests first (`--loadscope-reorder`, its default), which put the longest (one to four tests each) last."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept
