"""Beta schedules and controllers driven by synthetic KL sequences."""
import json
import math

import pytest

from untwine.control import CONTROLLERS, build_controller
from untwine.errors import CheckpointError, ConfigError


def f(e):
    return 1.0 / (1.0 + math.exp(e))


def drive(controller, kls, start=0):
    return [controller.update(kl, step) for step, kl in enumerate(kls, start)]


# ---- schedules --------------------------------------------------------------------------------

def test_constant_schedule():
    c = build_controller("constant", beta=4.0)
    assert c.beta == 4.0 and drive(c, [1.0, 100.0]) == [4.0, 4.0] and c.set_point() is None


def test_linear_schedule_values_and_time_scale():
    c = build_controller("linear", start=0.0, end=2.0, steps=100)
    assert c.beta == 0.0
    betas = drive(c, [0.0] * 150)  # betas[t] is the weight of step t + 1
    assert betas[49] == pytest.approx(1.0) and betas[99] == pytest.approx(2.0) and betas[149] == 2.0
    short = build_controller("linear", start=0.0, end=2.0, steps=100, time_scale=0.1)
    assert drive(short, [0.0] * 10)[4] == pytest.approx(1.0)


def test_cyclic_schedule_fu_et_al():
    c = build_controller("cyclic", cycles=2, ratio=0.5, max=3.0, steps=100)
    values = [c.beta] + drive(c, [0.0] * 120)  # values[t] = beta at step t; cycle of 50 steps
    assert values[0] == 0.0 and values[10] == pytest.approx(3.0 * 10 / 25)
    assert values[25] == pytest.approx(3.0) and values[49] == pytest.approx(3.0)
    assert values[50] == 0.0 and values[60] == pytest.approx(1.2) and values[110] == pytest.approx(1.2)
    scaled = build_controller("cyclic", cycles=2, ratio=0.5, max=3.0, steps=100, time_scale=0.2)
    assert ([scaled.beta] + drive(scaled, [0.0] * 12))[12] == pytest.approx(1.2)  # cycle of 10


# ---- ControlVAE -------------------------------------------------------------------------------

def test_controlvae_first_steps_by_hand():
    c = build_controller("controlvae", kp=0.01, ki=0.001, beta_min=1.0)
    assert c.beta == 1.0 and c.set_point() == 0.5
    # KL 10.5 above C = 0.5: e = -10, I = 0.01, P = 0.01 f(-10)
    assert c.update(10.5, 0) == pytest.approx(0.01 * f(-10) + 0.01 + 1.0)
    # again: I = 0.02
    assert c.update(10.5, 1) == pytest.approx(0.01 * f(-10) + 0.02 + 1.0)
    # KL below the set point: beta falls
    b = c.update(0.0, 2)
    assert b == pytest.approx(0.01 * f(0.5) + 0.02 - 0.0005 + 1.0)


def test_controlvae_set_point_schedule():
    c = build_controller("controlvae")
    assert [c.set_point_at(s) for s in (0, 4999, 5000, 10_000)] == pytest.approx([0.5, 0.5, 0.65, 0.8])
    assert c.set_point_at(10**8) == 18.0
    scaled = build_controller("controlvae", time_scale=0.01, c_max=16.0)
    assert [scaled.set_point_at(s) for s in (49, 50, 100)] == pytest.approx([0.5, 0.65, 0.8])
    assert scaled.set_point_at(10**6) == 16.0
    c.update(1.0, 5000)
    assert c.set_point() == pytest.approx(0.65)


def test_controlvae_moves_beta_the_right_way_and_clamps():
    up = build_controller("controlvae", beta_max=3.0)
    betas = drive(up, [50.0] * 2000)
    assert betas[10] > betas[0] > 1.0 and max(betas) == 3.0 and betas[-1] == 3.0
    down = build_controller("controlvae")
    drive(down, [50.0] * 100)
    high = down.beta
    betas = drive(down, [0.0] * 100, start=100)
    assert betas[-1] < high and min(betas) >= 1.0


