"""Literature tissue values per signal model and field strength: white and gray matter, CSF and
an illustrative lesion, every value with its source (:data:`SOURCES`).

The digital phantom (:mod:`crbnet.imaging.phantom`) fills its tissues from these tables, and
tissue points (:mod:`crbnet.assessment.points`) take their named tissues (``WM``, ``GM``, ...)
from them. A model of one's own may bring its own table as the class attribute
``phantom_tissues`` (docs/models.md).
"""

from __future__ import annotations

from crbnet.errors import InputError
from crbnet.physics import models as model_registry
from crbnet.physics.models.base import SignalModel

#: Where each value comes from (the second item of every table entry names one of these).
SOURCES: dict[str, str] = {
    "stanisz2005": "Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2 relaxation and magnetization "
                   "transfer in tissue at 3T. Magn Reson Med 2005;54:507-512 (Table 1, human "
                   "brain in vivo; T1 and T2 at 1.5 T and 3 T)",
    "asslaender2024": "Assländer J, Mao A, Marchetto E, et al. Unconstrained quantitative "
                      "magnetization transfer imaging: disentangling T1 of the free and "
                      "semi-solid spin pools. Imaging Neuroscience 2024;2:1-16 (arXiv:2301.08394):"
                      " healthy white matter at 3 T, T1f ≈ 1.84 s, T1s ≈ 0.34 s (abstract); "
                      "T2f 76.9 ms, Rx 13.6 /s, T2s 12.5 µs (held fixed) and m0s 0.25 "
                      "(starting value) are the white-matter values the same group uses with "
                      "these T1s in Assländer & Flassbeck, arXiv:2409.05318 (code: "
                      "github.com/JakobAsslaender/T1variability)",
    "gloor2008": "Gloor M, Scheffler K, Bieri O. Quantitative magnetization transfer imaging "
                 "using balanced SSFP. Magn Reson Med 2008;60:691-700: gray matter has roughly "
                 "40-50 % of the white-matter semi-solid pool size; T2 of the semi-solid pool "
                 "about 12 µs in brain",
    "gm_t1f_derived": "derived: with fast exchange the apparent rate is R1 ≈ (1−m0s)/T1f + "
                      "m0s/T1s; the WM values give T1 ≈ 0.88 s; asking GM for the GM/WM ratio of "
                      "apparent T1 in Stanisz 2005 at 3 T (1820/1084 ms) with m0s = 0.11, "
                      "T1s = 0.34 s gives T1f ≈ 2.5 s",
    "gm_t2f": "GM T2 at 3 T from Stanisz 2005 (99 ms), taken for the free pool",
    "assumed_wm": "assumed equal to white matter (no separate gray-matter value in the sources); "
                  "with Rx shared, the forward rate kf = Rx·m0s scales with m0s as in Gloor 2008",
    "csf": "round values for CSF as nearly free water at body temperature (T1 ≈ 4 s, "
           "T2 ≈ 2 s at 1.5–3 T); not from a single study — reported CSF T2 varies widely "
           "between methods",
    "csf_mt": "CSF has no semi-solid pool (m0s = 0); Rx, T1s and T2s then do not affect the "
              "signal (their CRB is infinite) and are set to the white-matter values only to "
              "keep the maps smooth",
    "lesion": "illustrative chronic (demyelinated) MS-like lesion: longer relaxation and, for MT, "
              "about half the white-matter semi-solid fraction; a qualitative choice, not a "
              "literature mean",
    "pd": "approximate relative water content (WM ≈ 0.69, GM ≈ 0.80, CSF = 1; e.g. Neeb H, "
          "Zilles K, Shah NJ, NeuroImage 2006;31:1156-1168); lesion 0.75 illustrative",
}

#: Relative proton density (water content) per tissue, source "pd".
PROTON_DENSITY: dict[str, float] = {"CSF": 1.0, "GM": 0.80, "WM": 0.69, "lesion": 0.75}

