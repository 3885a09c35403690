"""The two small weight files of chapters 18-19 load, and their metadata tells the truth: the noisy
classifier's recorded test accuracy is recomputed here, and the consistency student runs with the lcm sampler."""

import torch

from diffusion_notes.forward import q_sample
from diffusion_notes.sampling import SamplerSettings, sample
from diffusion_notes.samplers.lcm import lcm_timesteps
from diffusion_notes.toy import load_pretrained, load_split
from diffusion_notes.toy.noisy_classifier import load_classifier, log_prob_of
from diffusion_notes.toy.pretrained import load_checkpoint, pretrained_path


def test_noisy_classifier_accuracy_matches_its_metadata():
    classifier, meta = load_classifier()
    _, schedule = load_pretrained()
    recorded = {int(k): v for k, v in eval(meta["test_accuracy_by_timestep"]).items()}
    images, labels = load_split("test")
    g = torch.Generator().manual_seed(1)  # the script's evaluation seed and order
    with torch.no_grad():
        for t in recorded:
            tt = torch.full((len(labels),), t)
            x_t = q_sample(images, tt, torch.randn(images.shape, generator=g), schedule)
            accuracy = float((classifier(x_t, tt.float()).argmax(1) == labels).float().mean())
            assert abs(accuracy - recorded[t]) < 1e-6, t
    assert recorded[0] > 0.95 and recorded[999] < 0.2
    log_prob = log_prob_of(classifier, labels[:4])(images[:4], torch.zeros(4))
    assert log_prob.shape == (4,) and (log_prob <= 0).all()


def test_consistency_student_loads_and_samples_digits():
    student, schedule, meta = load_checkpoint(pretrained_path().with_name("digits_lcm.safetensors"))
    assert meta["kind"].startswith("consistency") and next(student.parameters()).dtype == torch.float32
    y = torch.arange(10)
    grid = SamplerSettings("lcm", 4).grid(schedule, timesteps=lcm_timesteps(4))
    x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = sample(lambda x, t: student(x, t, y), x_T, grid, "lcm", generator=torch.Generator().manual_seed(1))
    assert x0.shape == (10, 1, 8, 8) and torch.isfinite(x0).all()
