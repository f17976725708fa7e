"""MegaFace protocol: the streaming engine against a full-score-matrix brute force written here.

Features are +-1/8 vectors in 64-D (unit norm exactly; every dot product a multiple of 1/64), so float32
GEMMs in any blocking give exactly the scores of the float64 reference: comparisons are exact, ties abound.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from helpers import UPSTREAM_SHA256

from megabench.data.feature_store import StoreMeta, write_features
from megabench.data.megaface_io import write_distractor_list, write_probe_list
from megabench.errors import DataError, MegabenchError
from megabench.evaluation.megaface import (
    MegafaceOptions,
    MegafaceSpec,
    NoiseMatchWarning,
    format_table,
    run_megaface,
    write_devkit_json,
)

DIM = 64
FARS = (1e-3, 1e-2, 1e-1, 0.3)


def _pm(rng, n):
    return (rng.choice([-1.0, 1.0], size=(n, DIM)) / 8.0).astype(np.float32)


def _flip(rng, v, k):
    w = v.copy()
    w[rng.choice(DIM, size=k, replace=False)] *= -1
    return w


def make_world(seed=0, n_dist=300):
    """Probes (6 identities, noisy probes planted), distractors with duplicates of probes, noise masks."""
    rng = np.random.default_rng(seed)
    sizes = [5, 4, 3, 6, 2, 4]
    feats, labels, paths = [], [], []
    noisy_p = []
    for c, m in enumerate(sizes):
        centre = _pm(rng, 1)[0]
        for k in range(m):
            if c in (0, 3):  # identities with noisy probes: identical clean features -> exact refined mean
                v = centre.copy()
            else:
                v = _flip(rng, centre, int(rng.integers(4, 20)))
            noise = (c == 0 and k == 1) or (c == 3 and k in (0, 4))
            if noise:
                v = _pm(rng, 1)[0]
            feats.append(v)
            labels.append(c)
            paths.append(f"P{c}/P{c}_{k}.png")
            noisy_p.append(noise)
    P = np.stack(feats)
    X = _pm(rng, n_dist)
    # hard distractors: near / equal to probes (ties with genuine 1.0 scores), some noisy
    for r, src in ((3, 0), (17, 2), (40, 6), (41, 6), (120, 12), (250, 14), (7, 20), (299, 15)):
        X[r] = P[src]
    for r in range(60, 90):
        X[r] = _flip(rng, P[int(rng.integers(len(P)))], int(rng.integers(2, 12)))
    noisy_d = np.zeros(n_dist, bool)
    noisy_d[[3, 17, 65, 120, 200]] = True
    dpaths = [f"{i % 7:03d}/{i}@N00/{1000 + i}_0.jpg" for i in range(n_dist)]
    return dict(P=P, labels=np.array(labels), paths=paths, noisy_p=np.array(noisy_p), X=X, noisy_d=noisy_d,
                dpaths=dpaths)


def write_world(w, tmp_path, *, membership="seed", sizes=(10, 50, 300)):
    """Stores, probe list, noise lists (with one unmatched entry each); devkit lists when asked."""
    write_features(tmp_path / "probes.h5", w["P"], w["paths"], ids=w["labels"])
    write_features(tmp_path / "dist.h5", w["X"], w["dpaths"])
    write_probe_list(tmp_path / "fs.json", w["paths"], [f"Person{c}" for c in w["labels"]])
    fs = [w["paths"][i].split("/")[-1] for i in np.flatnonzero(w["noisy_p"])] + ["Nobody_1.png"]
    # a MegaFace entry also matches a store path with a leading folder
    mf = [w["dpaths"][i] for i in np.flatnonzero(w["noisy_d"])] + ["999/none@N00/1_0.jpg"]
    (tmp_path / "fs_noise.txt").write_text("# comment\n" + "\n".join(fs) + "\n")
    (tmp_path / "mf_noise.txt").write_text("# comment\n" + "\n".join(mf) + "\n")
    rows = None
    if membership == "lists":
        rng = np.random.default_rng(5)
        rows = {}
        # deliberately NOT nested: every size its own random subset
        for s in sizes:
            rows[s] = np.sort(rng.choice(len(w["dpaths"]), size=s, replace=False))
            write_distractor_list(tmp_path / "lists" / f"megaface_features_list.json_{s}_1",
                                  [w["dpaths"][i] for i in rows[s]])
    return rows


def seed_rows(n, sizes, seed):
    perm = np.random.default_rng(seed).permutation(n)
    return {s: perm[:s] for s in sizes}


def _brute_variants(w, refine):
    """{variant: (noise mode, probe vectors, probes kept)} by definition (float64)."""
    P, labels, noisy_p = w["P"].astype(np.float64), w["labels"], w["noisy_p"]
    variants = {"raw": ("none", P, np.ones(len(P), bool))}
    if refine == "none":
        return variants
    Pv, keep = P.copy(), np.ones(len(P), bool)
    if refine == "drop":
        keep = ~noisy_p
    for i in np.flatnonzero(noisy_p) if refine in ("insightface", "facex") else []:
        mvec = P[(labels == labels[i]) & ~noisy_p].mean(0)
        Pv[i] = mvec / np.linalg.norm(mvec)
    variants["refined"] = (refine, Pv, keep)
    return variants


def _brute_trials(Sd, G, labels, keep, ties):
    """Ranks (ordered pairs), tie count, genuine pair scores (unordered) and the probe slots used."""
    ranks, n_tie, gen_pairs, slots = [], 0, [], []
    for c in np.unique(labels):
        mem = np.flatnonzero((labels == c) & keep)
        if mem.size < 2:
            continue
        slots.extend(mem.tolist())
        for j, i in ((j, i) for j in mem for i in mem if i != j):
            g, col = G[j, i], Sd[:, j]
            ranks.append(int((col >= g).sum()) if ties == "conservative" else int((col > g).sum()))
            n_tie += bool((col == g).any())
        gen_pairs += [G[mem[a], mem[b]] for a in range(mem.size) for b in range(a + 1, mem.size)]
    return ranks, n_tie, np.array(gen_pairs), slots


def _brute_tars(imp, gen):
    tars = {}
    for f in FARS:
        k = max(1, math.ceil(Fraction(repr(f)) * imp.size))
        tau = imp[k - 1]
        tars[f"{f:.0e}"] = {"tar": float((gen > tau).mean()), "threshold": float(tau),
                            "far": float((imp > tau).sum() / imp.size), "n_impostors": int(imp.size),
                            "n_genuine": int(gen.size)}
    return tars


def brute(w, size_rows, refine, ties):
    """The protocol by definition from the full score matrix (float64, exact here)."""
    X, labels, noisy_d = w["X"].astype(np.float64), w["labels"], w["noisy_d"]
    out = {}
    for name, (mode, Pv, keep) in _brute_variants(w, refine).items():
        out[name] = {}
        for s, rows in size_rows.items():
            rows = np.asarray(rows)
            nd = noisy_d[rows]
            if mode == "drop":
                rows, nd = rows[~nd], nd[~nd]
            Sd = X[rows] @ Pv.T
            Sd[nd] = {"insightface": -np.inf, "facex": 0.0}.get(mode, Sd[nd])
            ranks, n_tie, gen, slots = _brute_trials(Sd, Pv @ Pv.T, labels, keep, ties)
            imp = np.sort(Sd[:, sorted(slots)].ravel())[::-1]
            out[name][str(s)] = {"ranks": np.sort(ranks), "ties": n_tie, "n_distractors": int(len(rows)),
                                 "tar": _brute_tars(imp, gen), "imp": imp}
    return out


def spec(**kw):
    base = MegafaceSpec(sizes=(10, 50, 300), far_targets=FARS, topk_min=100_000, block_rows=37)
    return dataclasses.replace(base, **kw)


def mf(sp, probes, distractors, *, echo=lambda *a: None, dist_info=None, **kw):
    """run_megaface(spec, MegafaceOptions(...)): the entry-point shape every protocol shares."""
    return run_megaface(sp, MegafaceOptions(probes=probes, distractors=distractors, **kw), dist_info=dist_info,
                        echo=echo)


def run(tmp_path, w, *, refine="insightface", ties="conservative", lists=False, sp=None, **kw):
    return mf(sp or spec(), tmp_path / "probes.h5", tmp_path / "dist.h5", probe_list=tmp_path / "fs.json",
              distractor_lists=(tmp_path / "lists") if lists else None, refine=refine, ties=ties,
              facescrub_noises=tmp_path / "fs_noise.txt", megaface_noises=tmp_path / "mf_noise.txt",
              progress=False, **kw)


def check_against(res, ref, *, exact_only=False, width=None):
    for vname, sizes in ref.items():
        for s, r in sizes.items():
            got = res["variants"][vname]["sizes"][s]
            h = got["rank_histogram"]
            ranks = np.repeat(h["rank"], h["count"])
            np.testing.assert_array_equal(ranks, r["ranks"], err_msg=f"{vname} size {s} ranks")
            assert got["ties"] == r["ties"], (vname, s)
            assert got["n_trials"] == r["ranks"].size
            assert got["n_distractors"] == r["n_distractors"]
            ks = np.array(got["cmc"]["ranks"])
            np.testing.assert_array_equal(got["cmc"]["rates"], [(r["ranks"] < k).mean() for k in ks])
            assert got["rank1"] == (r["ranks"] < 1).mean()
            for key, t in r["tar"].items():
                e = got["verification"]["tar_at_far"][key]
                assert e["n_impostors"] == t["n_impostors"] and e["n_genuine"] == t["n_genuine"]
                if e["exact"]:
                    assert (e["tar"], e["threshold"], e["far"]) == (t["tar"], t["threshold"], t["far"]), \
                        (vname, s, key, e, t)
                    lo, hi = e["ci95"]
                    assert lo <= e["tar"] <= hi
                else:
                    assert not exact_only
                    assert e["threshold"] <= t["threshold"] < e["threshold"] + width, (vname, s, key, e, t)


@pytest.mark.parametrize("refine", ["insightface", "facex", "drop", "none"])
@pytest.mark.parametrize("ties", ["conservative", "optimistic"])
def test_streaming_equals_bruteforce_every_variant(tmp_path, refine, ties):
    w = make_world(1)
    write_world(w, tmp_path)
    res = run(tmp_path, w, refine=refine, ties=ties)
    ref = brute(w, seed_rows(len(w["X"]), (10, 50, 300), 0), refine, ties)
    assert set(res["variants"]) == set(ref)
    check_against(res, ref, exact_only=True)
    big = ref["raw"]["300"]
    assert big["ties"] > 0 and big["ranks"].max() > 0 and big["ranks"].min() == 0  # the data exercise ties
    if refine != "none":
        assert not np.array_equal(ref["refined"]["300"]["ranks"], big["ranks"])
        assert res["noise"]["facescrub_matched"] == 3 and res["noise"]["megaface_matched"] == 5


@pytest.mark.parametrize("cut", [-np.inf, np.inf, 0.0])
def test_dense_cut_only_moves_work(tmp_path, cut):
    """Trials below the cut are counted densely, the rest from candidates: same numbers either way."""
    w = make_world(2)
    write_world(w, tmp_path)
    res = run(tmp_path, w, refine="facex", dense_cut=cut)
    check_against(res, brute(w, seed_rows(len(w["X"]), (10, 50, 300), 0), "facex", "conservative"),
                  exact_only=True)


def test_non_nested_lists_and_histogram_resolved_tail(tmp_path):
    w = make_world(3)
    rows = write_world(w, tmp_path, membership="lists")
    sp = spec(topk_min=150)  # top-K holds 150 impostors: the larger FAR targets come from the histogram
    res = run(tmp_path, w, lists=True, sp=sp, block_rows=16)
    width = 2.0 / sp.hist_bins
    check_against(res, brute(w, rows, "insightface", "conservative"), width=width)
    entries = res["variants"]["raw"]["sizes"]["300"]["verification"]["tar_at_far"]
    assert not entries["3e-01"]["exact"] and entries["1e-03"]["exact"]
    assert res["input"]["distractor_lists"]["membership"] == "lists"


def test_block_size_and_backend_do_not_change_numbers(tmp_path):
    w = make_world(4)
    write_world(w, tmp_path)
    a = run(tmp_path, w, block_rows=300)
    b = run(tmp_path, w, block_rows=7, backend="faiss")
    assert a["variants"] == b["variants"]
    write_features(tmp_path / "dist.h5", w["X"], w["dpaths"], dtype="float16")  # +-1/8 is exact in float16
    c = run(tmp_path, w, block_rows=64)
    assert c["variants"] == a["variants"]


def test_resume_equals_uninterrupted_and_refuses_other_inputs(tmp_path):
    w = make_world(5)
    write_world(w, tmp_path)
    full = run(tmp_path, w)
    state = tmp_path / "run.state.npz"
    with pytest.raises(MegabenchError, match="max_blocks"):
        run(tmp_path, w, state=state, max_blocks=3, checkpoint_seconds=0)
    assert state.exists()
    with pytest.raises(MegabenchError, match="max_blocks"):
        run(tmp_path, w, state=state, resume=True, max_blocks=2, checkpoint_seconds=0)
    resumed = run(tmp_path, w, state=state, resume=True)
    assert resumed["variants"] == full["variants"]
    with pytest.raises(DataError, match="different inputs"):
        run(tmp_path, w, state=state, resume=True, refine="drop")
    before = state.read_bytes()
    with pytest.raises(MegabenchError, match="another run"):  # other options: that run's state is kept
        run(tmp_path, w, state=state, refine="drop", checkpoint_seconds=0)
    assert state.read_bytes() == before


def test_result_schema_devkit_json_and_table(tmp_path):
    import json

    from megabench.results import read_result, write_result

    w = make_world(6)
    write_world(w, tmp_path)
    res = run(tmp_path, w)
    write_result(tmp_path / "r.json", res)
    back = read_result(tmp_path / "r.json")
    s = back["variants"]["refined"]["sizes"]["300"]
    assert set(s) >= {"rank1", "cmc", "ties", "n_trials", "verification"}
    assert set(s["verification"]["tar_at_far"]["1e-03"]) >= {"tar", "threshold", "far", "n_impostors",
                                                             "n_genuine", "ci95"}
    assert set(back["noise"]) >= {"facescrub_matched", "megaface_matched", "lists_sha256"}
    from megabench.fileio import sha256_file

    assert back["input"]["probes"]["sha256"] == sha256_file(tmp_path / "probes.h5")
    assert back["input"]["distractors"]["sha256"] == sha256_file(tmp_path / "dist.h5")  # hashed in a thread
    files = write_devkit_json(res, tmp_path / "dk", "test")
    assert len(files) == 6
    dk = json.loads((tmp_path / "dk" / "raw" / "cmc_facescrub_megaface_test_300_1.json").read_text())
    assert dk["cmc"][0][0] == 0
    assert dk["cmc"][1][0] == back["variants"]["raw"]["sizes"]["300"]["rank1"]
    assert len(dk["roc"]) == 2 and len(dk["roc"][0]) == len(dk["roc"][1])
    table = format_table(res)
    assert "rank-1 refined" in table and "300" in table


def test_bad_inputs(tmp_path):
    w = make_world(7)
    write_world(w, tmp_path)
    # a listed probe path without a feature
    write_probe_list(tmp_path / "fs_bad.json", [*w["paths"], "Ghost/Ghost_1.png"], ["x"] * (len(w["paths"]) + 1))
    with pytest.raises(DataError, match="1 of .* no feature.*Ghost"):
        mf(spec(), tmp_path / "probes.h5", tmp_path / "dist.h5", probe_list=tmp_path / "fs_bad.json",
                     progress=False, echo=lambda *a: None)
    # a distractor list naming unknown images
    write_distractor_list(tmp_path / "badlists" / "megaface_features_list.json_10_1",
                          [*w["dpaths"][:8], "nope/a.jpg", "nope/b.jpg"])
    with pytest.raises(DataError, match="2 of 10 paths of the size-10 list"):
        mf(spec(), tmp_path / "probes.h5", tmp_path / "dist.h5", probe_list=tmp_path / "fs.json",
                     distractor_lists=tmp_path / "badlists", progress=False, echo=lambda *a: None)
    # dimension mismatch
    write_features(tmp_path / "dist32.h5", w["X"][:, :32], w["dpaths"])
    with pytest.raises(DataError, match="dimension 32"):
        mf(spec(), tmp_path / "probes.h5", tmp_path / "dist32.h5", probe_list=tmp_path / "fs.json",
                     progress=False, echo=lambda *a: None)
    # NaN / zero-norm distractor rows, named by store row
    X = w["X"].copy()
    X[123, 5] = np.nan
    X[200] = 0
    write_features(tmp_path / "distnan.h5", X, w["dpaths"])
    with pytest.raises(DataError, match=r"NaN/inf or have zero norm \(first rows \[123"):
        mf(spec(), tmp_path / "probes.h5", tmp_path / "distnan.h5", probe_list=tmp_path / "fs.json",
                     progress=False, echo=lambda *a: None, refine="none")


def test_singletons_error_or_skip(tmp_path):
    w = make_world(8)
    P = np.concatenate([w["P"], _pm(np.random.default_rng(0), 1)])
    paths = [*w["paths"], "Solo/Solo_1.png"]
    write_features(tmp_path / "probes.h5", P, paths, ids=np.concatenate([w["labels"], [99]]))
    write_features(tmp_path / "dist.h5", w["X"], w["dpaths"])
    kw = dict(progress=False, echo=lambda *a: None, refine="none")
    with pytest.raises(DataError, match="1 probe identities have a single image.*Solo"):
        mf(spec(), tmp_path / "probes.h5", tmp_path / "dist.h5", **kw)
    res = mf(spec(), tmp_path / "probes.h5", tmp_path / "dist.h5", allow_singletons=True, **kw)
    assert res["input"]["skipped_singletons"]["raw"] == 1
    w2 = dict(w)
    ref = brute(w2, seed_rows(len(w["X"]), (10, 50, 300), 0), "none", "conservative")
    np.testing.assert_array_equal(np.repeat(*[res["variants"]["raw"]["sizes"]["300"]["rank_histogram"][k]
                                              for k in ("rank", "count")]), ref["raw"]["300"]["ranks"])


def test_noise_lists_matching_nothing_warn(tmp_path):
    w = make_world(9)
    write_world(w, tmp_path)
    (tmp_path / "empty_fs.txt").write_text("# c\nNobody.png\n")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = mf(
            spec(), tmp_path / "probes.h5", tmp_path / "dist.h5", probe_list=tmp_path / "fs.json",
            facescrub_noises=tmp_path / "empty_fs.txt", megaface_noises=tmp_path / "mf_noise.txt",
            progress=False, echo=lambda *a: None)
    msgs = [str(r.message) for r in rec if issubclass(r.category, NoiseMatchWarning)]
    assert len(msgs) == 1 and "none of its 1 entries matched" in msgs[0]
    assert res["noise"]["facescrub_matched"] == 0 and res["noise"]["megaface_matched"] == 5


def test_shipped_noise_lists_are_the_default(tmp_path):
    """The spec's default noise lists are the shipped copies (verbatim insightface lists)."""
    from megabench.config import load_spec
    from megabench.fileio import sha256_file

    sp = load_spec("megaface_c1", kind="megaface")
    for which in ("facescrub", "megaface"):
        assert sha256_file(sp.noise_path(which)) == UPSTREAM_SHA256[f"{which}_noises.txt"]
    w = make_world(10)
    write_world(w, tmp_path)
    printed = []
    with pytest.warns(NoiseMatchWarning):
        res = mf(dataclasses.replace(sp, sizes=(10, 300), block_rows=64), tmp_path / "probes.h5",
                           tmp_path / "dist.h5", probe_list=tmp_path / "fs.json", progress=False, echo=printed.append)
    assert "InsightFace" in printed[0]
    assert res["noise"]["lists_sha256"]["facescrub"].startswith("36cf3633")


