"""Which datasets each stage's rules apply to, their ground truth, and the targets of the default rule (`all`)
and of `metrics` (every eval/{stage}.json of a dataset)."""

from __future__ import annotations

from connectomix.workflow.args import file_args, segmentation_gt_args

FUNCTIONAL_PARTS = ("rois", "responses", "stimuli")

# The metric files eval/{stage}.json, in pipeline order, with the group of datasets (dataset_groups) they exist for.
EVALUATIONS = (
    ("align", "align_eval"),
    ("segmentation", "segment_eval"),
    ("skeletons", "phantom"),
    ("synapses", "phantom"),
    ("clefts", "cleft_eval"),
    ("connectome", "phantom"),
    ("coregister", "functional_phantom"),
    ("celltypes", "functional_phantom"),
    ("like_to_like", "functional_phantom"),
)


def functional_files(wf) -> dict:
    """{dataset: {"rois", "responses", "stimuli": path}} of the datasets with functional data: configured under
    coregister.functional (three tables, or one NWB file passed as all three), else the phantom's gt/functional/."""
    configured = wf.cfg["coregister"]["functional"]
    files = {}
    for name in wf.datasets:
        if name in configured or wf.is_phantom(name):
            entry = configured.get(name, {})
            files[name] = ({part: entry["nwb"] for part in FUNCTIONAL_PARTS} if "nwb" in entry else entry) or {
                part: wf.paths.gt(f"functional/{part}.{'npy' if part == 'responses' else 'parquet'}", name)
                for part in FUNCTIONAL_PARTS
            }
    return files


def functional_inputs(wf, name: str) -> list[str]:
    """What a job on functional data waits for: the configured files, or the phantom's summary (written after its
    gt/functional/ files)."""
    configured = wf.cfg["coregister"]["functional"]
    return sorted(set(configured[name].values())) if name in configured else [wf.raw_done(name)]


def annotation_inputs(wf, name: str, groups: dict | None = None) -> dict:
    """The optional inputs of a dataset's annotation layers (export_annotations): the two-photon matches, cell
    types and tuning of a functional dataset; none for the others."""
    groups = dataset_groups(wf) if groups is None else groups
    if name not in groups["functional"]:
        return {}
    p = wf.paths
    return {"matches": p.table("matches", name), "cell_types": p.file("analysis/cell_types.parquet", name),
            "tuning": p.file("analysis/tuning.parquet", name)}


def cleft_gt(wf) -> dict:
    """Real datasets with cleft masks (synapses.evaluation.ground_truth): their clefts are scored against them."""
    return {name: gt for name, gt in wf.cfg["synapses"]["evaluation"]["ground_truth"].items()
            if name in wf.datasets and not wf.is_phantom(name)}


def dataset_groups(wf) -> dict[str, list[str]]:
    """The datasets each group of rules applies to: phantom, source (ingested), functional (coregister, analysis),
    functional_phantom (their evaluation), segment_eval (phantoms, and datasets listed in
    segment.evaluation.ground_truth), cleft_eval (real datasets with cleft masks)."""
    phantoms = wf.phantoms()
    functional = list(functional_files(wf))
    segment_gt = wf.cfg["segment"]["evaluation"]["ground_truth"]
    return {
        "phantom": phantoms,
        "source": [name for name in wf.datasets if name not in phantoms],
        "functional": functional,
        "functional_phantom": [name for name in functional if wf.is_phantom(name)],
        "segment_eval": [name for name in wf.datasets if wf.is_phantom(name) or name in segment_gt],
        "cleft_eval": list(cleft_gt(wf)),
        "align_eval": [name for name in phantoms if wf.cfg["align"]["enabled"] and _misaligned(wf, name)],
    }


def _misaligned(wf, name: str) -> bool:
    """Whether a phantom dataset has misalignment or defects (and so the truth eval/align.json needs)."""
    from connectomix.phantom import PhantomParams
    from connectomix.phantom.defects import active

    return active(PhantomParams.from_dict(wf.dataset(name)["phantom"]))


def segmentation_gt(wf, name: str) -> tuple[list[str], str]:
    """(input files, CLI arguments) of a dataset's segmentation ground truth: the phantom's gt/labels, else its
    entry in segment.evaluation.ground_truth."""
    if wf.is_phantom(name):
        return [wf.paths.phantom_summary(name)], segmentation_gt_args(None, None)
    gt = wf.cfg["segment"]["evaluation"]["ground_truth"][name]
    return [gt["path"]], segmentation_gt_args(gt, wf.dataset(name).get("roi"))


def clefts_gt(wf, name: str) -> tuple[list[str], str]:
    """(input files, CLI arguments) of a real dataset's cleft masks (synapses.evaluation.ground_truth)."""
    gt = cleft_gt(wf)[name]
    return [gt["path"]], file_args(gt, roi=wf.dataset(name).get("roi"))


def eval_targets(wf, name: str, groups: dict | None = None) -> list[str]:
    """Every metric file eval/{stage}.json of a dataset (merged into eval/metrics.json)."""
    groups = dataset_groups(wf) if groups is None else groups
    return [wf.paths.eval(stage, name) for stage, group in EVALUATIONS if name in groups[group]]


def final_targets(wf, name: str, groups: dict | None = None) -> list[str]:
    """What the default rule (`all`) asks for a dataset, stage by stage in pipeline order."""
    groups = dataset_groups(wf) if groups is None else groups
    p = wf.paths
    targets = [
        wf.raw_done(name),  # phantom or ingest
        *([p.summary("align", name)] if wf.cfg["align"]["enabled"] else []),
        p.summary("predict", name),
        p.summary("segment", name), p.table("segments", name),
        p.table("skeletons", name), p.table("morphology", name), p.file("mesh/summary.json", name),
        p.table("synapses", name),
        p.table("neurons", name), p.table("edges", name), p.file("export/export.json", name),
        p.file("mesh/neurons.png", name),
    ]
    if name in groups["functional"]:
        targets += [p.table("matches", name), p.file("analysis/like_to_like.json", name),
                    p.file("analysis/summary.html", name)]
    evals = eval_targets(wf, name, groups)
    targets += evals + ([p.metrics(name)] if evals else [])
    return targets + [p.file("neuroglancer.json", name), p.file("skeletons/export.json", name),
                      p.file("precomputed/annotations.json", name)]