# {field strength (T): {tissue: {parameter: (value SI, source key)}}}
_RELAXOMETRY: dict[float, dict[str, dict[str, tuple[float, str]]]] = {
    3.0: {
        "WM": {"T1": (1.084, "stanisz2005"), "T2": (0.069, "stanisz2005")},
        "GM": {"T1": (1.820, "stanisz2005"), "T2": (0.099, "stanisz2005")},
        "CSF": {"T1": (4.0, "csf"), "T2": (2.0, "csf")},
        "lesion": {"T1": (1.40, "lesion"), "T2": (0.12, "lesion")},
    },
    1.5: {
        "WM": {"T1": (0.884, "stanisz2005"), "T2": (0.072, "stanisz2005")},
        "GM": {"T1": (1.124, "stanisz2005"), "T2": (0.095, "stanisz2005")},
        "CSF": {"T1": (4.0, "csf"), "T2": (2.0, "csf")},
        "lesion": {"T1": (1.15, "lesion"), "T2": (0.12, "lesion")},
    },
}

_MT: dict[float, dict[str, dict[str, tuple[float, str]]]] = {
    3.0: {
        "WM": {"m0s": (0.25, "asslaender2024"), "T1f": (1.84, "asslaender2024"),
               "T2f": (0.0769, "asslaender2024"), "Rx": (13.6, "asslaender2024"),
               "T1s": (0.34, "asslaender2024"), "T2s": (12.5e-6, "asslaender2024")},
        "GM": {"m0s": (0.11, "gloor2008"), "T1f": (2.5, "gm_t1f_derived"),
               "T2f": (0.099, "gm_t2f"), "Rx": (13.6, "assumed_wm"),
               "T1s": (0.34, "assumed_wm"), "T2s": (12.5e-6, "assumed_wm")},
        "CSF": {"m0s": (0.0, "csf_mt"), "T1f": (4.0, "csf"), "T2f": (2.0, "csf"),
                "Rx": (13.6, "csf_mt"), "T1s": (0.34, "csf_mt"), "T2s": (12.5e-6, "csf_mt")},
        "lesion": {"m0s": (0.13, "lesion"), "T1f": (2.3, "lesion"), "T2f": (0.12, "lesion"),
                   "Rx": (13.6, "lesion"), "T1s": (0.34, "lesion"), "T2s": (12.5e-6, "lesion")},
    },
}

#: The built-in tissue tables; a model draws its values from the first that holds all of its
#: parameters (B1 excepted: the phantom simulates its own transmit field).
_TABLES = (_MT, _RELAXOMETRY)


def _covers(table: dict[float, dict[str, dict[str, tuple[float, str]]]],
            parameters: set[str]) -> bool:
    return all(parameters <= set(values) for tissues in table.values()
               for values in tissues.values())


def tissue_table(model: str | SignalModel | type[SignalModel], field_strength: float = 3.0
                 ) -> dict[str, dict[str, tuple[float, str]]]:
    """``{tissue: {parameter: (value SI, source)}}`` for a model (a model, its class or
    anything :func:`crbnet.physics.models.resolve` accepts) at a field strength.

    A model's own class attribute ``phantom_tissues`` (the same form, keyed by field
    strength; docs/models.md) wins; otherwise the first built-in table that holds all of the
    model's parameters (two-pool MT; T1/T2 relaxometry)."""
    cls = model_registry.resolve(model) if isinstance(model, str) else model
    name = cls.name
    table = getattr(cls, "phantom_tissues", None)
    if table is None:
        needed = {s.name for s in cls.specs} - {"B1"}
        table = next((t for t in _TABLES if _covers(t, needed)), None)
    if table is None:
        raise InputError(f"the phantom has no tissue values for model {name!r} (its tables "
                         f"hold {' or '.join('/'.join(_table_parameters(t)) for t in _TABLES)});"
                         f" a model of your own can give them as the class attribute "
                         f"phantom_tissues, see docs/models.md")
    fs = float(field_strength)
    if fs not in table:
        raise InputError(f"the phantom has {name} tissue values at "
                         f"{', '.join(f'{f:g} T' for f in table)} only, not {fs:g} T")
    return table[fs]


def _table_parameters(table: dict) -> list[str]:
    first = next(iter(table.values()))
    return list(next(iter(first.values())))


__all__ = ["SOURCES", "PROTON_DENSITY", "tissue_table"]
