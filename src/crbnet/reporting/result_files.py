"""A result's files written together: its JSON (and any text reports) and its figure, all of
them or none (:func:`crbnet.files.atomic_paths`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from crbnet import files


def write_result_files(out_dir: str | Path, stem: str, data: Any,
                       draw: Callable[[Path], None],
                       texts: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write ``STEM.json`` (``data``), ``STEM.<suffix>`` for each of ``texts`` (suffix → text)
    and ``STEM.png`` (``draw(path)``) into ``out_dir``; returns the paths by kind (``json``,
    the text suffixes, ``png``)."""
    out_dir = Path(out_dir)
    kinds = ["json", *(texts or {}), "png"]
    paths = {kind: out_dir / f"{stem}.{kind}" for kind in kinds}
    with files.atomic_paths(list(paths.values())) as tmps:
        tmp = dict(zip(paths, tmps))
        files.write_json(tmp["json"], data)
        for suffix, text in (texts or {}).items():
            files.write_text(tmp[suffix], text)
        draw(tmp["png"])
    return paths


__all__ = ["write_result_files"]
