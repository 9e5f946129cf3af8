"""Merging traced channels into units: channels that share a parameter entry, or a tie, go together.

torch-pruning's trace gives one unit per root channel. Some couplings make several root channels one
unit: a Linear reshaped into channels maps 16 of its outputs to one input channel of the next conv,
and a grouped conv can only lose whole groups. :func:`merge_units` joins such channels (and the
raw groups they link) with a union-find over ``(raw group, channel)``.
"""

from __future__ import annotations

from .group import ParamSlice


class _Union:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def merge_units(raws: list[dict]) -> list[dict]:
    """Channels that share a parameter entry, or a tie, are one unit; groups linked so are one group.

    A Linear reshaped into channels maps 16 of its outputs to one input channel of the next conv:
    those 16 neurons can only go together (one unit). The channels of one conv group of a grouped
    conv are tied the same way, across the group that feeds the conv and the group of its outputs."""
    union, owner = _Union(), {}
    for gi, raw in enumerate(raws):
        for r in range(raw["num_units"]):
            union.find((gi, r))
        for key, units in raw["per_key"].items():
            for r, entries in enumerate(units):
                for e in entries:
                    union.join(owner.setdefault((*key, e), (gi, r)), (gi, r))
        for r, tokens in enumerate(raw["ties"]):
            for t in tokens:
                union.join(owner.setdefault(("tie", t), (gi, r)), (gi, r))
    by_group: dict[int, dict[tuple, list[tuple[int, int]]]] = {}
    for gi, raw in enumerate(raws):
        for r in range(raw["num_units"]):
            root = union.find((gi, r))
            by_group.setdefault(root[0], {}).setdefault(root, []).append((gi, r))
    merged = []
    for first in sorted(by_group):
        units = [by_group[first][k] for k in sorted(by_group[first])]
        parts = sorted({gi for unit in units for gi, _ in unit})
        keys = list(dict.fromkeys(k for gi in parts for k in raws[gi]["per_key"]))
        slices = tuple(
            ParamSlice(
                p,
                d,
                tuple(
                    tuple(
                        sorted(
                            {e for gi, r in unit for e in raws[gi]["per_key"].get((p, d), [[]] * (r + 1))[r]}
                        )
                    )
                    for unit in units
                ),
            )
            for p, d in keys
        )
        head = raws[first]
        merged.append(
            dict(
                name=head["name"],
                kind=head["kind"],
                layer=head["layer"],
                num_units=len(units),
                slices=slices,
                members=tuple(dict.fromkeys(m for gi in parts for m in raws[gi]["members"])),
                unsupported=tuple(dict.fromkeys(u for gi in parts for u in raws[gi]["unsupported"])),
                sink=any(raws[gi]["sink"] for gi in parts),
            )
        )
    return merged
