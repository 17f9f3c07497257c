"""Write docs/results.md, one section per stage, from the benchmark JSONs in benchmarks/results/.

    python benchmarks/results_doc.py            # (re)write docs/results.md  (= make results-doc)
    python benchmarks/results_doc.py --check    # exit 1 if docs/results.md differs from what the JSONs give

Every number on the page is read from a JSON here, and each table names its file; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "results.md"
DEMO_SEED = yaml.safe_load((HERE.parent / "config.yaml").read_text())["datasets"]["phantom"]["phantom"]["seed"]


def num(value, digits: int = 2) -> str:
    """A table cell: None, NaN and non-numbers as '-' (strings as they are), floats with `digits` decimals."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def prf(d: dict, digits: int = 2) -> str:
    """'P / R / F1' of a dict with precision, recall and f1."""
    return " / ".join(num(d[k], digits) for k in ("precision", "recall", "f1"))


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def source(name: str) -> str:
    """The line that names a table's JSON (and its full markdown table)."""
    return f"From `benchmarks/results/{name}.json` (full table: `benchmarks/results/{name}.md`)."


def span(values: list[float], digits: int = 2) -> str:
    """'median (min-max)' of finite values."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    return f"{num(statistics.median(values), digits)} ({num(min(values), digits)}-{num(max(values), digits)})"


def phantom(r: dict) -> list[str]:
    speed, real = r["phantom_speed"], r["phantom_realism"]
    out = ["## phantom: synthetic tissue with full ground truth", "", source("phantom_speed"), ""]
    out += table(["case", "shape (z, y, x)", "seconds", "Mvoxel/s", "density", "objects", "neurons", "synapses"],
                 [[row["case"], tuple(row["shape"]), num(row["seconds"]), num(row["mvoxels_per_second"]),
                   num(row["density"]), row["n_objects"], row["n_neurons"], row["n_synapses"]]
                  for row in speed["rows"]])
    stats = real["phantom_generation_stats"]
    out += ["", "Default phantom (`benchmarks/results/phantom_realism.json`, phantom_generation_stats): "
            f"membrane / cytoplasm grey {num(stats['membrane_to_cytoplasm'])}, adjacent-section correlation "
            f"{num(stats['adjacent_section_correlation'])}, {stats['n_edges']} connected neuron pairs of "
            f"{stats['n_neurons']} neurons, {stats['n_rois']} two-photon ROIs."]
    names = list(real["histogram_intersection"])
    out += ["", source("phantom_realism") + f" Ratio = phantom / real EM at {num(real['pixel_nm'], 0)} nm pixels; "
            f"{real['ratios_within_2x']} ratios within 2x.", ""]
    out += table(["statistic", *names],
                 [[stat, *(num(row[n]["ratio"]) for n in names)] for stat, row in real["table"].items()])
    return out


def predict(r: dict) -> list[str]:
    bq, tp, sd = r["boundary_quality"], r["predict_throughput"], r["synapse_detection"]
    ph = bq["phantom"]
    out = ["## predict: U-Net affinities and synapse maps", "",
           source("boundary_quality") + f" P / R / F1. Model `{ph['checkpoint']}`, {ph['iterations']} iterations "
           f"from weights `{ph['init']['weights_sha256'][:8]}` (models/README.md names each run's weights); "
           f"holdout: sections {ph['holdout']['sections']} of training phantom {json.dumps(ph['trained_on'])}; "
           f"test: unseen phantom {json.dumps(ph['test_phantom'])}; cleft objects at "
           f"{json.dumps(ph['synapse_operating_point'])}.", ""]
    rows = [("cut edges", "edge"), ("z edges (between sections)", "edge_z"),
            ("boundary voxels, 1-voxel tolerance", "boundary_tol1"), ("cleft objects", "cleft_objects")]
    out += table(["metric", "holdout", "test"],
                 [[name, prf(ph["holdout"][key]), prf(ph["test"][key])] for name, key in rows]
                 + [["polarity ranked right (share of synapses)", num(ph["holdout"]["polarity"]["ranked_right"]),
                     num(ph["test"]["polarity"]["ranked_right"])]])
    gala = bq["gala"]
    out += ["", f"Real FIB-SEM (gala test), U-Net trained on gala train ({gala['train_iterations']} iterations) "
            "vs gala's own boundary map p1; boundary voxels P / R / F1 (same file):", ""]
    out += table(["tolerance", "U-Net at 0.5", "p1 at 0.5", "U-Net best (t)", "p1 best (t)"],
                 [[tol, prf(gala[f"unet_tol{tol}_t0.5"]), prf(gala[f"p1_tol{tol}_t0.5"]),
                   f"{prf(gala[f'unet_tol{tol}_best'])} ({gala[f'unet_tol{tol}_best']['threshold']})",
                   f"{prf(gala[f'p1_tol{tol}_best'])} ({gala[f'p1_tol{tol}_best']['threshold']})"] for tol in (0, 1)])
    out += ["", source("synapse_detection") + f" Cleft detection on {sd['dataset']}; objects matched within "
            f"{num(sd['tolerance_nm'], 0)} nm.", ""]
    out += table(["detector", "threshold", "object P / R / F1", "pred / true objects", "pixel F1"],
                 [[name, num(d["threshold"]), " / ".join(num(d[f"object_{k}"]) for k in ("precision", "recall", "f1")),
                   f"{d['n_pred']} / {d['n_gt']}", num(d["pixel_f1"])] for name, d in sd["results"].items()])
    out += ["", source("predict_throughput") + f" CPU fp32, {tp['threads']} threads, torch {tp['torch']}, "
            f"{tp['parameters']} parameters; reference: fp32 matmul "
            f"{num(tp['matmul_fp32_flop_per_s'] / 1e9, 1)} GFLOP/s.", ""]
    out += table(["output tile (z, y, x)", "network Mvoxel/s", "network % of matmul", "channels-last / default layout",
                  "whole predict pipeline Mvoxel/s"],
                 [[row["tile_output"], num(row["network_voxels_per_s"] / 1e6),
                   num(100 * row["network_fraction_of_matmul"], 0),
                   num(row["speedup_vs_ncdhw"]) + "x", num(row["pipeline_voxels_per_s"] / 1e6)] for row in tp["rows"]])
    return out


PEERS = [("connectomix", "connectomix blockwise (mean)"),
         ("connectomix, best t", "connectomix blockwise (mean), best threshold"),
         ("fragment bound", "connectomix fragments (mean), bound: majority-overlap agglomeration"),
         ("waterz", "waterz whole volume (own zwatershed fragments)"),
         ("waterz, best t", "waterz whole volume, best threshold"),
         ("mwatershed", "mwatershed whole volume (pixel mutex, nn offsets)")]


def segment(r: dict) -> list[str]:
    acc, err, tp = r["segment_accuracy"], r["segment_errors"], r["segment_throughput"]
    by = {(row["dataset"], row["method"]): row for row in acc}
    datasets = list(dict.fromkeys(row["dataset"] for row in acc))
    notes = {row["dataset"]: row["note"] for row in acc if row.get("note")}

    def cell(row):
        return "-" if row is None else f"{num(row['voi'])} ({row['threshold']})" if row["threshold"] != "-" \
            else num(row["voi"])
    out = ["## segment: fragments, agglomeration, stitching", "",
           source("segment_accuracy") + " VOI (split + merge, bits; lower is better) with the threshold in "
           "parentheses, every method on the same affinities; fragment bound: each connectomix fragment given to "
           "its majority ground-truth object (the error the fragments leave to any agglomeration).", ""]
    out += table(["affinities", *(name for name, _ in PEERS)],
                 [[d, *(cell(by.get((d, method))) for _, method in PEERS)] for d in datasets])
    out += [""] + [f"- {d}: {notes[d]}" for d in datasets if d in notes]
    out += ["", source("segment_errors") + " Where the errors come from: the same fragments agglomerated with "
            "ground-truth decisions on one kind of edge; VOI (split / merge).", ""]
    rows = []
    for d in err:
        for name, v in d["variants"].items():
            at, best = v["at_threshold"], v["best"]
            rows.append([d["dataset"], name, f"{num(at['voi'])} ({num(at['voi_split'])} / {num(at['voi_merge'])}) "
                         f"at {at['threshold']}", f"{num(best['voi'])} at {best['threshold']}"])
        fb = d["fragment_bound"]
        rows.append([d["dataset"], "fragment bound", f"{num(fb['voi'])} ({num(fb['voi_split'])} / "
                     f"{num(fb['voi_merge'])})", "-"])
    out += table(["dataset", "decisions", "VOI at the run's threshold", "best VOI"], rows)
    out += ["", source("segment_throughput") + " connectomix: the whole stage blockwise; waterz: zwatershed + "
            "agglomeration on the whole volume in memory, one process.", ""]
    out += table(["dataset", "voxels", "block shape", "connectomix Mvoxel/s", "waterz Mvoxel/s",
                  "waterz / connectomix time", f"same, {tp['rows'][0]['workers']} processes",
                  "peak RSS per block job fragments / rag / relabel (MB)"],
                 [[row["dataset"], row["voxels"], row["block_shape"], num(row["connectomix_voxels_per_s"] / 1e6),
                   num(row["waterz_voxels_per_s"] / 1e6), num(row["ratio_vs_waterz"]),
                   num(row["ratio_vs_waterz_workers"]),
                   " / ".join(num(row["peak_rss_mb"][f"segment_{s}"], 0) for s in ("fragments", "rag", "relabel"))]
                  for row in tp["rows"]])
    return out


def skeletonize(r: dict) -> list[str]:
    sk = r["skeletonize_throughput"]
    out = ["## skeletonize: blockwise kimimaro merged across block faces", "",
           source("skeletonize_throughput") + " Throughput = whole-volume time / blockwise time; agreement = share "
           "of segments whose blockwise cable is within 3 % of whole-volume kimimaro's (reference rows: "
           f"whole-volume kimimaro against itself on a mirrored view); {sk['cpus']} CPUs.", ""]
    out += table(["volume", "shape", "block shape", "throughput", "within 3 %", "axon / neuron / glia",
                  "worst (segment)", "one tree"],
                 [[row["volume"], row["shape"], row.get("block_shape", "-"), num(row["throughput_ratio"]),
                   num(row["segments_within_3pct"]),
                   " / ".join(num(row["within_3pct_by_kind"][k]) for k in ("axon", "neuron", "glia")),
                   f"{num(row['worst_rel_diff'])}, segment {row['worst_segment']}", num(row["segments_one_tree"])]
                  for row in sk["rows"]])
    return out


def mesh(r: dict) -> list[str]:
    m = r["mesh_throughput"]
    out = ["## mesh: blockwise zmesh welded across block faces", "",
           source("mesh_throughput") + " Throughput = whole-volume time / blockwise time (block jobs + merge); "
           "area: each segment's simplified mesh, blockwise vs whole volume (unsimplified they are identical); "
           f"`mesh:` defaults {m['params']}; {m['cpus']} CPUs.", ""]
    out += table(["volume", "shape", "blocks", "whole s", "blocks s", "merge s", "throughput",
                  "peak MB per block job", "faces per segment (median / max)", "bytes per segment (median / max)",
                  "area diff (median / max)"],
                 [[row["volume"], row["shape"], row["n_blocks"], num(row["whole_s"], 1), num(row["blocks_s"], 1),
                   num(row["merge_s"], 1), num(row["throughput_ratio"]), num(row["peak_rss_mb_per_block_job_max"], 0),
                   f"{row['faces_per_segment_median']} / {row['faces_per_segment_max']}",
                   f"{row['bytes_per_segment_median']} / {row['bytes_per_segment_max']}",
                   f"{num(row['area_median_abs_rel_diff'], 4)} / {num(row['area_max_abs_rel_diff'], 4)}"]
                  for row in m["rows"]])
    return out


def synapses(r: dict) -> list[str]:
    sd, sp = r["synapse_detection"], r["synapse_partners"]
    out = ["## synapses, connectome: clefts, partners, edges", "",
           source("synapse_detection") + " End to end on maps derived from the ground truth (segmentation = "
           "ground truth; `_segmented`: the project's segmentation of degraded affinities).", ""]
    out += table(["volume", "synapse P / R / F1", "partner accuracy", "edge P / R / F1"],
                 [[name, " / ".join(num(d[f"synapses.{k}"]) for k in ("precision", "recall", "f1")),
                   num(d["synapses.partner_accuracy"]),
                   " / ".join(num(d[f"connectome.edge_{k}"]) for k in ("precision", "recall", "f1"))]
                  for name, d in sd["ground_truth_maps"].items()])
    out += ["", source("synapse_partners") + " The shipped model's maps; today's rule "
            f"{json.dumps(sp['today'])} against the partner classifier (`pairing: model`, config.yaml) and the "
            "`oracle` (a perfect classifier of the same sites: the ceiling on these maps); demo (seed 7) and the mean "
            "of unseen seeds 10-12, on the ground-truth (`gt/labels`) or reconstructed (`segmentation`) "
            "segmentation.", ""]
    out += table(["seed", "segmentation", "rule", "synapse P / R / F1", "partner accuracy", "edge P / R / F1"],
                 [[row["seed"], row["segmentation"], row["rule"], prf(row), num(row["partner_accuracy"]),
                   prf({k: row[f"edge_{k}"] for k in ("precision", "recall", "f1")})]
                  for row in sp["summary"]])
    return out


def real_em(r: dict) -> list[str]:
    if "real_em" not in r:
        return []
    re = r["real_em"]
    out = ["## train, predict: real EM the model has never seen", "",
           source("real_em") + " Leave one dataset out: a 2D (per-section) U-Net trained on every other labelled "
           "dataset (and the phantom), resampled in-plane to the left-out dataset's pixel size, against one trained on "
           "the dataset's own training part; per-section VOI on its held-out part through the project's agglomeration "
           "(best threshold of a sweep; waterz's best on the same affinities as the peer).", ""]
    own = {row["left_out"]: row["best"]["voi"] for row in re["leave_one_out"]
           if "skipped" not in row and row["trained_on"].startswith("own")}
    out += table(["left out", "trained on", "VOI @0.5", "VOI best (threshold)", "ratio to own", "waterz best VOI"],
                 [[row["left_out"], row["trained_on"], num(row["at_0.5"]["voi"]),
                   f"{num(row['best']['voi'])} ({num(row['best']['threshold'])})",
                   num(row["best"]["voi"] / own[row["left_out"]]) if row["left_out"] in own else "-",
                   num(row["waterz_best"]["voi"])]
                  for row in re["leave_one_out"] if "skipped" not in row])
    if re.get("shipped"):
        out += ["", "The shipped model `models/real-em` (`real-em`: every training part at its own pixel size, plus the "
                "phantom, each giving a quarter of the patches; `real-em-by-voxels`: patches in proportion to voxels), "
                "per section on the held-out parts and on gala test with other grey values:", ""]
        out += table(["model", "test", "VOI @0.5", "VOI best (threshold)", "ARAND best"],
                     [[row["model"], row["test"], num(row["at_0.5"]["voi"]),
                       f"{num(row['best']['voi'])} ({num(row['best']['threshold'])})", num(row["best"]["arand"])]
                      for row in re["shipped"] if "skipped" not in row])
    if re.get("fibsem"):
        out += ["", "3D FIB-SEM recipe (gala train -> gala test and gala test with other grey values):", ""]
        out += table(["model", "test", "VOI @0.5", "VOI best (threshold)", "waterz best VOI"],
                     [[row["model"], row["test"], num(row["at_0.5"]["voi"]),
                       f"{num(row['best']['voi'])} ({num(row['best']['threshold'])})", num(row["waterz_best"]["voi"])]
                      for row in re["fibsem"] if "skipped" not in row])
    if re.get("pipeline"):
        out += ["", "The whole workflow (`config/examples`, training off; the default threshold 0.5 for the left-out models, which "
                "never saw the dataset; the example's 0.7 for the shipped model, which saw its training sections):", ""]
        out += table(["run", "ran to the end", "minutes", "VOI (split / merge) per dataset"],
                     [[row["run"], num(row.get("completed")), num(row.get("seconds", float("nan")) / 60, 1),
                       "; ".join(f"{k}: {num(v.get('segmentation.voi'))} ({num(v.get('segmentation.voi_split'))} / "
                                 f"{num(v.get('segmentation.voi_merge'))})"
                                 for k, v in row.items() if isinstance(v, dict) and k != "overrides")]
                      for row in re["pipeline"] if "skipped" not in row])
    return out


def end_to_end(r: dict) -> list[str]:
    rows = r["like_to_like_stages"]["rows"]
    seeds = sorted({row["seed"] for row in rows})
    out = ["## coregister, analysis: end to end on many phantoms", "",
           source("like_to_like_stages") + f" The workflow on config.yaml for phantom seeds {seeds} (the demo is "
           f"seed {DEMO_SEED}), then again from the same EM and maps with the ground-truth "
           "segmentation, every later stage recomputed. Median (range) over the seeds; counts summed.", ""]
    body = []
    for seg in dict.fromkeys(row["segmentation"] for row in rows):
        ms = [row["metrics"] for row in rows if row["segmentation"] == seg]

        def col(key):
            return [float(m[key]) for m in ms]

        def total(key):
            return sum(int(m[key]) for m in ms)
        body.append([seg, len(ms), span(col("segmentation.voi")), span(col("skeletons.erl_nm"), 0),
                     span(col("synapses.f1")), span(col("synapses.partner_accuracy")),
                     total("coregister.n_neurons_identified"), span(col("coregister.accuracy")),
                     span(col("celltypes.accuracy")),
                     f"{total('connectome.n_true_edges')} / {total('connectome.n_pred_edges')} / "
                     f"{total('connectome.n_gt_edges')}",
                     f"{int(min(col('like_to_like.n_connected_pairs')))}-"
                     f"{int(max(col('like_to_like.n_connected_pairs')))}",
                     f"{total('like_to_like.within_gt_ci')} / {total('like_to_like.relative_within_gt_ci')}"])
    out += table(["segmentation", "phantoms", "VOI", "ERL nm", "synapse F1", "partner accuracy",
                  "neurons identified", "ROI matches right", "cell types right", "edges true / found / GT",
                  "like-to-like connected pairs", "slope / relative slope in GT CI"], body)
    demo = [row for row in rows if row["seed"] == DEMO_SEED]
    out += ["", "The demo's like-to-like slope [95 % CI] (same file):", ""]
    out += table(["segmentation", "connected pairs (GT)", "slope", "GT slope"],
                 [[row["segmentation"], f"{row['metrics']['like_to_like.n_connected_pairs']} "
                   f"({row['metrics']['like_to_like.gt_n_connected_pairs']})",
                   *(f"{num(m[p + 'slope'], 3)} [{num(m[p + 'ci_low'], 3)}, {num(m[p + 'ci_high'], 3)}]"
                     for m in [row["metrics"]] for p in ("like_to_like.", "like_to_like.gt_"))] for row in demo])
    return out


def planning(r: dict) -> list[str]:
    ps = r["plan_scale"]
    meta = ps["meta"]
    out = ["## planning: `snakemake -n` at scale", "",
           source("plan_scale") + f" Snakemake {meta['snakemake']}, {meta['cpu_count']} CPU cores, {meta['date']}; "
           f"goal: {ps['goal']['seconds']:g} s for {ps['goal']['blocks']} blocks.", ""]
    out += table(["blocks", "mode", "jobs", "wall s", "CPU s", "peak RSS MB", "status"],
                 [[row["blocks"], row["mode"], row.get("jobs", "-"), num(row["wall_s"], 1), num(row.get("cpu_s"), 1),
                   num(row.get("peak_rss_mb"), 0), row["status"]] for row in ps["rows"]])
    return out


def bad_inputs(r: dict) -> list[str]:
    bi = r["bad_inputs"]
    out = ["## bad inputs: clear errors, nothing half-written", "",
           source("bad_inputs") + f" {bi['summary']['passed']} of {bi['summary']['cases']} cases pass: the command "
           "fails with an error of at most 5 lines naming the problem, leaves nothing a rerun would trust, and works "
           "once the input is fixed; the two workflow cases (exit 0) must work as they are.", ""]
    out += table(["case", "exit", "names it", "clean", "rerun works", "passed"],
                 [[row["case"], row["exit_code"], num(row["names_the_problem"]), num(row["nothing_half_written"]),
                   num(row["rerun_after_fix_works"]), num(row["passed"])] for row in bi["rows"]])
    return out


def continuity(r: dict) -> list[str]:
    c, fb = r["continuity"], r["fragment_bound"]
    cols = ["voi_split", "voi_merge", "voi", "erl_nm", "z_edge_f1", "in_plane_edge_f1", "neuron_edge_f1",
            "connected_pairs"]
    out = ["## continuity: do neurons stay whole? (issue 28)", "",
           source("continuity") + " Each variant (U-Net checkpoint, segment settings) end to end on the demo and "
           "fresh phantoms; edge F1: the agglomeration's same-object decisions on region-graph edges between "
           "sections (z) and within them. Goal: ERL >= 1000 nm, VOI <= 1.5, neuron edge F1 >= 0.4, >= 10 "
           "connected pairs.", ""]
    rows = [[x["model"], x["seed"], *(num(x[k], 0 if k == "erl_nm" else 2) for k in cols)]
            for x in c["rows"] + c["summary"]]
    out += table(["variant", "seed", *cols], rows)
    if c.get("oracles"):
        out += ["", "Oracles on the first variant's fragments and region graph (ground truth decides):", ""]
        out += table(["oracle", "seed", "VOI split", "VOI merge", "VOI", "ERL (nm)"],
                     [[o["model"], o["seed"], num(o["voi_split"]), num(o["voi_merge"]), num(o["voi"]),
                       num(o["erl_nm"], 0)] for o in c["oracles"]])
    out += ["", source("fragment_bound") + " The fragments' bound (each fragment given its majority object) for "
            f"other fragment settings on `{fb['dataset']}`'s affinities: a perfect agglomeration's ceiling.", ""]
    out += table(["fragments", "count", "VOI", "ERL (nm)", "mergers"],
                 [[x["variant"], x["fragments"], num(x["voi"]), num(x["erl_nm"], 0), x["mergers"]]
                  for x in fb["rows"]])
    return out


def label_efficiency(r: dict) -> list[str]:
    if "label_efficiency" not in r:
        return []
    le = r["label_efficiency"]
    s = le["setup"]
    out = ["## pretraining on unlabeled raw: label efficiency (issue 29)", "",
           source("label_efficiency") + f" gala's 3D model trained on {100 * s['label_fraction']:.0f} % of gala "
           f"train's labels (sub-block {s['label_block']}) for {s['finetune_iterations']} iterations, from scratch "
           f"or from a checkpoint pretrained by masked reconstruction on gala train's raw "
           f"({s['pretrain_iterations']} iterations); scored on gala test (3D).", ""]
    out += table(["arm", "recipe", "seed", "VOI @0.5", "VOI best (t)", "ARAND best"],
                 [[x["arm"], x["recipe"] or "-", x["seed"], num(x["voi_0.5"], 3),
                   f"{num(x['voi_best'], 3)} ({num(x['best_threshold'])})", num(x["arand_best"], 3)]
                  for x in le["runs"]])
    return out


def align(r: dict) -> list[str]:
    a = r.get("align")
    if a is None:
        return []
    ph = a["phantom"]
    out = ["## align: serial-section alignment", "",
           source("align") + " Residual misalignment against the true transforms (the stack's translation removed); "
           "neighbour: the difference of adjacent sections' residuals at one point.", ""]
    rows = [["phantom (nm)", tuple(ph["shape"]), num(ph["residual_before_median_nm"], 1),
             num(ph["residual_before_p95_nm"], 1), num(ph["residual_median_nm"], 1), num(ph["residual_p95_nm"], 1),
             num(ph["neighbour_residual_median_nm"], 1), num(ph["neighbour_residual_p95_nm"], 1)]]
    for name, real in a["real"].items():
        if "skipped" not in real:
            rows.append([f"{name} (px)", tuple(real["shape"]), num(real["residual_before_median_px"]),
                         num(real["residual_before_p95_px"]), num(real["residual_median_px"]),
                         num(real["residual_p95_px"]), num(real["neighbour_residual_median_px"]),
                         num(real["neighbour_residual_p95_px"])])
    out += table(["data", "shape (z, y, x)", "median before", "p95 before", "median after", "p95 after",
                  "neighbour median", "neighbour p95"], rows)
    out += ["", "Throughput (estimate + render, one thread):", ""]
    out += table(["shape (z, y, x)", "Mvoxel", "estimate Mvoxel/s", "render Mvoxel/s"],
                 [[tuple(t["shape"]), num(t["mvoxels"]), num(t["estimate_mvoxel_per_s"], 3),
                   num(t["render_mvoxel_per_s"])] for t in a["throughput"]])
    return out


SECTIONS = [phantom, align, predict, real_em, label_efficiency, segment, continuity, skeletonize, mesh,
            synapses, end_to_end, planning, bad_inputs]


def render(results: Path = RESULTS) -> str:
    """docs/results.md from the JSONs in `results`."""
    r = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    lines = ["# Measured results", "",
             "<!-- Generated by benchmarks/results_doc.py from benchmarks/results/*.json; do not edit. -->",
             "Every number below is read from a JSON in `benchmarks/results/`, named above its table. Regenerate "
             "this page with `make results-doc` (`python benchmarks/results_doc.py`); `python benchmarks/run.py "
             "NAME` reruns a benchmark (`make bench`: all) and then regenerates it. VOI in bits (lower is "
             "better); P / R / F1: precision / recall / F1. Your own run's metrics are in "
             "`results/{dataset}/eval/metrics.json` (`python -m connectomix.summary results` prints them)."]
    for section in SECTIONS:
        lines += ["", *section(r)]
    lines += ["", "export and evaluate have no benchmark JSON yet (their tests check them)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) docs/results.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of benchmark JSONs")
    p.add_argument("--out", type=Path, default=OUT, help="page to write")
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from the JSONs' page")
    args = p.parse_args(argv)
    text = render(args.results)
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'stale: run make results-doc'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
