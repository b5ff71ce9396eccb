"""p-values at their floor and Holm adjustment across a family, in summaries and digests."""

import copy

import numpy as np
import pytest

from jaxsem.kernels import stats
from jaxsem.report import pvalues, writers


@pytest.mark.parametrize("p, n_null, want", [
    (1 / 500, 499, "p ≤ 0.002"),
    (1 / 501, 500, "p ≤ 0.002"),  # 0.001996 rounds up: a bound stays a bound
    (1 / 1001, 1000, "p ≤ 0.001"),
    (1 / 51, 50, "p ≤ 0.02"),
    (float(np.float32(1 / 51)), 50, "p ≤ 0.02"),  # float32 rounding above the exact floor
    (2 / 51, 50, "p = 0.039"),
    (0.0131, 1000, "p = 0.013"),
    (0.5, None, "p = 0.5"),
    (1.0, 10, "p = 1"),
])
def test_format_p(p, n_null, want):
  assert pvalues.format_p(p, n_null) == want


def test_format_p_explicit_floor_missing_and_name():
  assert pvalues.format_p(0.0125, at_floor=True) == "p ≤ 0.013"  # rounded up, not to 0.012
  assert pvalues.format_p(1 / 500, n_null=499, at_floor=False) == "p = 0.002"  # the flag wins
  assert pvalues.format_p(None) == "p = n/a" and pvalues.format_p(float("nan"), 10) == "p = n/a"
  assert pvalues.format_p(0.03, name="Holm p") == "Holm p = 0.03"
  assert pvalues.p_floor(499) == pytest.approx(0.002)
  assert pvalues.is_at_floor(1 / 200, 199) and not pvalues.is_at_floor(2 / 200, 199)
  assert not pvalues.is_at_floor(0.001, None)


def _align_doc():
  rows = []
  for i, (p, pp) in enumerate([(1 / 51, 0.2), (2 / 51, 1 / 31), (0.3, None), (5 / 51, 0.5)]):
    rows.append({"scale": f"s{i}", "norm": "warriner", "column": "valence", "pearson": 0.1 * (i + 1),
                 "pearson_ci": [0.0, 0.5], "null_p95": 0.2, "p_value": p, "pairs_p_value": pp,
                 "probe_r": 0.6})
  return {"results": rows, "nulls": {"warriner:valence:random": {"n": 50},
                                     "warriner:valence:wordnet_pairs": {"n": 30}}}


def test_add_holm_on_a_small_dict_matches_stats_holm_and_leaves_the_input_alone():
  doc = _align_doc()
  before = copy.deepcopy(doc)
  out = pvalues.add_holm(doc, "random_directions", ["results.*.p_value"])
  assert doc == before  # not modified
  raw = [r["p_value"] for r in doc["results"]]
  np.testing.assert_allclose([r["p_adjusted"] for r in out["results"]], stats.holm(raw))
  # By hand: sorted 1/51, 2/51, 5/51, 0.3 -> 4 * 1/51, 3 * 2/51, 2 * 5/51, 0.3.
  np.testing.assert_allclose([r["p_adjusted"] for r in out["results"]], [4 / 51, 6 / 51, 0.3, 10 / 51])
  assert out["multiple_comparisons"] == {"random_directions": {"method": "holm", "n_tests": 4,
                                                               "fields": ["results.*.p_value"]}}
  assert all("pairs_p_adjusted" not in r for r in out["results"])


def test_add_holm_skips_missing_tests_and_paths():
  doc = {"pair_null": {"p_value": 0.01, "n_null": 200}, "epa_null": {"p_value": None},
         "control": {"whitened": {"pair_null": {"p_value": 0.04}}}}
  out = pvalues.add_holm(doc, "structure_nulls", pvalues.STRUCTURE_FAMILIES["structure_nulls"])
  assert out["pair_null"]["p_adjusted"] == pytest.approx(0.02)
  assert out["control"]["whitened"]["pair_null"]["p_adjusted"] == pytest.approx(0.04)
  assert out["epa_null"]["p_adjusted"] is None and out["epa_null"]["p_adjusted_at_floor"] is False
  mc = out["multiple_comparisons"]["structure_nulls"]
  assert mc["n_tests"] == 2 and mc["fields"] == ["pair_null.p_value", "control.*.pair_null.p_value"]
  # A family with no test changes nothing.
  assert pvalues.add_holm({"epa_null": {"p_value": None}}, "f", ["epa_null.p_value", "x.*.p_value"]) == {
      "epa_null": {"p_value": None}}
  with pytest.raises(ValueError, match="p_value"):
    pvalues.add_holm(doc, "f", ["pair_null.pearson"])