def test_cli_synthetic_end_to_end(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from megabench.cli import cli

    monkeypatch.setenv("MEGABENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res.json"
    args = ["megaface", "--synthetic", "2000", "--dim", "32", "--quiet", "--out", str(out), "--block-rows", "512",
            "--checkpoint-seconds", "0"]
    r = CliRunner().invoke(cli, [*args, "--max-blocks", "2"])  # a crash after two blocks
    assert r.exit_code == 1 and "--resume" in r.output and (tmp_path / "res.json.state.npz").exists()
    r = CliRunner().invoke(cli, [*args, "--resume", "--devkit-json", str(tmp_path / "dk")])
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.output and not (tmp_path / "res.json.state.npz").exists()
    assert "rank-1 raw" in r.output and "TAR@1e-6 refined" in r.output and "InsightFace" in r.output
    res = json.loads(out.read_text())
    assert list(res["variants"]["raw"]["sizes"]) == ["10", "100", "1000", "2000"]
    raw, ref = (res["variants"][v]["sizes"]["2000"]["rank1"] for v in ("raw", "refined"))
    assert ref > raw  # the planted noise hurts raw, the synthetic noise lists repair it
    assert res["noise"]["facescrub_matched"] == 25
    assert (tmp_path / "dk" / "refined" / "cmc_facescrub_megaface_megabench_2000_1.json").exists()
    r = CliRunner().invoke(cli, ["megaface", "--quiet"])
    assert r.exit_code == 1 and "error: megaface needs --probes and --distractors" in r.output


def test_result_carries_probe_model_and_warns_on_mixed_models(tmp_path):
    w = make_world(3)
    write_world(w, tmp_path)
    prep = {"mean": 127.5, "std": 128.0}
    write_features(tmp_path / "probes.h5", w["P"], w["paths"], ids=w["labels"],
                   meta=StoreMeta(model="sranet_r50", checkpoint_sha256="a" * 64, preprocessing=prep))
    write_features(tmp_path / "dist_same.h5", w["X"], w["dpaths"],
                   meta=StoreMeta(model="sranet_r50", checkpoint_sha256="a" * 64, preprocessing=prep))
    write_features(tmp_path / "dist_other.h5", w["X"], w["dpaths"],
                   meta=StoreMeta(model="iresnet50", checkpoint_sha256="b" * 64))
    kw = dict(probe_list=tmp_path / "fs.json", progress=False, echo=lambda *a: None, refine="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same model: no warning at all
        res = mf(spec(), tmp_path / "probes.h5", tmp_path / "dist_same.h5", **kw)
    assert res["model"] == {"name": "sranet_r50", "checkpoint_sha256": "a" * 64, "preprocessing": prep}
    with pytest.warns(UserWarning, match="'sranet_r50'.*'iresnet50'.*meaningless"):
        other = mf(spec(), tmp_path / "probes.h5", tmp_path / "dist_other.h5", **kw)
    assert other["variants"]["raw"] == res["variants"]["raw"]  # same scores, only the provenance differs


@pytest.mark.parametrize("refine", ["insightface", "facex"])
def test_the_cpu_run_never_imports_torch(tmp_path, refine):
    """The default CPU path (numpy's GEMM, the fused kernel, numpy normalisation) imports no torch: its import
    alone was 1.0-1.7 s of a 1M run. A clean interpreter runs the protocol and reports ``sys.modules``."""
    import json
    import subprocess
    import sys

    w = make_world(6)
    write_world(w, tmp_path)
    args = {"probes": str(tmp_path / "probes.h5"), "distractors": str(tmp_path / "dist.h5"),
            "probe_list": str(tmp_path / "fs.json"), "facescrub_noises": str(tmp_path / "fs_noise.txt"),
            "megaface_noises": str(tmp_path / "mf_noise.txt"), "refine": refine, "progress": False}
    code = (
        "import json, sys\n"
        "from megabench.evaluation.megaface import MegafaceOptions, MegafaceSpec, run_megaface\n"
        "sp = MegafaceSpec(sizes=(10, 50, 300), far_targets=(1e-3, 1e-1), topk_min=100_000, block_rows=37)\n"
        f"res = run_megaface(sp, MegafaceOptions(**json.loads({json.dumps(json.dumps(args))})), echo=lambda *a: None)\n"
        "print(json.dumps([res['input']['backend'], 'torch' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    backend, torch_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert backend == "numpy" and torch_imported is False
    assert run(tmp_path, w, refine=refine)["variants"]  # the same run in this process completes too


def test_zero_score_bin_equals_torch_histc():
    """The bin a ``zero`` variant's masked scores go to, computed without torch, is torch.histc's bin of 0.0."""
    import torch

    from megabench.metrics.kernels_torch import histogram
    from megabench.metrics.streaming import HistSpec, MegafaceAccumulator

    for n_core in (1 << 12, 1 << 20):
        hs = HistSpec(n_core)
        acc = MegafaceAccumulator([], 1, 10, hs, kernel="torch")
        np.testing.assert_array_equal(acc.zero_hist, histogram(torch.zeros(1), hs))


# --- CUDA: `pytest -m cuda` on a GPU machine (deselected elsewhere) ---------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("refine", ["insightface", "facex"])
def test_protocol_on_cuda_equals_cpu_and_bruteforce(tmp_path, refine):
    """--device cuda (torch GEMM and the torch kernel on the GPU): every score of this world is a multiple of
    1/64, exact in any summation order, so the numbers equal the CPU run's and the brute force, bit for bit."""
    w = make_world(6)
    write_world(w, tmp_path)
    cpu = run(tmp_path, w, refine=refine)
    gpu = run(tmp_path, w, refine=refine, device="cuda")
    assert gpu["environment"]["device"] == "cuda" and cpu["environment"]["device"] == "cpu"
    assert gpu["variants"] == cpu["variants"]
    check_against(gpu, brute(w, seed_rows(len(w["X"]), (10, 50, 300), 0), refine, "conservative"),
                  exact_only=True)
