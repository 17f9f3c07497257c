"""Dense neuropil geometry: neurons (soma, tapering branching dendrites, thin branching axon with collaterals
ending in boutons on other neurons), passing axons (single and in parallel bundles, at all angles to the
sections), glial pieces filling the rest, and thin extracellular gaps.

Objects are unions of tapered capsules painted into a score volume (distance to the axis over the radius, times a
priority weight; the smallest score wins, so painting order does not matter). A section shows everything within
its slab, so thin oblique processes stay 6-connected. Neurons are painted first and locked: passing axons wrap
around them. Every label is made 6-connected at the end (stray pieces join their neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import edt
import numpy as np
from scipy import ndimage

# compartment codes in the `kind` volume
SOMA, DENDRITE, AXON, FILLER, GLIA = 1, 2, 3, 4, 5


@dataclass
class Neuron:
    id: int
    cell_class: str
    soma: np.ndarray  # nm (z, y, x)
    soma_radius: float
    paths: list = field(default_factory=list)  # (points (n,3) nm, radii (n,), kind)


@dataclass
class Tissue:
    labels: np.ndarray  # uint64 (z, y, x), 0 = extracellular space
    kind: np.ndarray  # uint8 compartment codes
    neurons: list[Neuron]
    objects: dict  # id -> {"kind": str, "radius": float}
    segments: list  # (label, p0, p1, r0, r1, kind) capsules, for mitochondria placement


class Painter:
    """Paints tapered capsules into a label volume (nm coordinates, anisotropic voxels)."""

    def __init__(self, shape, voxel_size):
        self.shape = tuple(shape)
        self.voxel = np.asarray(voxel_size, dtype=np.float64)
        self.score = np.full(self.shape, np.inf, dtype=np.float32)
        self.labels = np.zeros(self.shape, dtype=np.uint32)
        self.kind = np.zeros(self.shape, dtype=np.uint8)
        self.segments: list = []
        self.locked: np.ndarray | None = None  # voxels no later capsule may take (the neurons)

    def capsule(self, p0, p1, r0, r1, label, kind, weight=1.0):
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        rmax = max(r0, r1)
        lo = np.floor((np.minimum(p0, p1) - rmax) / self.voxel).astype(int)
        hi = np.ceil((np.maximum(p0, p1) + rmax) / self.voxel).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return
        self.segments.append((label, p0, p1, r0, r1, kind))
        z, y, x = (np.arange(a, b) * v for a, b, v in zip(lo, hi, self.voxel))
        z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
        d = p1 - p0
        length2 = float(d @ d)
        if length2 > 0:
            t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / length2
            t = np.clip(t, 0.0, 1.0)
        else:
            t = np.zeros((1, 1, 1))
        # a section shows everything in its slab: z offsets count only beyond half the section thickness,
        # so thin oblique processes stay 6-connected from section to section
        dz = np.maximum(np.abs(z - p0[0] - t * d[0]) - self.voxel[0] / 2, 0.0)
        dist2 = dz**2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2
        radius = r0 + t * (r1 - r0)
        norm = np.sqrt(dist2) / radius  # < 1 inside the capsule
        s = (norm * weight).astype(np.float32)  # weight < 1: wins more crossings, same extent
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = (norm < 1.0) & (s < self.score[box])
        if self.locked is not None:
            win &= ~self.locked[box]
        if win.any():
            self.score[box][win] = s[win]
            self.labels[box][win] = label
            self.kind[box][win] = kind

    def path(self, points, radii, label, kind, weight=1.0):
        """Consecutive capsules along a polyline; segments entirely outside the volume are skipped."""
        points = np.asarray(points, float)
        reach = np.maximum(radii[:-1], radii[1:])[:, None]
        lo = np.minimum(points[:-1], points[1:]) - reach
        hi = np.maximum(points[:-1], points[1:]) + reach
        extent = np.array(self.shape) * self.voxel
        for i in np.flatnonzero(np.all((hi >= 0) & (lo < extent), axis=1)):
            self.capsule(points[i], points[i + 1], radii[i], radii[i + 1], label, kind, weight)


def inplane_border(labels: np.ndarray) -> np.ndarray:
    """Voxels whose in-plane (y or x) neighbour has another label, on both sides of each border."""
    border = np.zeros(labels.shape, dtype=bool)
    for axis in (1, 2):
        a = np.swapaxes(labels, 0, axis)
        b = np.swapaxes(border, 0, axis)
        diff = a[1:] != a[:-1]
        b[1:] |= diff
        b[:-1] |= diff
    return border


def _unit(v):
    return v / np.linalg.norm(v)


def _random_walk(rng, start, direction, length, step, wiggle, flatten):
    """Points of a persistent random walk (nm). ``flatten`` damps the z component (neurites prefer the plane)."""
    n = max(2, int(length / step) + 1)
    points = [np.asarray(start, float)]
    d = _unit(np.asarray(direction, float))
    for _ in range(n - 1):
        d = _unit(d + rng.normal(0, wiggle, 3) * np.array([flatten, 1, 1]))
        points.append(points[-1] + d * step)
    return np.array(points)


def _random_direction(rng, z_scale=0.6):
    return _unit(rng.normal(size=3) * np.array([z_scale, 1, 1]))


def _tree(rng, start, direction, length, r_start, r_end, branch_prob, depth, step=60.0, wiggle=0.25):
    """A branching process: list of (points, radii). Children start at a random point of the parent."""
    points = _random_walk(rng, start, direction, length, step, wiggle, flatten=0.7)
    radii = np.linspace(r_start, r_end, len(points))
    out = [(points, radii)]
    if depth > 0:
        for i in range(2, len(points) - 2):
            if rng.random() < branch_prob:
                parent_dir = _unit(points[i + 1] - points[i])
                child_dir = _unit(parent_dir + rng.normal(0, 0.9, 3) * np.array([0.6, 1, 1]))
                child_len = length * (1 - i / len(points)) * rng.uniform(0.5, 0.9)
                if child_len > 3 * step:
                    out += _tree(rng, points[i], child_dir, child_len, max(radii[i] * 0.75, r_end), r_end,
                                 branch_prob * 0.6, depth - 1, step, wiggle)
    return out


def _place_somata(rng, params, extent, voxel):
    """Soma centres (nm) inside the volume, not overlapping; radius per class."""
    n = params.n_neurons
    classes = np.array(["excitatory"] * n, dtype=object)
    n_inh = int(round(params.inhibitory_fraction * n))
    classes[rng.choice(n, n_inh, replace=False)] = "inhibitory"
    radii = np.where(classes == "inhibitory", 0.7, 1.0) * params.soma_radius_nm * rng.uniform(0.85, 1.15, n)
    centres = []
    for r in radii:
        margin = np.array([max(r * 0.6, voxel[0]), r + 2 * voxel[1], r + 2 * voxel[2]])
        for _attempt in range(5000):
            c = margin + rng.random(3) * (extent - 2 * margin)
            if all(np.linalg.norm(c - o) > (r + ro) * 1.1 for o, ro in centres):
                centres.append((c, r))
                break
        else:
            raise ValueError(
                f"phantom: cannot place {n} non-overlapping somata of radius ~{params.soma_radius_nm} nm in a "
                f"{extent.round().tolist()} nm volume; lower n_neurons or soma_radius_nm, or grow shape"
            )
    return [(classes[i], centres[i][0], centres[i][1]) for i in range(n)]


def check_somata_fit(params, voxel_size) -> None:
    """Raise the generator's own ValueError when ``params`` cannot place its somata (the same draws as
    ``connectomix.phantom.generate``, whose first random numbers place them), before any job runs."""
    voxel = np.asarray(voxel_size, float)
    _place_somata(np.random.default_rng(params.seed), params, np.array(params.shape) * voxel, voxel)


def build(params, voxel_size, rng) -> Tissue:
    """Generate the dense labelled geometry (no rendering)."""
    voxel = np.asarray(voxel_size, float)
    shape = tuple(params.shape)
    extent = np.array(shape) * voxel
    painter = Painter(shape, voxel)
    neurons: list[Neuron] = []
    objects: dict = {}

    somata = _place_somata(rng, params, extent, voxel)
    for i, (_cell_class, centre, radius) in enumerate(somata, start=1):
        painter.capsule(centre, centre, radius, radius, i, SOMA, weight=0.6)
    painter.locked = painter.labels > 0  # neurites wrap around somata, never through them
    for i, (cell_class, centre, radius) in enumerate(somata, start=1):
        neuron = Neuron(i, cell_class, centre, radius)
        objects[i] = {"kind": "neuron", "radius": radius}
        exc = cell_class == "excitatory"
        n_dend = rng.integers(4, 7) if exc else rng.integers(2, 4)
        r_dend = params.dendrite_radius_nm * (1.0 if exc else 0.7)
        for _ in range(n_dend):
            direction = _random_direction(rng)
            start = centre + direction * radius * 0.8
            length = params.dendrite_length_nm * rng.uniform(0.6, 1.2) * (1.0 if exc else 0.75)
            for points, radii in _tree(rng, start, direction, length, r_dend, r_dend * 0.5,
                                       0.08 if exc else 0.05, depth=2):
                painter.path(points, radii, i, DENDRITE, weight=0.7)
                neuron.paths.append((points, radii, "dendrite"))
        # axon: excitatory long and sparsely branched; inhibitory shorter, local and bushy
        direction = _random_direction(rng)
        start = centre + direction * radius * 0.8
        length = params.axon_length_nm * (1.0 if exc else 0.6)
        r_axon = params.axon_radius_nm * rng.uniform(0.9, 1.3)
        for points, radii in _tree(rng, start, direction, length, r_axon * 1.3, r_axon,
                                   0.1 if exc else 0.24, depth=3, step=80.0, wiggle=0.38 if exc else 0.57):
            painter.path(points, radii, i, AXON, weight=0.5)  # thin: wins crossings
            neuron.paths.append((points, radii, "axon"))
        neurons.append(neuron)

    _add_collaterals(rng, params, painter, neurons, extent)
    next_id = params.n_neurons + 1
    painter.locked = painter.labels > 0  # passing axons wrap around the neurons, never cut them
    next_id = _add_fillers(rng, params, painter, extent, objects, next_id)
    labels = painter.labels
    kind = painter.kind
    next_id = _add_glia(rng, labels, kind, objects, next_id, voxel)
    _fill_nearest(labels, kind, labels == 0, voxel)
    _make_connected(labels, kind, voxel)
    _carve_extracellular_space(rng, params, labels, kind, objects, voxel)
    _make_connected(labels, kind, voxel, keep_zero=True)
    return Tissue(labels.astype(np.uint64), kind, neurons, objects, painter.segments)


def _add_collaterals(rng, params, painter, neurons, extent, per_synapse=5, reach_nm=1600.0):
    """Axon collaterals ending in a bouton on another neuron's dendrite or soma.

    Targets are random (blind to tuning), about ``per_synapse`` contacts per requested neuron-to-neuron synapse,
    spread evenly over ordered neuron pairs, so the like-to-like rule acts only when contacts become synapses.
    """
    if len(neurons) < 2 or params.n_synapses == 0:
        return

    def inside(points):
        return points[np.all((points[:, :3] >= 0) & (points[:, :3] < extent), axis=1)]

    axons = [inside(np.concatenate([p for p, _, k in n.paths if k == "axon"])) for n in neurons]
    targets = []
    for n in neurons:
        dend = [np.column_stack([p, r]) for p, r, k in n.paths if k == "dendrite"]
        dend = inside(np.concatenate(dend)) if dend else np.zeros((0, 4))
        soma = np.concatenate([n.soma, [n.soma_radius]])[None]
        targets.append(np.concatenate([dend[:, :4], soma]) if len(dend) else soma)
    # every ordered pair gets its turn (shuffled, cyclic): contacts spread evenly over pairs, blind to tuning
    pairs = np.array([(a, b) for a in range(len(neurons)) for b in range(len(neurons)) if a != b])
    pairs = pairs[rng.permutation(len(pairs))]
    made = 0
    for attempt in range(per_synapse * params.n_synapses * 4):
        if made >= per_synapse * params.n_synapses:
            break
        pre, post = pairs[attempt % len(pairs)]
        if len(axons[pre]) == 0:
            continue
        row = targets[post][rng.integers(len(targets[post]))]
        goal, goal_r = row[:3], float(row[3])
        gap = np.linalg.norm(axons[pre] - goal, axis=1)
        start = axons[pre][np.argmin(gap)]
        if gap.min() > reach_nm:
            continue
        r_axon = params.axon_radius_nm
        bouton = r_axon * rng.uniform(2.5, 3.5)
        points = [start]
        while np.linalg.norm(goal - points[-1]) > goal_r + bouton * 0.8 and len(points) < 55:
            to_goal = (goal - points[-1]) / np.linalg.norm(goal - points[-1])
            points.append(points[-1] + 60.0 * _unit(to_goal + rng.normal(0, 0.35, 3) * np.array([0.6, 1, 1])))
        points = np.array(points)
        radii = np.full(len(points), r_axon)
        painter.path(points, radii, neurons[pre].id, AXON, weight=0.5)
        painter.capsule(points[-1], points[-1], bouton, bouton, neurons[pre].id, AXON, weight=0.5)
        neurons[pre].paths.append((points, radii, "axon"))
        made += 1


def _chord(through, direction, extent, margin):
    """Parameters (t0, t1) where the line ``through + t * direction`` is inside the box grown by ``margin``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (-margin - through) / direction
        b = (extent + margin - through) / direction
    lo = np.where(np.isfinite(a), np.minimum(a, b), -np.inf)
    hi = np.where(np.isfinite(b), np.maximum(a, b), np.inf)
    return float(np.max(lo)), float(np.min(hi))


