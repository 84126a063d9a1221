"""benchmarks/diagnose.py: refuses what it cannot read in one line, and measures actions against the data's
(its replay is run in test_many_seeds)."""

import numpy as np
import pytest

from benchmarks import diagnose


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="error: cannot read a checkpoint at .*nothing.msgpack"):
        diagnose.main(diagnose.Args("iql", tmp_path / "nothing.msgpack"))


def test_unknown_algorithm_is_refused(tmp_path):
    expected = r"error: unknown algorithm sac; choose from \['iql', 'td3_bc', 'awr', 'cql'\]"
    with pytest.raises(SystemExit, match=expected):
        diagnose.main(diagnose.Args("sac", tmp_path / "x.msgpack"))


def test_action_gap_is_the_rms_difference_from_the_data_actions():
    class Data:
        obs = np.arange(8, dtype=np.float32).reshape(4, 2)
        action = np.array([[0.5, -0.5], [1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]], dtype=np.float32)
    assert diagnose.action_gap(lambda obs: np.zeros((len(obs), 2)), Data) == pytest.approx(np.sqrt(3.5 / 8))
    assert diagnose.action_gap(lambda obs: Data.action[(obs[:, 0] // 2).astype(int)], Data) == 0.0
