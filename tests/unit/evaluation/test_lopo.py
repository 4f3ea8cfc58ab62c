"""Leave-one-patient-out planning, fold datasets, aggregation and outputs (no Ray)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from patchray.config import LopoConfig, LopoJobConfig, load_config
from patchray.data.manifest import PatchDataset
from patchray.errors import ConfigError, DataError
from patchray.evaluation import lopo

COUNTS = {"a": (100, 30), "b": (120, 10), "c": (80, 50), "d": (60, 0), "e": (90, 40)}


def groups(counts=COUNTS):
    return lopo.make_groups(counts, {p: p for p in counts})


def test_every_patient_is_held_out_once_per_seed_and_never_validates_itself():
    g = groups({k: v for k, v in COUNTS.items() if k != "d"})
    folds = lopo.plan_folds(g, LopoConfig(seeds=[0, 1], val_groups=1))
    assert sorted((f.held_out, f.seed) for f in folds) == sorted(
        (p, s) for p in g for s in (0, 1))
    for f in folds:
        assert f.held_out not in f.val and f.held_out not in f.train
        assert set(f.val).isdisjoint(f.train)
        assert set(f.val) | set(f.train) | {f.held_out} == set(g)
    # Val groups do not depend on the seed (deterministic).
    by = {(f.held_out, f.seed): f.val for f in folds}
    assert all(by[(p, 0)] == by[(p, 1)] for p in g)
    assert len({f.fold_id for f in folds}) == len(folds)


def test_val_is_stratified_with_both_classes_in_val_and_train():
    g = groups()
    folds = lopo.plan_folds(g, LopoConfig(hold_out=["a", "b", "c", "e"], val_groups=2))
    for f in folds:
        val = [g[n] for n in f.val]
        train = [g[n] for n in f.train]
        assert sum(x.positives for x in val) and sum(x.negatives for x in val)
        assert sum(x.positives for x in train) and sum(x.negatives for x in train)
    # Holding out b (8% tumour): the remaining pool is 120/330 = 36% tumour; the closest
    # pair is a + c? (80/180 = 44%) vs a + e (70/190 = 37%): a + e wins.
    assert next(f for f in folds if f.held_out == "b").val == ("a", "e")


def test_a_single_val_group_never_is_one_class_only():
    # d has no tumour: it never validates alone (val needs both classes); of c (50%) and
    # e (33%), e is closer to the pool's 70/230 = 30%.
    g = groups({"a": (100, 5), "d": (60, 0), "c": (80, 40), "e": (90, 30)})
    f = lopo.plan_folds(g, LopoConfig(hold_out=["a"]))[0]
    assert f.val == ("e",)
    # Restricted to candidates: c validates instead.
    assert lopo.plan_folds(g, LopoConfig(hold_out=["a"], val_candidates=["c"]))[0].val == ("c",)


@pytest.mark.parametrize("lopo_cfg, message", [
    (LopoConfig(hold_out=["zz"]), "lopo.hold_out / val_candidates: zz not in"),
    (LopoConfig(hold_out=["d"]), "needs both"),
    (LopoConfig(val_groups=4), "lopo.val_groups=4"),
    (LopoConfig(val_candidates=["zz"]), "zz not in"),
    (LopoConfig(hold_out=["a"], val_candidates=["b"], val_groups=2), "leave 1 group"),
])
def test_bad_requests_are_clear_config_errors(lopo_cfg, message):
    with pytest.raises(ConfigError, match=message):
        lopo.plan_folds(groups(), lopo_cfg)


def test_impossible_stratification_and_too_few_groups_are_refused():
    g = groups({"a": (100, 5), "d": (60, 0), "x": (50, 0)})
    with pytest.raises(ConfigError, match="both classes"):
        lopo.plan_folds(g, LopoConfig(hold_out=["a"]))
    with pytest.raises(ConfigError, match="at least 3 groups"):
        lopo.plan_folds(groups({"a": (10, 5), "b": (10, 5)}), LopoConfig())


def test_config_validation(tmp_path):
    cfg = LopoJobConfig.model_validate({"eval": {"min_sensitivity": 0.9}})
    assert cfg.lopo.target_sensitivity == 0.9  # defaults to eval.min_sensitivity
    with pytest.raises(ConfigError, match="lopo.seeds"):
        load_config(None, ["lopo.seeds=[1,1]"], model=LopoJobConfig)
    with pytest.raises(ConfigError, match="group_by"):
        load_config(None, ["lopo.group_by=hospital"], model=LopoJobConfig)
    with pytest.raises(ConfigError, match="did you mean hold_out"):
        load_config(None, ["lopo.holdout=[a]"], model=LopoJobConfig)
    load_config("jobs/lopo.yaml", model=LopoJobConfig)
    load_config("jobs/lopo-idc-sample.yaml", model=LopoJobConfig)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic

    root = str(tmp_path_factory.mktemp("lopo-unit"))
    ingest_synthetic(DataConfig.model_validate(
        {"synthetic": {"num_patients": 4, "patches_per_patient": 12, "patch_size": 16,
                       "positive_fraction": 0.5}}), root)
    return PatchDataset.open(root)


def test_fold_datasets_put_the_held_out_patient_alone_in_test(small_dataset, tmp_path):
    counts = lopo.patient_counts(small_dataset)
    assert sum(n for n, _ in counts.values()) == 48
    g = lopo.make_groups(counts, lopo.group_of_patients(small_dataset, counts, "patient"))
    fold = lopo.plan_folds(g, LopoConfig(hold_out=["synth-p02"]))[0]
    ds = lopo.materialise_fold(small_dataset, fold, g, str(tmp_path / "fold"))
    m = ds.manifest
    assert set(m.split("test").patients) == {"synth-p02"}
    assert set(m.split("val").patients) == set(fold.val)
    assert set(m.split("train").patients) == set(fold.train)
    assert sum(ds.rows(s) for s in ("train", "val", "test")) == 48
    assert m.split_rule["held_out"] == "synth-p02"
    again = lopo.materialise_fold(small_dataset, fold, g, str(tmp_path / "fold"))
    assert again.content_sha256 == ds.content_sha256


def test_site_grouping_needs_recorded_sites_and_combined_datasets_record_them(small_dataset,
                                                                             tmp_path):
    with pytest.raises(ConfigError, match="records no sites"):
        lopo.group_of_patients(small_dataset, ["synth-p00"], "site")
    combined = lopo.write_combined({"lab": small_dataset}, str(tmp_path / "combined"))
    assert combined.rows("train") == 48
    sites = lopo.group_of_patients(combined, lopo.patient_counts(combined), "site")
    assert set(sites.values()) == {"lab"}
    with pytest.raises(DataError, match="must not collide"):
        lopo.write_combined({"one": small_dataset, "two": small_dataset}, str(tmp_path / "x"))


def _fake_results():
    rng = np.random.default_rng(0)
    g = groups({k: v for k, v in COUNTS.items() if k != "d"})
    results, preds = [], {}
    for f in lopo.plan_folds(g, LopoConfig(hold_out=["a", "c"], seeds=[0, 1])):
        n, pos = g[f.held_out].patches, g[f.held_out].positives
        y = np.r_[np.ones(pos, int), np.zeros(n - pos, int)]
        p = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
        r = lopo.fold_result(f, g, y_test=y, p_test=p, threshold=0.4, target=0.9,
                             val_auc=0.8, best_epoch=1, val_n=50, rule={"chosen_on": "val"})
        results.append(r)
        preds[f.fold_id] = (y.tolist(), p.tolist())
    return results, preds


def test_aggregation_pools_predictions_and_gives_mean_sd():
    results, preds = _fake_results()
    s = lopo.aggregate(results, preds)
    aucs = [r["auc"] for r in results]
    assert s["folds"] == 4 and s["auc_mean"] == pytest.approx(np.mean(aucs))
    assert s["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert s["pooled_n"] == 2 * (100 + 80)
    assert 0.5 < s["pooled_auc"] < 1.0
    assert set(s["per_group"]) == {"a", "c"} and s["per_group"]["a"]["seeds"] == [0, 1]


def test_outputs_table_csv_json_and_picture(tmp_path):
    results, preds = _fake_results()
    paths = lopo.write_outputs(tmp_path, results, preds, target=0.9, extra={"model": "x"})
    doc = json.loads(paths["json"].read_text())
    assert len(doc["folds"]) == 4 and doc["model"] == "x" and doc["target_sensitivity"] == 0.9
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["held_out"] for r in rows] == ["a", "a", "c", "c"]
    md = paths["md"].read_text()
    assert "mean +- sd" in md and "pooled" in md and md.count("\n| a |") == 2
    assert paths["png"].stat().st_size > 20_000
    d = tmp_path / "fold"
    lopo.write_fold(d, results[0], *preds[results[0]["fold"]])
    got = lopo.read_fold(d)
    assert got is not None and got[0]["fold"] == results[0]["fold"]
    assert lopo.read_fold(tmp_path / "nothing") is None
    assert "held out a" in lopo.progress_line(results[0], 1, 4)


def test_a_fold_trains_on_its_own_dataset_seed_and_target():
    from patchray.evaluation.lopo_folds import fold_train_config

    base = LopoJobConfig.model_validate({"data": {"val_holdout": 0.2},
                                         "lopo": {"seeds": [3]}}).model_dump(mode="json")
    cfg = fold_train_config(base, data_root="/x/fold", seed=3, workers=1, target=0.9)
    assert (cfg.data.root, cfg.data.val_holdout, cfg.train.seed, cfg.train.num_workers,
            cfg.eval.min_sensitivity) == ("/x/fold", 0.0, 3, 1, 0.9)
    assert not hasattr(cfg, "lopo")
