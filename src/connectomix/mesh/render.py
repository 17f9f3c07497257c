"""A figure of a few neurons' meshes with their synapses (the report's mesh views), rendered with matplotlib.

Each panel: one neuron's mesh (the largest neurons with a soma first; simplified further for drawing), its output
synapses (presynaptic points, red) and input synapses (postsynaptic points, blue), x and y in µm, seen obliquely.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from connectomix.mesh.precomputed import read_fragment

MAX_FACES = 6000  # per panel: matplotlib draws every polygon
COLOURS = (2, 4, 1, 8, 6, 5, 9, 7)  # tab10 without its red and blue (the synapses' colours)


def _for_drawing(vertices, faces):
    if len(faces) <= MAX_FACES:
        return vertices, faces
    import zmesh

    m = zmesh.simplify_fqmr(zmesh.Mesh(vertices, faces, None), target_count=MAX_FACES)
    return m.vertices, m.faces


def chosen_neurons(mesh_dir, neurons: pd.DataFrame, count: int) -> list[int]:
    """The ``count`` neurons with a mesh to draw: neurons with a soma first, then the largest meshes."""
    sizes = {int(p.name.split(":")[0]): p.stat().st_size for p in Path(mesh_dir).glob("*:0:0")}
    soma = set(neurons.loc[neurons.get("soma_x_nm", pd.Series(dtype=float)).notna(), "id"].astype(int)) \
        if len(neurons) else set()
    return sorted(sizes, key=lambda k: (k not in soma, -sizes[k]))[:count]


def render(mesh_dir, synapses: pd.DataFrame, neurons: pd.DataFrame, out, count: int = 4) -> list[int]:
    """Write the figure ``out`` (PNG or SVG by suffix); returns the neurons drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    chosen = chosen_neurons(mesh_dir, neurons, count)
    cols = max(1, min(len(chosen), 2))
    rows = max(1, -(-len(chosen) // cols))
    fig = plt.figure(figsize=(5 * cols, 4.5 * rows), dpi=110)
    for i, label in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        v, f = _for_drawing(*read_fragment((Path(mesh_dir) / f"{label}:0:0").read_bytes()))
        um = v / 1000.0
        colour = plt.cm.tab10(COLOURS[i % len(COLOURS)])
        ax.add_collection3d(Poly3DCollection(um[f], facecolor=colour, edgecolor="none", alpha=0.35))
        n = {}
        for side, colour in (("pre", "tab:red"), ("post", "tab:blue")):
            rows_ = synapses[synapses[f"{side}_pt_root_id"].astype("uint64") == np.uint64(label)] \
                if len(synapses) else synapses
            n[side] = len(rows_)
            if len(rows_):
                p = np.asarray([list(x) for x in rows_[f"{side}_pt_position"]], float) / 1000.0
                ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=30, c=colour, edgecolors="black", depthshade=False)
        lo, hi = um.min(axis=0), um.max(axis=0)
        half = (hi - lo).max() / 2
        for axis, c in zip("xyz", (lo + hi) / 2):
            getattr(ax, f"set_{axis}lim")(c - half, c + half)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        ax.set_zlabel("z (µm)")
        ax.view_init(elev=25, azim=-60)
        ax.set_title(f"segment {label}: {n['pre']} output (red), {n['post']} input (blue) synapses", fontsize=8)
    if not chosen:
        fig.text(0.5, 0.5, "no meshes", ha="center")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return chosen
