import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def accelerate_launch(processes: int) -> list[str]:
    """`accelerate launch` for CPU processes over gloo, on a free port (so runs never collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def tiny_unet(**overrides):
    """A random 8x8 UNet2DModel small enough to run in milliseconds."""
    from diffusers import UNet2DModel

    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                  norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DModel(**config).eval()


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
