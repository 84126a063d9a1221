import dataclasses
import functools
import json
import shutil

import gymnasium as gym
import minari
import numpy as np
import pytest

from benchmarks import make_datasets, train_behavior
from common import datasets
from common.datasets import DatasetError, load_dataset

REFS = {"Hopper-v5": {"random": -20.0, "expert": 3000.0}}


@pytest.fixture
def refs(tmp_path, monkeypatch):
    path = tmp_path / "reference_scores.json"
    path.write_text(json.dumps(REFS))
    monkeypatch.setattr(make_datasets, "REFERENCE_SCORES", path)
    monkeypatch.setattr(datasets, "REFERENCE_SCORES", path)
    return path


def arrays(dataset_id):
    data = load_dataset(dataset_id)
    return [data.obs, data.action, data.reward, data.next_obs, data.terminal]


def test_random_standin_is_reproducible_and_labelled(minari_store, refs):
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=3)
    first = arrays("offrl-standin/hopper/random-v0")
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=3, force=True)
    for a, b in zip(first, arrays("offrl-standin/hopper/random-v0")):
        np.testing.assert_array_equal(a, b)
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=4, force=True)
    assert not np.array_equal(first[1], arrays("offrl-standin/hopper/random-v0")[1])

    dataset = minari.load_dataset("offrl-standin/hopper/random-v0")
    meta = dataset.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-20.0, 3000.0)
    assert "Stand-in" in meta["description"] and "uniformly" in meta["description"]
    assert dataset.total_steps == 300
    assert dataset.recover_environment(eval_env=True).spec.id == "Hopper-v5"


def test_existing_dataset_is_kept_unless_forced(minari_store, refs):
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=200, seed=0)
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=400, seed=0)
    assert minari.load_dataset("offrl-standin/hopper/random-v0").total_steps == 200


def test_loader_builds_a_missing_standin_on_demand(minari_store, refs, monkeypatch):
    monkeypatch.setattr(make_datasets, "build_dataset", functools.partial(make_datasets.build_dataset, num_steps=250))
    data = load_dataset("hopper-random")
    assert data.dataset_id == "offrl-standin/hopper/random-v0" and len(data.obs) == 250
    assert data.normalized_score(-20.0) == pytest.approx(0.0)