def test_adjusted_p_is_a_bound_only_when_floors_set_it():
  doc = {"tests": [{"p_value": 0.01, "p_at_floor": True}, {"p_value": 0.015, "p_at_floor": False},
                   {"p_value": 0.2, "p_at_floor": False}, {"p_value": 0.6, "p_at_floor": False}]}
  out = pvalues.add_holm(doc, "f", ["tests.*.p_value"])["tests"]
  # Steps 4*0.01=0.04, 3*0.015=0.045, 2*0.2=0.4, 0.6: the first is set by the floor alone.
  np.testing.assert_allclose([t["p_adjusted"] for t in out], [0.04, 0.045, 0.4, 0.6])
  assert [t["p_adjusted_at_floor"] for t in out] == [True, False, False, False]
  doc["tests"][1]["p_value"] = 0.012  # 3*0.012 = 0.036 < 0.04: the floor now sets the second too
  out = pvalues.add_holm(doc, "f", ["tests.*.p_value"])["tests"]
  assert out[1]["p_adjusted"] == pytest.approx(0.04) and out[1]["p_adjusted_at_floor"] is True


def test_align_tests_flag_floors_from_the_nulls_and_adjust_both_families():
  out = writers.align_tests(_align_doc())
  rows = out["results"]
  assert [r["p_at_floor"] for r in rows] == [True, False, False, False]
  assert [r["pairs_p_at_floor"] for r in rows] == [False, True, None, False]
  assert rows[0]["n_null"] == 50 and rows[1]["pairs_n_null"] == 30
  np.testing.assert_allclose([r["pairs_p_adjusted"] for r in rows[:2] + rows[3:]],
                             stats.holm([0.2, 1 / 31, 0.5]))
  assert rows[2]["pairs_p_adjusted"] is None
  assert out["multiple_comparisons"]["wordnet_pairs"]["n_tests"] == 3
  assert out["multiple_comparisons"]["random_directions"]["n_tests"] == 4
  lines = writers.align_digest(_align_doc(), top=4)
  line = next(ln for ln in lines if ln.strip().startswith("s0 "))
  assert "p ≤ 0.02" in line and "Holm p ≤ 0.079" in line
  assert "p = 0.3 (Holm p = 0.3)" in next(ln for ln in lines if ln.strip().startswith("s2 "))


def _steer_result(p_disjoint=1 / 1001):
  def ot(p):
    return {"slope": 1.2, "intercept": 0.0, "r": 0.8, "r2": 0.64, "ci": {"slope": [1.1, 1.3]}, "n_pairs": 20,
            "shuffled_labels": {"null_r_p95": 0.3, "p_value": p, "n": 1000}}
  res = {"readout_validation": [], "controls": {}, "offtarget": ot(1 / 1001)}
  if p_disjoint is not None:
    res["offtarget_disjoint"] = ot(p_disjoint)
    res["offtarget_disjoint"]["direct_path"] = {"r_direct": 0.7, "partial_r": 0.1, "partial_ci": [-0.1, 0.3],
                                                "share_direct": 0.49, "r_cos": 0.8}
  return res


def test_steer_tests_and_digest():
  out = writers.steer_tests(_steer_result(0.3))
  sl, dj = out["offtarget"]["shuffled_labels"], out["offtarget_disjoint"]["shuffled_labels"]
  assert sl["p_at_floor"] is True and sl["n_null"] == 1000 and dj["p_at_floor"] is False
  assert sl["p_adjusted"] == pytest.approx(2 / 1001) and sl["p_adjusted_at_floor"] is True
  assert dj["p_adjusted"] == pytest.approx(0.3)
  assert out["multiple_comparisons"]["offtarget_shuffled_labels"]["n_tests"] == 2
  lines = writers.steer_digest(_steer_result(0.3))
  assert lines[0].startswith("off-target D vs cosine over 20 pairs")
  assert "shuffled-label p ≤ 0.001" in lines[0]
  assert "Holm p ≤ 0.002" in lines[0]
  assert any(ln.startswith("off-target (disjoint readout words)") and "p = 0.3" in ln for ln in lines)
  assert any("partial r=+0.10 [-0.10,+0.30]" in ln for ln in lines)
  # Without the disjoint readout the family has one test and nothing else changes.
  alone = writers.steer_tests(_steer_result(None))
  assert alone["multiple_comparisons"]["offtarget_shuffled_labels"]["n_tests"] == 1
  assert "offtarget_disjoint" not in alone
