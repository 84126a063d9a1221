"""The four algorithm scripts, named once: for benchmarks/run.py, speed.py, diagnose.py and the tests."""

import importlib

ALGORITHMS = ("iql", "td3_bc", "awr", "cql")  # each is <name>.py at the repository root, with a make_<name>


def load_algorithm(name: str):
    """(the script's module, its make_<name>(args, obs_dim, action_dim), which builds the agent)."""
    module = importlib.import_module(name)
    return module, getattr(module, f"make_{name}")