def test_interrupted_build_leaves_nothing_behind(minari_store, refs, monkeypatch):
    def interrupted(*args, **kwargs):
        (minari_store / "offrl-standin/hopper/random-v0").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(make_datasets, "collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=100)
    assert not (minari_store / "offrl-standin/hopper/random-v0").exists()


def test_missing_behaviour_policy_is_a_clear_error(minari_store, refs, monkeypatch, tmp_path):
    monkeypatch.setattr(make_datasets, "BEHAVIOR_DIR", tmp_path / "nothing")
    with pytest.raises(DatasetError, match="train_behavior --env hopper"):
        make_datasets.build_dataset("offrl-standin/hopper/medium-v0", num_steps=100)


def test_cli_rejects_bad_input(minari_store, refs):
    with pytest.raises(SystemExit, match="--num-steps must be positive"):
        make_datasets.main(make_datasets.Args(names=("hopper-random",), num_steps=0))
    with pytest.raises(SystemExit, match="Did you mean 'hopper-random'"):
        make_datasets.main(make_datasets.Args(names=("hoper-random",), num_steps=10))


def test_summary_tabulates_every_standin(minari_store, refs, tmp_path, monkeypatch):
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=0, workers=2)
    monkeypatch.setattr(make_datasets, "SUMMARY", tmp_path / "datasets.md")
    elsewhere = "| offrl-standin/walker2d/medium-v0 | 2349 | 1000000 | 1266.2 | -25.8 | 3140.7 | 31.5 | 3.8 s, 545 MB | 0.3 s, 239 MB |"
    stale = "| offrl-standin/hopper/random-v0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 s | 8 s, 9 MB | 1 s, 2 MB |"
    header = "Built ... tabulated with `python -m benchmarks.make_datasets --summary`\non Old Box (2 cores). Returns are"
    by_hand = "## Builds on other machines\n\n| offrl-standin/hopper/expert-v0 | 9 s | GPU Box |\n"  # not a table row
    (tmp_path / "datasets.md").write_text(f"# Stand-in datasets\n\n{header}\n\n| dataset |\n|---|\n{elsewhere}\n{stale}\n\n"
                                          f"{by_hand}")
    monkeypatch.setattr(make_datasets, "machine", lambda: "This Box (2 cores)")
    make_datasets.write_summary()
    data = load_dataset("offrl-standin/hopper/random-v0")
    table = (tmp_path / "datasets.md").read_text().split("\n## ")[0]
    row, kept = [line for line in table.splitlines() if "| offrl-standin" in line]
    # not in this store: kept, with no build and the machine its old table said
    assert kept == elsewhere.replace("| 31.5 | 3.8 s", "| 31.5 | – | 3.8 s") + " Old Box (2 cores) |"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["offrl-standin/hopper/random-v0", str(len(data.episode_returns)), "300",
                         f"{data.episode_returns.mean():.1f}"]
    assert cells[6] == f"{data.normalized_score(data.episode_returns).mean():.1f}"
    assert cells[7].endswith(" s, collected by 2 workers")  # the build, from the dataset's metadata
    assert cells[8].endswith("MB") and cells[9].endswith("MB")  # first load, then a load from the cache
    assert cells[10] == "This Box (2 cores)"
    make_datasets.write_summary()  # a table with the machine column keeps its rows as they are
    assert kept in (tmp_path / "datasets.md").read_text().splitlines()
    assert (tmp_path / "datasets.md").read_text().endswith("\n" + by_hand)  # the hand-written section, as it was


@pytest.mark.parametrize("quality", ["random", "medium"])  # medium: the committed policy, run in each worker
def test_parallel_build_gives_the_same_dataset_as_one_worker(minari_store, refs, quality):
    dataset_id = f"offrl-standin/hopper/{quality}-v0"
    make_datasets.build_dataset(dataset_id, num_steps=700, seed=1, workers=1)
    one = arrays(dataset_id)
    make_datasets.build_dataset(dataset_id, num_steps=700, seed=1, force=True, workers=2)
    for a, b in zip(one, arrays(dataset_id)):
        np.testing.assert_array_equal(a, b)
    episodes = minari.load_dataset(dataset_id)
    assert episodes.total_steps == 700
    last = list(episodes.iterate_episodes())[-1]
    assert last.terminations[-1] or last.truncations[-1]  # the step budget cuts the last episode as a time limit would


# --- medium-replay: a tiny behaviour run stands in for the committed one ---------------------------

TINY_SAC = {"env": "hopper", "seed": 0, "total_steps": 2000, "learning_starts": 100, "update_every": 50,
            "batch_size": 32, "save_every": 100, "eval_episodes": 1, "resume_every": 100_000}


def write_committed_evaluation(committed, medium_return: float):
    """The committed run's history, with `medium_return` as its evaluation at the medium checkpoint's step."""
    (committed / "history.csv").write_text("step,eval_return_mean,eval_return_std,train_episodes,wall_time\n"
                                           f"200,-1e9,0,1,1\n400,{medium_return},0,2,2\n")


@pytest.fixture
def tiny_behavior(tmp_path, monkeypatch):
    committed = tmp_path / "behavior" / "hopper"
    committed.mkdir(parents=True)
    (committed / "config.json").write_text(json.dumps(TINY_SAC))
    (committed / "selection.json").write_text(json.dumps({"medium": {"step": 400}}))
    write_committed_evaluation(committed, 1e9)  # a level no tiny rerun reaches: its buffer ends at step 400
    monkeypatch.setattr(make_datasets, "BEHAVIOR_DIR", tmp_path / "behavior")
    monkeypatch.setattr(make_datasets, "REPLAY_DIR", tmp_path / "behavior" / "_replay")
    return committed