def _add_fillers(rng, params, painter, extent, objects, next_id, check_every=8):
    """Passing axons crossing the volume (single or in bundles) until the target coverage is reached.

    Each is walked only along its chord through the volume (plus a margin), not from far outside.
    """
    total = painter.labels.size
    for attempt in range(6000):
        if attempt % check_every == 0 and np.count_nonzero(painter.labels) >= params.filler_coverage * total:
            break
        direction = _random_direction(rng, z_scale=0.8)
        through = rng.random(3) * extent
        count = rng.integers(3, 8) if rng.random() < params.bundle_fraction else 1
        radius = rng.uniform(1.2, 2.8) * params.axon_radius_nm if count > 1 else rng.lognormal(np.log(85), 0.4)
        radius = float(np.clip(radius, params.axon_radius_nm, 140.0))
        side = _unit(np.cross(direction, rng.normal(size=3)))
        t0, t1 = _chord(through, direction, extent, margin=150.0 + radius * count * 2.1)
        for k in range(count):
            offset = side * k * radius * 2.1 + rng.normal(0, radius * 0.2, 3)
            start = through + direction * t0 + offset
            step = float(np.clip(2.5 * radius, 60.0, 240.0))  # thick, straight axons need fewer capsules
            points = _random_walk(rng, start, direction, t1 - t0, step, 0.16 * np.sqrt(step / 80.0), flatten=1.0)
            radii = radius * (1 + 0.15 * np.sin(np.arange(len(points)) * rng.uniform(0.2, 0.6)))
            painter.path(points, radii, next_id, FILLER)
            objects[next_id] = {"kind": "axon", "radius": radius}
            next_id += 1
    return next_id


