"""``connectomix analysis``: cell types, tuning, like-to-like, connectivity tables, figures and a report summary."""

from __future__ import annotations

import html
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix import config

FIGURES = ("like_to_like_signal_corr", "like_to_like_orientation", "connection_vs_distance",
           "celltype_connectivity", "tuning", "coregistration")
TABLES = ("cell_types", "tuning", "pairs", "like_to_like", "celltype_connectivity", "connection_vs_distance")

def versions() -> dict:
    """Versions of connectomix, Python and the libraries the analyses use."""
    import importlib.metadata as md

    from connectomix import provenance

    out = {"connectomix": provenance.version(), "python": platform.python_version()}
    for name in ("numpy", "scipy", "pandas", "pyarrow", "pulp", "matplotlib", "snakemake"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--neurons", required=True, help="neurons.parquet (id, soma_*_nm, morphology features)")
    parser.add_argument("--edges", required=True, help="edges.parquet (pre, post, n_synapses)")
    parser.add_argument("--morphology", default=None, help="morphology.parquet (optional extra features)")
    parser.add_argument("--matches", required=True, help="matches.parquet from coregister")
    parser.add_argument("--transform", required=True, help="coregister transform JSON (for the figure)")
    parser.add_argument("--rois", required=True, help="ROI table (.parquet/.csv)")
    parser.add_argument("--responses", required=True, help="responses .npy (roi, stimulus, trial)")
    parser.add_argument("--stimuli", required=True, help="stimulus table (.parquet/.csv)")
    parser.add_argument("--params", default="{}", help="JSON: the config's analysis section")
    parser.add_argument("--config-json", default="{}", help="JSON: the whole config, recorded in the summary")
    parser.add_argument("--out-dir", required=True, help="folder for tables, figures and summaries")


def run(args) -> int:
    from connectomix import provenance
    from connectomix.analysis import celltypes, figures, like_to_like, tuning
    from connectomix.blocks import atomic_write_json, atomic_write_parquet
    from connectomix.coregister import apply_affine, load_functional, neuron_rows, read_table

    params = config.resolve("analysis", json.loads(args.params))
    seed = params["seed"]
    out = Path(args.out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    rois, responses, stimuli = load_functional(args.rois, args.responses, args.stimuli)
    neurons = neuron_rows(read_table(args.neurons))
    edges = read_table(args.edges)
    morphology = read_table(args.morphology) if args.morphology and Path(args.morphology).exists() else None
    matches = read_table(args.matches)
    transform = json.loads(Path(args.transform).read_text())

    ct_params = {**params["celltypes"], "seed": seed}
    if not ct_params.get("size_features"):
        ct_params["size_features"] = list(celltypes.SIZE_FEATURES)
    types = celltypes.classify(neurons, morphology, edges, ct_params)
    tun = tuning.tuning_table(rois, responses, stimuli, params["tuning"]["split_half_repeats"], seed)
    ltl = params["like_to_like"]
    units = like_to_like.unit_table(matches, tun, neurons, ltl["min_confidence"], ltl["min_reliability"])
    by_roi = {int(r): responses[i] for i, r in enumerate(rois["roi_id"])}
    if len(units) >= 3:
        summary, binned, pairs = like_to_like.run_like_to_like(units, by_roi, edges, ltl, seed)
    else:  # too few functionally matched neurons: report that instead of failing the whole workflow
        print(f"analysis: only {len(units)} functionally matched neurons (< 3): like-to-like not computed")
        nan = {"slope": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
        summary, binned, pairs = {"connection_vs_signal_corr": nan}, pd.DataFrame(), pd.DataFrame()
    ct_conn = like_to_like.celltype_connectivity(types, edges, ltl["min_synapses"])
    dist_conn = like_to_like.connectivity_vs_distance(neurons, edges, params["distance_bin_um"], ltl["min_synapses"])

    tun_out = tun.merge(matches[["roi_id", "neuron_id"]], on="roi_id", how="left")
    for name, table in zip(TABLES, (types, tun_out, pairs, binned, ct_conn, dist_conn)):
        atomic_write_parquet(table, out / f"{name}.parquet")

    for x in ("signal_corr", "ori_diff"):
        path = out / "figures" / f"like_to_like_{FIGURE_NAMES[x]}.png"
        if len(binned):
            figures.like_to_like(binned, summary, x, path)
        else:
            figures.not_computed(path, f"{len(units)} functionally matched neurons (< 3)")
    figures.connection_vs_distance(dist_conn, out / "figures" / "connection_vs_distance.png")
    figures.celltype_matrix(ct_conn, out / "figures" / "celltype_connectivity.png")
    figures.tuning_summary(units if len(units) else tun, out / "figures" / "tuning.png")
    ids = neurons["id"].to_numpy(np.uint64)
    mapped = apply_affine(np.array(transform["matrix"]), neurons[["soma_x_nm", "soma_y_nm", "soma_z_nm"]].to_numpy(float))
    figures.coregistration(rois, mapped, matches, ids, out / "figures" / "coregistration.png")

    headline = summary["connection_vs_signal_corr"]
    result = {
        "slope": headline["slope"], "ci_low": headline["ci_low"], "ci_high": headline["ci_high"],
        "analyses": summary,
        "n_units": len(units),
        "cell_type_counts": types["cell_type"].value_counts().to_dict(),
        "provenance": provenance.record(params, {
            p: provenance.file_checksum(p) for p in (args.neurons, args.edges, args.matches, args.responses)}),
    }
    atomic_write_json(out / "like_to_like.json", result)
    _write_summary_html(out / "summary.html", result, transform, json.loads(args.config_json), params)
    print(f"analysis: {len(units)} matched neurons; like-to-like slope {headline['slope']:.4g} "
          f"[{headline['ci_low']:.4g}, {headline['ci_high']:.4g}]")
    return 0


FIGURE_NAMES = {"signal_corr": "signal_corr", "ori_diff": "orientation"}


def _write_summary_html(path: Path, result: dict, transform: dict, config: dict, params: dict) -> None:
    """A small self-contained HTML page for the Snakemake report: key numbers, config and versions."""
    rows = [("co-registration", f"{transform.get('n_matched')}/{transform.get('n_rois')} ROIs matched "
                                f"({transform.get('method')}, residual sigma {transform.get('sigma_um', float('nan')):.3g} µm)"),
            ("cell types", ", ".join(f"{k}: {v}" for k, v in result["cell_type_counts"].items())),
            ("functionally matched neurons", str(result["n_units"]))]
    for key, res in result["analyses"].items():
        if isinstance(res, dict) and "null_mean" in res:
            rows.append((key, f"slope {res['slope']:.4g} [95 % CI {res['ci_low']:.4g}, {res['ci_high']:.4g}]; "
                              f"relative {res['relative_slope']:.4g} [{res['relative_ci_low']:.4g}, "
                              f"{res['relative_ci_high']:.4g}]; "
                              f"shuffle null {res['null_mean']:.3g} ± {res['null_sd']:.3g}, p = {res['p_value']:.3g}; "
                              f"n = {res['n_neurons']} neurons / {res['n_pairs']} pairs"))
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    body = (
        "<html><head><meta charset='utf-8'><title>connectomix analysis summary</title></head><body>"
        f"<h2>Analysis summary</h2><table border='1' cellpadding='4'>{table}</table>"
        f"<h3>Versions</h3><pre>{html.escape(json.dumps(versions(), indent=1))}</pre>"
        f"<h3>Analysis parameters</h3><pre>{html.escape(json.dumps(params, indent=1, default=str))}</pre>"
        f"<h3>Configuration</h3><pre>{html.escape(json.dumps(config, indent=1, default=str))}</pre>"
        "</body></html>\n"
    )
    path.write_text(body)
