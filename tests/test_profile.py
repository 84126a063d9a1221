"""benchmarks/profile_update.py: each XLA operation's time lands on the line of the script that produced it."""

from benchmarks import profile_update


def test_profile_charges_matrix_products_to_network_lines_and_adam_to_optimiser_lines():
    result = profile_update.profile("iql", log_every=20, chunks=1)
    rows = {r["source"]: r for r in result["lines"]}
    critic = rows['q = critic.apply(critic_params, batch["obs"], batch["action"])']
    adam = rows["updates, critic_opt_state = critic_opt.update(grads, state.critic_opt)"]
    assert critic["matmul_us_per_update"] > 0.5 * critic["us_per_update"] > 0  # its forward and backward products
    assert adam["us_per_update"] > 0 and adam["matmul_us_per_update"] == 0  # Adam is elementwise
    assert result["lines"][0]["source"].startswith(("q = critic.apply", "mean, log_std = actor.apply", "v = value"))
    assert abs(sum(r["share"] for r in result["lines"]) - 1) < 1e-3
    assert 0.3 < result["matmul_share"] < 1