def test_controlvae_anti_windup_holds_the_integral():
    c = build_controller("controlvae", kp=0.01, ki=0.001, beta_min=1.0, beta_max=2.0)
    drive(c, [0.0] * 5000)  # KL far below C for long: I would sink to -2.5 without anti-windup
    assert c.state_dict()["i_term"] > -0.011 and c.beta == 1.0
    recovered = drive(c, [1.5] * 3, start=5000)  # KL above C again: beta leaves beta_min at once
    assert recovered[-1] > 1.0
    c = build_controller("controlvae", kp=0.01, ki=0.001, beta_min=1.0, beta_max=2.0)
    drive(c, [100.0] * 5000)  # I would grow to ~500 without anti-windup
    assert c.state_dict()["i_term"] < 1.2 and c.beta == 2.0
    assert drive(c, [0.0] * 20, start=5000)[-1] < 2.0  # falls back promptly


def pinned_scenario(anti_windup):
    """C = 18; one step at KL 5 sinks I to -0.013 < -Kp; then 2,000 steps with the KL far above C."""
    c = build_controller("controlvae", c_start=18.0, c_max=18.0, anti_windup=anti_windup)
    first = c.update(5.0, 0)
    return c, first, drive(c, [100.0] * 2000, start=1)


def test_controlvae_conditional_anti_windup_never_pins_beta_at_beta_min():
    c, first, betas = pinned_scenario("conditional")
    assert c.anti_windup == "conditional" == build_controller("controlvae").anti_windup  # the default
    assert first == 1.0
    # e = -82 from step 1 on: the integral step (+0.082) points back into the range, so it is taken
    assert betas[0] == pytest.approx(0.01 * f(-82) - 0.013 + 0.082 + 1.0)
    assert betas[-1] == pytest.approx(0.01 * f(-82) - 0.013 + 0.082 * 2000 + 1.0)


def test_controlvae_official_anti_windup_is_kept_as_an_option_and_pins_beta():
    c, _, betas = pinned_scenario("official")
    assert set(betas) == {1.0} and c.state_dict()["i_term"] == pytest.approx(-0.013)
    with pytest.raises(ConfigError, match="anti_windup='clamp'.*conditional.*official"):
        build_controller("controlvae", anti_windup="clamp")


# ---- DynamicVAE -------------------------------------------------------------------------------

def test_dynamicvae_set_point_hybrid_annealing():
    c = build_controller("dynamicvae")
    steps = [0, 5999, 6000, 6500, 7000, 11_999, 12_000, 12_500, 13_000]
    assert [c.set_point_at(s) for s in steps] == pytest.approx([0.5, 0.5, 0.5, 0.575, 0.65, 0.65, 0.65, 0.725, 0.8])
    assert c.set_point_at(2_000_000) == 20.0  # 0.5 + 0.15 * 332 > 20: capped
    scaled = build_controller("dynamicvae", time_scale=0.01)
    assert [scaled.set_point_at(s) for s in (0, 60, 65, 70, 125)] == pytest.approx([0.5, 0.5, 0.575, 0.65, 0.725])
    assert scaled.set_point_at(20_000) == 20.0


def test_dynamicvae_first_steps_by_hand_with_moving_average():
    c = build_controller("dynamicvae", beta0=50.0, kp=0.01, ki=0.005, window=2)
    assert c.beta == 50.0
    # step 0: KLbar = 10, e = -9.5, e(-1) = 0
    b1 = 50.0 + 0.01 * (f(-9.5) - f(0.0)) + 0.005 * 9.5
    assert c.update(10.0, 0) == pytest.approx(b1)
    # step 1: KLbar = (10 + 2) / 2 = 6, e = -5.5
    b2 = b1 + 0.01 * (f(-5.5) - f(-9.5)) + 0.005 * 5.5
    assert c.update(2.0, 1) == pytest.approx(b2)
    # step 2: window of 2 drops the 10: KLbar = (2 + 0) / 2 = 1, e = -0.5
    b3 = b2 + 0.01 * (f(-0.5) - f(-5.5)) + 0.005 * 0.5
    assert c.update(0.0, 2) == pytest.approx(b3)
    assert c.set_point() == 0.5


