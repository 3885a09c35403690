import pytest
import torch

from diffusion_notes.toy.model import NULL_LABEL, DigitsUNet, UNetConfig, timestep_embedding


def test_timestep_embedding_shape_and_values():
    emb = timestep_embedding(torch.tensor([0, 999]), 16)
    assert emb.shape == (2, 16)
    # t = 0: every cosine is 1, every sine 0.
    assert torch.allclose(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert not torch.allclose(emb[0], emb[1])


def test_output_shape_size_and_zero_init():
    torch.manual_seed(0)
    model = DigitsUNet()
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n_params <= 1_000_000
    x = torch.randn(4, 1, 8, 8)
    out = model(x, torch.tensor([0, 10, 500, 999]), torch.tensor([0, 3, 9, NULL_LABEL]))
    assert out.shape == x.shape
    # The output convolution starts at zero: the untrained model predicts eps = 0.
    assert torch.count_nonzero(out) == 0


def test_label_and_timestep_change_the_prediction():
    torch.manual_seed(0)
    model = DigitsUNet()
    for p in model.parameters():  # leave the zero initialisation so the output depends on its inputs
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 8, 8)
    x = torch.cat([x[:1], x[:1]])
    by_label = model(x, torch.tensor([100, 100]), torch.tensor([3, NULL_LABEL]))
    by_time = model(x, torch.tensor([100, 900]), torch.tensor([3, 3]))
    assert not torch.allclose(by_label[0], by_label[1])
    assert not torch.allclose(by_time[0], by_time[1])


def test_config_round_trip():
    config = UNetConfig(base_channels=16, channel_mult=(1, 2))
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_label_out_of_range_fails():
    with pytest.raises(IndexError):
        DigitsUNet()(torch.zeros(1, 1, 8, 8), torch.tensor([0]), torch.tensor([NULL_LABEL + 1]))


def test_the_toy_tests_run_on_one_torch_thread():
    # Guards tests/conftest.py's ONE_THREAD_FOLDERS hook, which replaced this folder's own conftest: if a
    # move or rename of the folder silently dropped it, these tests would run several times slower on
    # CI's 2 shared cores (123 ms vs ~900 ms per training step measured), and nothing else would notice.
    assert torch.get_num_threads() == 1