def _add_glia(rng, labels, kind, objects, next_id, voxel, spacing_nm=350.0):
    """Split the space no tube claimed into glial / small-process pieces about ``spacing_nm`` across.

    Seeds are drawn inside the free space (favouring its middle) and flooded by a watershed over a noisy
    distance landscape, so pieces have irregular, membrane-like borders rather than straight Voronoi cuts.
    """
    from skimage.segmentation import watershed

    free = labels == 0
    if not free.any():
        return next_id
    depth = edt.edt(free, anisotropy=tuple(voxel), black_border=False, parallel=2).astype(np.float32)
    n_seeds = max(1, int(free.sum() * np.prod(voxel) / spacing_nm**3))
    candidates = np.flatnonzero(free & (depth >= min(voxel[1:]) * 1.5))
    if candidates.size == 0:
        return next_id
    weight = depth.ravel()[candidates]
    seeds = rng.choice(candidates, size=min(n_seeds, candidates.size), replace=False, p=weight / weight.sum())
    markers = np.zeros(labels.shape, dtype=np.int32)
    markers.ravel()[seeds] = np.arange(1, len(seeds) + 1)
    # flood over smooth noise: borders follow its ridges (curved), not the city-block fronts of a plain BFS
    noise = ndimage.gaussian_filter(rng.normal(size=labels.shape).astype(np.float32), (1.0, 4.0, 4.0))
    landscape = noise / max(float(noise.std()), 1e-6) - depth / max(float(depth.max()), 1e-6)
    pieces = watershed(landscape, markers, mask=free)
    sizes = np.bincount(pieces.ravel(), minlength=len(seeds) + 1)
    lut = np.zeros(len(seeds) + 1, dtype=labels.dtype)
    for piece in np.flatnonzero(sizes[1:] >= 30) + 1:
        lut[piece] = next_id
        objects[next_id] = {"kind": "glia", "radius": 0.0}
        next_id += 1
    claimed = lut[pieces]
    hit = claimed > 0
    labels[hit] = claimed[hit]
    kind[hit] = GLIA
    return next_id


