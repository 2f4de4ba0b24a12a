"""What a set of interleaved pairs says, beyond the ratio of the two medians.

Single timings here vary by up to 2x and drift over minutes (another tenant's disk, a
checkpoint), so each pair is taken back to back and the pairs' own ratios are summarised too:
their median and quartiles, and in how many pairs racebench was ahead. A ratio of medians near
a target with quartiles straddling it is noise, not a verdict.
"""

from __future__ import annotations

import statistics


def pairwise(ours: list[float], theirs: list[float], name: str = "racebench") -> str:
    """One line on the per-pair ratios ours[i] / theirs[i]; `name` is the side of `ours`."""
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=True))
    ahead = sum(r > 1 for r in ratios)
    if len(ratios) < 4:
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
    else:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        spread = f"quartiles {q1:.2f}-{q3:.2f}"
    return (
        f"pairwise ratio median {statistics.median(ratios):.2f}x ({spread}; "
        f"{name} ahead in {ahead} of {len(ratios)} pairs)"
    )