def test_dynamicvae_moves_beta_the_right_way_without_upper_clamp():
    up = build_controller("dynamicvae")
    betas = drive(up, [100.0] * 200)
    assert all(b2 > b1 for b1, b2 in zip(betas, betas[1:])) and betas[-1] > 50 + 200 * 0.005 * 99
    down = build_controller("dynamicvae")
    betas = drive(down, [0.0] * 200)
    assert all(b2 < b1 for b1, b2 in zip(betas, betas[1:]))


def test_dynamicvae_beta_falls_below_one_and_clamps_at_beta_min():
    c = build_controller("dynamicvae", time_scale=0.01)
    betas = drive(c, [0.3] * 20_000)  # KL stays under the rising set point
    first_below_one = next(t for t, b in enumerate(betas) if b < 1.0)
    assert 0 < first_below_one < 20_000
    assert min(betas) == 0.1 and betas[-1] == 0.1  # clamped below at beta_min
    raw = c.state_dict()["beta_raw"]
    assert 0.1 - 0.005 * 20 <= raw < 0.1  # overshoot of at most one integral step
    drive(c, [0.3] * 100, start=20_000)
    assert c.state_dict()["beta_raw"] == raw  # integral step skipped while beta(t-1) < beta_min


def test_dynamicvae_recovers_from_below_beta_min_when_kl_rises():
    # a large Ki overshoots far below beta_min; once the KL is above the set point the integral
    # must bring beta back up (anti-windup stops integrating downwards only)
    c = build_controller("dynamicvae", ki=1.0, c_start=7.0, time_scale=0.01)
    drive(c, [0.0] * 2000)
    assert c.state_dict()["beta_raw"] < 0.1 - 0.5 and c.beta == 0.1  # deeper than a P step can undo
    raw = c.state_dict()["beta_raw"]
    drive(c, [0.0] * 50, start=2000)
    assert c.state_dict()["beta_raw"] == pytest.approx(raw, abs=0.011)  # no further integration down
    betas = drive(c, [40.0] * 2000, start=2050)
    assert betas[-1] > 10 and betas[-1] > betas[len(betas) // 2] > 0.1


def test_dynamicvae_kl_tracks_set_point_in_a_toy_loop():
    # toy plant: the KL falls with beta as KL = 5 exp(-beta / 10); after the first few ramps the
    # controller holds the KL on each new set point by the end of the hold (paper's gains, time_scale 1)
    c = build_controller("dynamicvae")
    kl = 5 * math.exp(-c.beta / 10)
    for step in range(48_000):
        c.update(kl, step)
        kl = 5 * math.exp(-c.beta / 10)
        if step >= 24_000 and step % 6000 == 5999:
            assert abs(kl - c.set_point()) < 0.05, (step, kl, c.set_point())
    assert c.set_point() == pytest.approx(0.5 + 0.15 * 7)


# ---- all controllers --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_state_round_trip_gives_the_same_trajectory(name):
    kls = [abs(math.sin(0.37 * t)) * 8 for t in range(300)]
    a = build_controller(name, time_scale=0.01)
    drive(a, kls[:150])
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))  # plain JSON numbers and lists
    b = build_controller(name, time_scale=0.01)
    b.load_state_dict(state)
    assert b.beta == a.beta and b.set_point() == a.set_point()
    assert drive(a, kls[150:], start=150) == drive(b, kls[150:], start=150)


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_bad_state_is_a_checkpoint_error(name):
    with pytest.raises(CheckpointError, match="keys"):
        build_controller(name).load_state_dict({"something": 1})


def test_build_controller_errors():
    with pytest.raises(ConfigError, match="unknown beta controller"):
        build_controller("pid")
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_controller("dynamicvae", Kp=0.01)
    with pytest.raises(ConfigError, match="time_scale"):
        build_controller("controlvae", time_scale=0)
    with pytest.raises(ConfigError, match="beta_max"):
        build_controller("controlvae", beta_min=2.0, beta_max=1.0)
    with pytest.raises(ConfigError, match="kl"):
        build_controller("dynamicvae").update(float("nan"), 0)