def _fill_nearest(labels, kind, mask, voxel, max_steps=48):
    """Give voxels in ``mask`` the label and compartment of a nearby labelled voxel outside it.

    Grows layer by layer from the mask's rim (in-plane neighbours first: sections are 5x thicker than pixels),
    taking only non-zero labels; what is left after ``max_steps`` layers takes its nearest voxel (exact EDT).
    """
    flat_labels, flat_kind = labels.reshape(-1), kind.reshape(-1)
    open_ = mask.reshape(-1).copy()
    todo = np.flatnonzero(open_)
    shape = labels.shape
    strides = (shape[1] * shape[2], shape[2], 1)
    for _ in range(max_steps):
        if todo.size == 0:
            return
        coords = np.unravel_index(todo, shape)
        got = np.zeros(todo.size, dtype=bool)
        src = np.zeros(todo.size, dtype=np.int64)
        for axis, sign in ((1, 1), (1, -1), (2, 1), (2, -1), (0, 1), (0, -1)):
            c = coords[axis] + sign
            ok = ~got & (c >= 0) & (c < shape[axis])
            cand = todo[ok] + sign * strides[axis]
            ok[ok] = ~open_[cand] & (flat_labels[cand] != 0)
            src[ok] = todo[ok] + sign * strides[axis]
            got |= ok
        if not got.any():
            break
        flat_labels[todo[got]] = flat_labels[src[got]]
        flat_kind[todo[got]] = flat_kind[src[got]]
        open_[todo[got]] = False
        todo = todo[~got]
    if todo.size:
        rest = open_.reshape(shape)
        _, index = ndimage.distance_transform_edt(rest, sampling=voxel, return_indices=True)
        src = tuple(i[rest] for i in index)
        labels[rest] = labels[src]
        kind[rest] = kind[src]