def test_medium_replay_is_the_training_runs_buffer_and_replays_from_its_actions(minari_store, refs, tiny_behavior):
    make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0")
    recorded = arrays("offrl-standin/hopper/medium-replay-v0")
    assert len(recorded[0]) == 400  # every transition up to the medium checkpoint's step
    assert (tiny_behavior / "replay_history.csv").read_text().splitlines()[-1].startswith("400,")
    dataset = minari.load_dataset("offrl-standin/hopper/medium-replay-v0")
    starts = np.cumsum([0] + [len(e.rewards) for e in dataset.iterate_episodes()])[:-1]
    for episode, start in zip(dataset.iterate_episodes(), starts):  # the training run reset with seed + its step
        np.testing.assert_array_equal(episode.observations[0],
                                      np.float32(gym.make("Hopper-v5").reset(seed=int(start))[0]))

    # Later builds step the simulator through the committed actions instead of training again, in one process
    # or split across several: the same bits either way.
    shutil.rmtree(make_datasets.REPLAY_DIR)
    for workers in (1, 3):
        make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0", force=True, workers=workers)
        assert not make_datasets.REPLAY_DIR.exists()
        for a, b in zip(recorded, arrays("offrl-standin/hopper/medium-replay-v0")):
            np.testing.assert_array_equal(a, b)
        assert f"by {workers} worker" in minari.load_dataset(
            "offrl-standin/hopper/medium-replay-v0").storage.metadata["build_method"]

    actions_file = tiny_behavior / make_datasets.RECORDED_ACTIONS
    with np.load(actions_file) as saved:
        tampered = {k: saved[k] for k in saved.files}
    tampered["actions"][-1] += 0.01  # a last action that no longer matches: only the checksum can tell
    np.savez(actions_file, **tampered)
    for workers in (1, 3):
        with pytest.raises(DatasetError, match="bit for bit"):
            make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0", force=True, workers=workers)


def test_medium_replay_ends_where_the_rerun_first_does_as_well_as_the_committed_medium_policy(
        minari_store, refs, tiny_behavior):
    make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0")
    full = arrays("offrl-standin/hopper/medium-replay-v0")
    # The rerun's evaluations as if it first met the committed medium level (50) at step 200.
    (tiny_behavior / "replay_history.csv").write_text("step,eval_return_mean,eval_return_std,train_episodes,wall_time\n"
                                                      "100,10,0,1,1\n200,50,0,2,2\n300,20,0,3,3\n400,90,0,4,4\n")
    write_committed_evaluation(tiny_behavior, 50)
    expected_end = 200
    assert make_datasets.rerun_reaches_medium("hopper") == expected_end
    make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0", force=True)
    cut = arrays("offrl-standin/hopper/medium-replay-v0")
    assert len(cut[0]) == expected_end
    for a, b in zip(cut, full):  # the same transitions, in the same order: a prefix of the whole buffer
        np.testing.assert_array_equal(a, b[:expected_end])
    last = list(minari.load_dataset("offrl-standin/hopper/medium-replay-v0").iterate_episodes())[-1]
    assert last.terminations[-1] or last.truncations[-1]
    assert minari.load_dataset("offrl-standin/hopper/medium-replay-v0").storage.metadata["build_method"].endswith(
        f"up to step {expected_end}")


def test_resumed_recording_ends_the_interrupted_episode_truncated(tmp_path):
    args = train_behavior.Args(**TINY_SAC, out_dir=tmp_path, stop_at=250)
    train_behavior.main(args)
    train_behavior.main(dataclasses.replace(args, stop_at=400))  # resumes at step 250
    with np.load(tmp_path / "_resume" / "hopper" / "buffer.npz") as saved:
        buffer = {k: saved[k] for k in saved.files}
    assert len(buffer["obs"]) == 400
    assert buffer["truncated"][249] + buffer["terminal"][249] == 1  # the episode in progress ended at the resume
    np.testing.assert_array_equal(buffer["obs"][250], np.float32(gym.make("Hopper-v5").reset(seed=250)[0]))
    ends = np.flatnonzero(buffer["truncated"] + buffer["terminal"])
    assert not (buffer["truncated"][ends] * buffer["terminal"][ends]).any()


