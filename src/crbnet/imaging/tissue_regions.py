"""White- and grey-matter masks from qMT maps, and per-region statistics of parameter maps.

The masks are a crude segmentation from the maps themselves, enough for medians and
interquartile ranges, not for anatomy:

* brain: the estimated voxels, eroded by ``brain_erosion`` voxels (drops the rim, where the
  reconstruction's mask cuts through skull, fat and partial volumes);
* white matter: a semi-solid pool fraction ``m0s ≥ wm_m0s`` (white matter's myelin gives it the
  largest m0s of the brain, ≈ 0.2; grey matter ≈ 0.1);
* grey matter: ``gm_m0s[0] ≤ m0s ≤ gm_m0s[1]`` and ``T1f ≤ gm_t1f_max`` (the T1f bound leaves
  out voxels partly filled with CSF, whose m0s is also low; the gap between 0.13 and 0.15
  leaves out most voxels that mix the two tissues);
* each class may then be eroded by ``class_erosion`` voxels (in the slice plane; default 0:
  the cortical ribbon is one to three voxels thick here and would vanish).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

#: Default thresholds (see the module docstring).
WM_M0S = 0.15
GM_M0S = (0.06, 0.13)
GM_T1F_MAX = 3.0


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    if iterations <= 0:
        return mask.astype(bool)
    structure = np.zeros((3,) * mask.ndim, bool)
    centre = (1,) * mask.ndim
    for axis in range(min(2, mask.ndim)):           # in-plane 4-neighbourhood
        for step in (0, 2):
            index = list(centre)
            index[axis] = step
            structure[tuple(index)] = True
    structure[centre] = True
    return binary_erosion(mask, structure=structure, iterations=iterations)


def tissue_masks(m0s: np.ndarray, T1f: np.ndarray, estimated: np.ndarray, *,
                 wm_m0s: float = WM_M0S, gm_m0s: tuple[float, float] = GM_M0S,
                 gm_t1f_max: float = GM_T1F_MAX, brain_erosion: int = 2,
                 class_erosion: int = 0) -> dict[str, np.ndarray]:
    """``{"WM": mask, "GM": mask}`` (bool, the maps' shape) from the m0s and T1f (s) maps and
    the estimated voxels (module docstring)."""
    brain = _erode(np.asarray(estimated, bool), brain_erosion)
    m0s, T1f = np.nan_to_num(np.asarray(m0s, float)), np.nan_to_num(np.asarray(T1f, float))
    wm = brain & (m0s >= wm_m0s)
    gm = brain & (m0s >= gm_m0s[0]) & (m0s <= gm_m0s[1]) & (T1f <= gm_t1f_max)
    return {"WM": _erode(wm, class_erosion), "GM": _erode(gm, class_erosion)}


def region_statistics(maps: Mapping[str, np.ndarray], regions: Mapping[str, np.ndarray],
                      within: np.ndarray | None = None) -> dict[str, dict[str, dict]]:
    """``{region: {map name: {"median", "q1", "q3", "n"}}}`` over each region's voxels (and
    ``within``, e.g. the voxels one estimator fitted); NaNs are left out."""
    out: dict[str, dict[str, dict]] = {}
    for region, mask in regions.items():
        sel = np.asarray(mask, bool) if within is None else np.asarray(mask, bool) & within
        out[region] = {}
        for name, image in maps.items():
            values = np.asarray(image, float)[sel]
            values = values[np.isfinite(values)]
            if values.size == 0:
                out[region][name] = {"median": None, "q1": None, "q3": None, "n": 0}
                continue
            q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
            out[region][name] = {"median": median, "q1": q1, "q3": q3, "n": int(values.size)}
    return out


def agreement_in_crb_units(a: np.ndarray, b: np.ndarray, crb_std: np.ndarray,
                           mask: np.ndarray) -> dict[str, float | int | None]:
    """Median and quartiles of ``|a − b| / crb_std`` over ``mask`` (voxels with a finite,
    positive CRB standard deviation)."""
    a, b, s = (np.asarray(x, float) for x in (a, b, crb_std))
    sel = np.asarray(mask, bool) & np.isfinite(a) & np.isfinite(b) & np.isfinite(s) & (s > 0)
    if not sel.any():
        return {"median": None, "q1": None, "q3": None, "n": 0}
    z = np.abs(a[sel] - b[sel]) / s[sel]
    q1, median, q3 = (float(v) for v in np.percentile(z, [25, 50, 75]))
    return {"median": median, "q1": q1, "q3": q3, "n": int(sel.sum())}


__all__ = ["tissue_masks", "region_statistics", "agreement_in_crb_units", "WM_M0S", "GM_M0S",
           "GM_T1F_MAX"]
