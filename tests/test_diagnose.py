"""benchmarks/diagnose.py refuses what it cannot read in one line (its replay is run in test_many_seeds)."""

import pytest

from benchmarks import diagnose


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="error: cannot read a checkpoint at .*nothing.msgpack"):
        diagnose.main(diagnose.Args("iql", tmp_path / "nothing.msgpack"))


def test_unknown_algorithm_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"error: unknown algorithm sac; choose from \['iql', 'td3_bc', 'awr', 'cql'\]"):
        diagnose.main(diagnose.Args("sac", tmp_path / "x.msgpack"))
