import pytest
import torch

from hyv.engine.sampling import euler_denoise, flow_schedule, shift_sigmas


def test_schedule_endpoints_and_monotonic():
    sigmas = flow_schedule(10, shift=7.0)
    assert sigmas.shape == (11,)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_shift_matches_formula_and_bends_towards_noise():
    s = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    shifted = shift_sigmas(s, 3.0)
    assert torch.allclose(shifted, 3 * s / (1 + 2 * s))
    assert torch.all(shifted > s)
    assert torch.equal(shift_sigmas(s, 1.0), s)


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_arguments_name_the_value(bad):
    with pytest.raises(ValueError, match=str(bad)):
        flow_schedule(bad, 1.0)
    with pytest.raises(ValueError, match="flow_shift"):
        shift_sigmas(torch.tensor([0.5]), float(bad))


def test_euler_with_exact_velocity_recovers_data():
    # For x_t = (1 - s) x0 + s n the true velocity is n - x0; Euler is exact for a constant field.
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 3, 5, 5)
    noise = torch.randn_like(x0)
    calls = []
    out = euler_denoise(
        lambda x, t: noise - x0,
        noise.clone(),
        flow_schedule(7, 5.0),
        on_step=lambda i, n: calls.append((i, n)),
    )
    assert torch.allclose(out, x0, atol=1e-6)
    assert calls == [(i, 7) for i in range(1, 8)]


def test_timesteps_passed_to_model_are_sigma_times_1000():
    seen = []

    def velocity(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    sigmas = flow_schedule(4, 1.0)
    euler_denoise(velocity, torch.zeros(1, 1), sigmas)
    assert seen == pytest.approx([1000.0, 750.0, 500.0, 250.0])


def test_edit_schedule_enters_at_the_first_sigma_at_or_below_the_strength():
    from hyv.engine.sampling import edit_schedule

    student = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0], dtype=torch.float64)
    assert edit_schedule(student, 1.0).tolist() == student.tolist()
    assert edit_schedule(student, 0.95).tolist() == [0.9375, 0.8333, 0.625, 0.0]
    assert edit_schedule(student, 0.9375).tolist() == [0.9375, 0.8333, 0.625, 0.0]
    assert edit_schedule(student, 0.01).tolist() == [0.625, 0.0]  # always one step left
    with pytest.raises(ValueError, match="strength must be in"):
        edit_schedule(student, 0.0)


def test_noise_to_lies_on_the_flow_line():
    from hyv.engine.sampling import noise_to

    clean, noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), torch.randn(2, 3)
    assert torch.equal(noise_to(clean, noise, 0.0), clean)
    assert torch.allclose(noise_to(clean, noise, 1.0), noise)
    assert torch.allclose(noise_to(clean, noise, 0.25), 0.75 * clean + 0.25 * noise)
