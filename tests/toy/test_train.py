import torch
from torch import nn

from diffusion_notes.losses import p_losses
from diffusion_notes.schedules import NoiseSchedule
from diffusion_notes.toy import train as train_module
from diffusion_notes.toy.digits import load_split
from diffusion_notes.toy.model import NULL_LABEL, DigitsUNet, UNetConfig
from diffusion_notes.toy.pretrained import load_checkpoint, read_metadata
from diffusion_notes.toy.train import TrainConfig, main, train, training_step, update_ema

SMALL = UNetConfig(base_channels=16, channel_mult=(1, 2))  # the test's model: the same code, fewer channels


def test_training_decreases_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    schedule = NoiseSchedule.from_name("linear", 1000)
    images, labels = load_split("train")
    x0, c = images[:64], labels[:64]
    g = torch.Generator().manual_seed(0)
    t_eval = torch.randint(0, 1000, (64,), generator=g)
    noise_eval = torch.randn(x0.shape, generator=g)

    model = DigitsUNet(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with torch.no_grad():
        before = p_losses(model, x0, t_eval, schedule, noise=noise_eval, c=c).item()
    for _ in range(40):
        training_step(model, optimizer, x0, c, schedule, p_uncond=0.1, generator=g)
    with torch.no_grad():
        after = p_losses(model, x0, t_eval, schedule, noise=noise_eval, c=c).item()
    assert abs(before - noise_eval.pow(2).mean().item()) < 1e-6  # zero-initialised output: loss = E[eps^2]
    assert after < 0.5 * before


def test_training_is_deterministic_given_the_seed():
    config = TrainConfig(steps=4, batch_size=16, unet=SMALL)
    a, b = train(config, log_every=0), train(config, log_every=0)
    assert a.losses == b.losses
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    c = train(TrainConfig(steps=4, batch_size=16, unet=SMALL, seed=1), log_every=0)
    assert c.losses != a.losses


class _RecordLabels(nn.Module):
    """A stand-in network that predicts x itself and remembers the labels it was given."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen = None

    def forward(self, x, t, c):
        self.seen = c
        return self.scale * x


def test_label_dropout_uses_the_null_label_at_the_requested_rate():
    schedule = NoiseSchedule.from_name("linear", 1000)
    model = _RecordLabels()
    labels = torch.arange(10).repeat(400)
    x0 = torch.zeros(len(labels), 1, 8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    training_step(model, optimizer, x0, labels, schedule, p_uncond=0.25, generator=torch.Generator().manual_seed(0))
    dropped = model.seen == NULL_LABEL
    assert 0.22 < dropped.float().mean() < 0.28
    assert torch.equal(model.seen[~dropped], labels[~dropped])  # kept labels are untouched


def test_ema_warmup_and_decay():
    ema, model = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    nn.init.constant_(ema.weight, 0.0)
    nn.init.constant_(model.weight, 1.0)
    update_ema(ema, model, decay=0.999, step=0)  # warm-up: d = min(0.999, 1/10)
    assert torch.allclose(ema.weight, torch.tensor([[0.9]]))
    update_ema(ema, model, decay=0.5, step=10_000)  # late: d = decay
    assert torch.allclose(ema.weight, torch.tensor([[0.95]]))


def test_train_toy_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "weights.safetensors"
    out.write_bytes(b"precious")
    assert main(["--out", str(out), "--steps", "1"]) == 1
    assert out.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err


def test_train_toy_writes_a_loadable_checkpoint_and_overwrites_on_request(tmp_path):
    out, png = tmp_path / "w.safetensors", tmp_path / "loss.png"
    argv = ["--out", str(out), "--steps", "2", "--seed", "3", "--loss-curve", str(png)]
    assert main(argv) == 0
    meta = read_metadata(out)
    assert meta["steps"] == "2" and meta["seed"] == "3" and meta["schedule"] == "linear"
    assert meta["command"] == "python -m diffusion_notes train-toy " + " ".join(argv)
    model, schedule, _ = load_checkpoint(out)
    assert schedule.num_timesteps == 1000 and not model.training
    assert png.stat().st_size > 1000
    assert main(["--out", str(out), "--steps", "1", "--overwrite"]) == 0
    assert read_metadata(out)["steps"] == "1"


def test_default_output_is_not_silently_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / train_module.DEFAULT_OUT).write_bytes(b"x")
    assert main(["--steps", "1"]) == 1
    assert (tmp_path / train_module.DEFAULT_OUT).read_bytes() == b"x"


def test_existing_loss_curve_is_not_silently_replaced(tmp_path):
    png = tmp_path / "loss.png"
    png.write_bytes(b"x")
    assert main(["--out", str(tmp_path / "new.safetensors"), "--steps", "1", "--loss-curve", str(png)]) == 1
    assert png.read_bytes() == b"x" and not (tmp_path / "new.safetensors").exists()


def _fixed_batch_loss(objective, steps):
    """The objective's own loss on a fixed batch and fixed noise, before and after ``steps`` training steps."""
    from diffusion_notes import edm, flow_matching as fm
    from diffusion_notes.toy.train import edm_network, edm_training_step, flow_training_step

    torch.manual_seed(0)
    images, labels = load_split("train")
    x0, c = images[:64], labels[:64]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    model = DigitsUNet(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    if objective == "flow":
        t = torch.rand(64, generator=g)
        evaluate = lambda: fm.cfm_loss(model(fm.flow_path(x0, noise, t), 1000 * t, c), x0, noise).item()  # noqa: E731
        step = lambda: flow_training_step(model, optimizer, x0, c, 0.1, g)  # noqa: E731
    else:
        sigma = edm.sample_training_sigmas(64, generator=g)
        sigma_data = float(images.std())
        evaluate = lambda: edm.edm_loss(edm.preconditioned_denoiser(edm_network(model), sigma_data), x0, sigma, noise, c,  # noqa: E731
                                        sigma_data=sigma_data).item()
        step = lambda: edm_training_step(model, optimizer, x0, c, 0.1, g, sigma_data)  # noqa: E731
    with torch.no_grad():
        before = evaluate()
    for _ in range(steps):
        step()
    with torch.no_grad():
        return before, evaluate()


def test_flow_and_edm_objectives_lower_their_losses():
    for objective in ("flow", "edm"):
        before, after = _fixed_batch_loss(objective, 40)
        assert after < 0.7 * before, (objective, before, after)


def test_unknown_objective_is_refused():
    import pytest

    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="v")
