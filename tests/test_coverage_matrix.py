"""The coverage matrix (issue 12 item 7): every architecture of tests/coverage_cases.CASES, one line each.

For each: the groups found are the expected kinds (or the one-line refusal is the expected one), 30 %
and 50 % random prunes of every group are exact against the zero-masked dense reference, the pruned
model saves and reloads bit-identically (same class), and ``from_pretrained`` either rebuilds it
exactly or, where config.json cannot express the prune, refuses loudly.
"""

from __future__ import annotations

import pytest
from coverage_cases import CASES, EXACT_TOL, check


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_architecture(case):
    result = check(case)
    if case.refusal is not None:
        message = result["refused"]
        assert message is not None, f"{case.name} was expected to be refused, found {result.get('kinds')}"
        assert message.startswith(case.refusal), message
        assert "\n" not in message and "ignore" in message  # one line, naming the way around it
        return
    assert result["refused"] is None, result["refused"]
    assert set(result["kinds"]) == case.kinds
    if case.documented:  # the looser tolerance only where a norm over all heads is really cut
        assert result["norms_over_heads"], f"{case.name}: documented as {case.documented!r}, but no such norm"
    for fraction, err in result["exact"].items():
        assert err < case.tol, f"{case.name}: {fraction} prune is {err:.2e} off the zero-masked reference"
    assert result["changed"] > 1e-3  # negative control: the prune changed the output
    assert result["reload"], f"{case.name}: reload is not bit-identical ({result['reload_class']})"
    assert result["config_untouched"] is not False, (
        f"{case.name}: the prune changed the caller's config object"
    )
    if case.hf:  # "refused" only where config.json cannot express the prune (coverage_cases._reload)
        assert result["from_pretrained"] in ("exact", "refused"), result["from_pretrained"]
    else:
        assert result["from_pretrained"] is None


def test_only_the_documented_norm_cases_are_checked_less_tightly():
    loose = {c.name: c.documented for c in CASES if c.tol != EXACT_TOL}
    assert set(loose) == {"olmo2", "esmc"}
    assert all(loose.values()), "a looser tolerance needs its documented reason"


def test_the_matrix_covers_25_hf_architectures_and_every_non_hf_pattern():
    from prunekit.testing.patterns import PATTERNS

    assert sum(c.hf for c in CASES) >= 25
    assert {c.name for c in CASES if not c.hf} == set(PATTERNS)
