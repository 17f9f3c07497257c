"""Serial-section alignment (connectomix.align): transforms recovered, no drift over a long stack, missing and
folded sections handled, seamless blockwise rendering, bad input refused, predict's z-affinities cut at a missing
section."""

import numpy as np
import pytest
from scipy import ndimage

from connectomix import io
from connectomix.align import core
from connectomix.align.blockwise import STAGE, load_transforms, resolve, setup
from connectomix.blockwise import run_step
from connectomix.evaluate.align import evaluate
from connectomix.predict import zero_z_affinities

PARAMS = resolve({"mesh_spacing_px": 32, "patch_px": 48})


def tissue(shape, seed=0, sigma=2.0):
    """A smooth random texture standing in for EM (grey values around 128)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (128 + 40 * img / img.std()).astype(np.float32)


def stack(n, size, shifts, seed=0, noise=3.0, rotations=None):
    """n sections of one texture (a block of tissue barely changing along z), each showing it at p + shift (and
    rotated about the centre by ``rotations`` degrees), with independent pixel noise: (uint8 stack, the true
    aligned position each raw pixel shows, as a function)."""
    base = tissue((size + 64, size + 64), seed)
    rng = np.random.default_rng(seed + 1)
    rotations = np.zeros(n) if rotations is None else rotations
    centre = (size - 1) / 2

    def true_map(z, q):
        a = np.deg2rad(rotations[z])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return np.tensordot(rot, q - centre, axes=1) + centre + shifts[z].reshape(2, *([1] * (q.ndim - 1)))

    q = np.mgrid[0:size, 0:size].astype(float)
    out = np.stack([ndimage.map_coordinates(base, true_map(z, q) + 32, order=3) + rng.normal(0, noise, (size, size))
                    for z in range(n)])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), true_map


def max_error(est, true_map, size, valid=None, spacing=8):
    """The largest residual (px) over a grid of every section (``valid`` sections), the stack's mean removed."""
    q = np.stack(np.meshgrid(np.arange(4, size, spacing), np.arange(4, size, spacing), indexing="ij")).reshape(2, -1)
    q = q.astype(float)
    zs = range(len(est["mesh"])) if valid is None else valid
    errors = {z: core.invert(est["mesh"][z], (size, size), q) - true_map(z, q) for z in zs}
    mean = np.mean([e.mean(axis=1) for e in errors.values()], axis=0)
    return {z: float(np.hypot(*(e - mean[:, None])).max()) for z, e in errors.items()}


def test_match_recovers_a_subpixel_shift():
    a = tissue((96, 96), seed=3)
    b = ndimage.shift(a, (3.3, -2.1), order=3)  # b(x) = a(x - s): a at x shows b at x + s
    s, ncc = core.match(a[16:80, 16:80], b[16:80, 16:80])
    assert np.allclose(s, (3.3, -2.1), atol=0.15) and ncc > 0.9


def test_translations_and_rotations_recovered():
    rng = np.random.default_rng(1)
    shifts = rng.normal(0, 3, (8, 2))
    raw, true_map = stack(8, 128, shifts, seed=2, rotations=rng.normal(0, 0.8, 8))
    est = core.estimate(lambda z: raw[z], 8, PARAMS)
    assert set(est["status"]) == {"ok"}
    errors = max_error(est, true_map, 128)
    unaligned = max_error({"mesh": np.zeros_like(est["mesh"])}, true_map, 128)
    assert max(errors.values()) < 0.6, errors
    assert max(unaligned.values()) > 4 * max(errors.values())


def test_no_drift_over_50_sections():
    """A random walk of shifts over 50 sections: the global solve keeps every section right, the last as the
    first (errors of pairwise chaining would add up along z)."""
    shifts = np.cumsum(np.random.default_rng(4).normal(0, 2, (50, 2)), axis=0)
    raw, true_map = stack(50, 96, shifts, seed=5)
    est = core.estimate(lambda z: raw[z], 50, PARAMS)
    errors = max_error(est, true_map, 96)
    assert max(errors.values()) < 0.5, errors
    assert np.ptp(shifts, axis=0).max() > 8  # the walk wandered far