def test_a_recording_with_other_settings_is_not_resumed(minari_store, refs, tiny_behavior):
    make_datasets.record_replay("hopper")
    (tiny_behavior / "selection.json").write_text(json.dumps({"medium": {"step": 300}}))
    with pytest.raises(DatasetError, match="other settings"):
        make_datasets.record_replay("hopper")


class StopSoon:
    """Stands in for Ctrl-C: asks the behaviour run to stop a few blocks of steps in."""

    def __init__(self):
        self.reads = 0

    def __enter__(self):
        return self

    def __exit__(self, *_):
        pass

    @property
    def requested(self):
        self.reads += 1
        return self.reads > 6


def stopped_then_finished(monkeypatch, elsewhere: bool):
    """Record a tiny medium-replay, stopped part way; then finish it here, or on a machine that has only the
    committed files (`elsewhere`). Returns the finished dataset's arrays."""
    with monkeypatch.context() as m:
        m.setattr(train_behavior, "GracefulInterrupt", StopSoon)
        with pytest.raises(KeyboardInterrupt):
            make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0")
    stopped = make_datasets.BEHAVIOR_DIR / "hopper" / make_datasets.STOPPED_RECORDING
    assert 0 < json.loads((stopped / "resume.json").read_text())["step"] < 400
    if elsewhere:
        shutil.rmtree(make_datasets.REPLAY_DIR)
    make_datasets.build_dataset("offrl-standin/hopper/medium-replay-v0")
    assert not stopped.exists()  # the finished recording's actions supersede it
    return arrays("offrl-standin/hopper/medium-replay-v0")


def test_a_stopped_recording_goes_on_from_its_committed_state_as_from_its_local_one(
        minari_store, refs, tiny_behavior, monkeypatch):
    here = stopped_then_finished(monkeypatch, elsewhere=False)
    assert len(here[0]) == 400
    shutil.rmtree(make_datasets.REPLAY_DIR)
    (tiny_behavior / make_datasets.RECORDED_ACTIONS).unlink()
    shutil.rmtree(minari_store / "offrl-standin/hopper/medium-replay-v0")
    for a, b in zip(here, stopped_then_finished(monkeypatch, elsewhere=True)):
        np.testing.assert_array_equal(a, b)


def test_medium_expert_is_medium_and_expert_combined_and_labelled(minari_store, refs):
    make_datasets.build_dataset("offrl-standin/hopper/medium-expert-v0", num_steps=300, seed=0, workers=1)
    combined = minari.load_dataset("offrl-standin/hopper/medium-expert-v0")
    parts = [minari.load_dataset(f"offrl-standin/hopper/{q}-v0") for q in ("medium", "expert")]
    assert combined.total_steps == 600 and combined.total_episodes == sum(p.total_episodes for p in parts)
    meta = combined.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-20.0, 3000.0)
    assert "medium-expert" in meta["description"] and meta["build_method"].startswith("combined")


def test_the_first_run_says_why_before_it_builds_and_each_line_once(minari_store, refs, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(make_datasets, "build_dataset",
                        functools.partial(make_datasets.build_dataset, num_steps=250, workers=1))
    load_dataset("hopper-medium-v2")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[data]")]
    assert len(lines) == len(set(lines)), lines

    def first(text):
        return next(i for i, line in enumerate(lines) if text in line)

    name, why = first("hopper-medium-v2 is D4RL's name"), first("not available (HF_HUB_OFFLINE is set)")
    building, built = first("[data] building stand-in dataset"), first("[data] built offrl-standin/hopper/medium-v0")
    summary = first("[data] offrl-standin/hopper/medium-v0: ")
    assert name < why < building < built < summary == len(lines) - 1
    assert "from project stand-in" in lines[summary]
