"""The two guards of a training loop: stop on the first non-finite metric, and turn Ctrl-C into a clean stop."""

import signal

import numpy as np

from common.experiment import describe


def first_nonfinite(metrics: dict):
    """(index, names) of the first update whose metrics hold a NaN/inf, from per-update arrays; else None."""
    bad = {name: np.flatnonzero(~np.isfinite(np.asarray(values))) for name, values in metrics.items()}
    bad = {name: idx[0] for name, idx in bad.items() if idx.size}
    if not bad:
        return None
    first = min(bad.values())
    return int(first), sorted(name for name, idx in bad.items() if idx == first)


def stop_if_nonfinite(per_seed_metrics: list[dict], step: int, labels: list[dict], save):
    """Exit naming the loss and the update that first went non-finite, after `save()` (-> the path it wrote).

    `per_seed_metrics` holds one dict of per-update arrays per trained state, which `labels` name (`run_labels`:
    the seed and any swept values); `step` is the update count before this chunk.
    """
    for label, metrics in zip(labels, per_seed_metrics):
        bad = first_nonfinite(metrics)
        if bad:
            path = save()
            index, names = bad
            values = ", ".join(f"{name} became {metrics[name][index]}" for name in names)
            prefix = f"{describe(label)}: " if len(per_seed_metrics) > 1 else ""
            raise SystemExit(f"error: {prefix}{values} at update {step + index + 1}; stopped (state saved to {path})")


class GracefulInterrupt:
    """Inside `with`, turn Ctrl-C (and SIGTERM) into a flag, so the loop can finish its chunk, save and exit
    cleanly. On leaving, the handlers from before come back: a caller in the same process (a test, a notebook)
    gets its Ctrl-C back."""

    def __enter__(self):
        self.requested = False
        self._before = {signum: signal.signal(signum, self._request) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_):
        for signum, handler in self._before.items():
            signal.signal(signum, handler)

    def _request(self, *_):
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this chunk, saving a checkpoint, then stopping (Ctrl-C again to abort)")