def test_missing_and_folded_sections():
    n, size = 10, 128
    shifts = np.random.default_rng(6).normal(0, 2, (n, 2))
    raw, true_map = stack(n, size, shifts, seed=7)
    raw[4] = 0  # lost
    # a fold in section 7: the tissue beyond x = 64 shown 4 px further (a stripe lost), a dark line at the fold
    q = np.mgrid[0:size, 0:size].astype(float)
    fold = true_map(7, q)
    fold[1] += np.where(q[1] > 64, 4.0, 0.0)
    base = tissue((size + 64, size + 64), 7)
    raw[7] = np.clip(ndimage.map_coordinates(base, fold + 32, order=3), 0, 255).astype(np.uint8)
    raw[7][:, 63:66] //= 2
    est = core.estimate(lambda z: raw[z], n, PARAMS)
    assert est["status"][4] == "missing" and (np.delete(est["status"], 4) == "ok").all()
    errors = max_error(est, true_map, size, valid=[z for z in range(n) if z not in (4, 7)])
    assert max(errors.values()) < 0.6, errors
    # the folded section: the smooth mesh spreads the fold's 4 px step over the section (no discontinuity), so
    # away from the fold it errs by less than the step, and unaligned it would err by the shift
    far = np.stack(np.meshgrid(np.arange(8, size, 8), np.arange(8, 40, 8), indexing="ij")).reshape(2, -1)
    err = core.invert(est["mesh"][7], (size, size), far.astype(float)) - true_map(7, far.astype(float))
    assert np.hypot(*err).max() < 3.0
    # the missing section is filled with its neighbours' mean and flagged
    transforms = {"mesh": est["mesh"], "status": est["status"], "gain": np.ones(n), "bias": np.zeros(n)}
    image, flags = core.render(raw, transforms, 3, 6, 0, size, 0, size)
    assert (flags[1] == core.MISSING).all() and not (flags[[0, 2]] & core.MISSING).any()
    assert np.abs(image[1].astype(int) - (image[0].astype(int) + image[2]) / 2).max() <= 1


def test_blockwise_render_is_seamless_and_flags_defects(tmp_path):
    n, size = 12, 128
    shifts = np.random.default_rng(8).normal(0, 3, (n, 2))
    raw, _ = stack(n, size, shifts, seed=9)
    raw[5] = 0
    raw[8] = (raw[8].astype(float) - 128) * 0.3 + 128  # low contrast
    volume = tmp_path / "volume.zarr"
    io.write_full(volume, "raw", raw, (4, 32, 32), (40, 8, 8))
    s = setup(volume, tmp_path / "align", {"mesh_spacing_px": 32, "patch_px": 48}, (4, 64, 64))
    assert s["missing_sections"] == [5] and s["blocks"] == 3 * 2 * 2
    run_step(STAGE, tmp_path / "align")
    aligned = io.open_array(volume, "aligned")[:]
    flags = io.open_array(volume, "defects")[:]
    transforms = load_transforms(tmp_path / "align")
    whole, whole_flags = core.render(raw, transforms, 0, n, 0, size, 0, size)
    assert np.array_equal(aligned, whole) and np.array_equal(flags, whole_flags)
    assert (flags[5] == core.MISSING).all() and (flags[8] & core.LOW_CONTRAST).all()
    assert (flags[0] & core.NO_DATA).any()  # shifted sections show, at their edges, raw from outside the section
    assert abs(float(aligned[8].std()) - float(np.median(aligned[[0, 1, 2, 3]].std(axis=(1, 2))))) < 3  # equalized
    assert io.read_meta(volume, "aligned").attrs["missing_sections"] == [5]


@pytest.mark.parametrize("sections, message", [
    ([np.zeros((32, 32)) + 1, np.ones((32, 30))], "section 1 has shape"),
    ([np.ones((32, 32))], "at least 2"),
    ([np.zeros((32, 32)), np.full((32, 32), 7.0), np.zeros((32, 32))], "3 of 3 sections are blank or missing"),
])
def test_bad_stacks_are_refused(sections, message):
    with pytest.raises(ValueError, match=message):
        core.estimate(lambda z: sections[z], len(sections), PARAMS)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        resolve({"mesh_spacing": 32})


def test_z_affinities_touching_a_missing_section_are_zero():
    aff = np.ones((3, 6, 4, 4), np.uint8)  # offsets z, y, x; the box starts at section 10
    zero_z_affinities(aff, [(-1, 0, 0), (0, -1, 0), (0, 0, -1)], 10, [12])
    # edge (v, v - 1 in z): section 12's own and section 13's (its neighbour 12) are cut; in-plane ones stay
    assert aff[0, :, 0, 0].tolist() == [1, 1, 0, 0, 1, 1] and aff[1:].all()


def test_evaluation_of_a_perfect_and_an_identity_alignment():
    import pandas as pd

    size, n = 64, 4
    shifts = np.array([[2.0, -1.0], [0.0, 0.0], [-1.0, 3.0], [1.0, 1.0]])
    q = np.stack(np.meshgrid(np.arange(4, size, 8.0), np.arange(4, size, 8.0), indexing="ij")).reshape(2, -1)
    points = pd.concat([pd.DataFrame({"z": z, "raw_y_nm": q[0] * 8, "raw_x_nm": q[1] * 8,
                                      "aligned_y_nm": (q[0] + shifts[z, 0]) * 8,
                                      "aligned_x_nm": (q[1] + shifts[z, 1]) * 8, "valid": True}) for z in range(n)])
    mesh = np.broadcast_to(-shifts[:, :, None, None], (n, 2, 3, 3)).copy()  # aligned p shows raw p - shift
    sections = pd.DataFrame({"z": range(n), "status": ["ok"] * n})
    metrics = evaluate(mesh, (size, size), points, sections, sections, (40, 8, 8))
    assert metrics["residual_p95_nm"] < 1e-6 and metrics["residual_before_median_nm"] > 8
    assert metrics["defect_sections_found"] == 1.0 and metrics["false_defect_sections"] == 0