def _make_connected(labels, kind, voxel, keep_zero=False, rounds=4):
    """Keep each label's largest 6-connected piece; give the other pieces to their nearest neighbours."""
    import cc3d

    for _ in range(rounds):
        cc = cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint32)
        n = int(cc.max())
        sizes = np.bincount(cc.ravel(), minlength=n + 1)
        comp_label = np.zeros(n + 1, dtype=labels.dtype)
        comp_label[cc.ravel()] = labels.ravel()  # every voxel of a component has its label
        order = np.lexsort((sizes, comp_label))  # by label, then size: the last of each label is its largest
        last = np.append(comp_label[order][1:] != comp_label[order][:-1], True)
        keep = np.zeros(n + 1, dtype=bool)
        keep[order[last]] = True
        keep[comp_label == 0] = True
        stray = ~keep[cc]
        if not stray.any():
            return
        zero = labels == 0
        labels[stray] = 0
        _fill_nearest(labels, kind, stray if keep_zero else (stray | zero), voxel)
        if keep_zero:
            labels[zero] = 0


def _carve_extracellular_space(rng, params, labels, kind, objects, voxel):
    """Turn some object borders into extracellular space (label 0), sparing thin processes."""
    if params.ecs_fraction <= 0:
        return
    border = inplane_border(labels)
    thick = np.isin(kind, (SOMA, DENDRITE, GLIA))
    radius = np.zeros(int(labels.max()) + 1, dtype=np.float32)
    for oid, info in objects.items():
        radius[oid] = info["radius"]
    thick |= (kind == FILLER) & (radius[labels] >= 40)
    # keep axon contacts tight (synapses form there): no gaps next to an axon
    near_axon = ndimage.binary_dilation(kind == AXON, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    candidates = border & thick & ~near_axon
    field = ndimage.gaussian_filter(rng.normal(size=labels.shape).astype(np.float32), (1.0, 6.0, 6.0))
    values = field[candidates]
    want = params.ecs_fraction * labels.size
    if values.size == 0:
        return
    cut = np.quantile(values, max(0.0, 1.0 - want / values.size))
    labels[candidates & (field >= cut)] = 0
