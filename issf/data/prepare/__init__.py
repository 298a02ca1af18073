"""``task=prepare``: public feature formats -> the project's HDF5 feature file.

``core`` (writer options, shared checks, the streaming writer), ``wtalc`` (W-TALC folders),
``per_video`` (one ``.npy`` per video + JSON annotations), ``validate`` (checks, warnings and the
report), ``npy`` (``.npy`` loading that never runs pickled code). :func:`prepare_from_config`
dispatches on ``format``.

Everything that can be checked without features (files present, ids unique, labels known,
segments well formed) is checked before any feature is read. Features are then streamed video by
video into :func:`issf.data.h5.write_feature_file`, which writes a temporary file and renames it
only when complete, so an error never leaves an output or a temporary file behind. Warnings are
collected in the returned :class:`ConversionReport` and stored in the file's ``prepare`` attribute.

Defect policy (see :mod:`issf.data.prepare.validate` for the checks):

* segments outside [0, duration] are clipped and reported; a segment starting at or after the end
  is kept as the zero-length ``[duration, duration]`` by default (``past_end="keep"``): instance
  counts and the mAP denominator stay those of the source, where such a segment can never be
  matched. ``past_end="drop"`` removes it instead.
* W-TALC video-level labels (``labels_all``) that disagree with the segment labels are reported;
  ``labels_from="video"`` keeps W-TALC's labels (what W-TALC/RSKP/ISSF train on),
  ``labels_from="segments"`` derives them from the segments.
* a feature length T differing from ``duration / snippet_seconds`` by more than
  ``length_tolerance`` snippets is reported.

May import: ``issf.utils``, ``issf.data``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from issf.data.prepare.core import SNIPPET_SECONDS, WriterOptions
from issf.data.prepare.per_video import convert_per_video
from issf.data.prepare.validate import (
    ConversionReport,
    PrepareError,
    PrepareFileNotFoundError,
    PrepareWarning,
)
from issf.data.prepare.wtalc import ACTIVITYNET_SUBSETS, THUMOS_SUBSETS, convert_wtalc

__all__ = [
    "ACTIVITYNET_SUBSETS",
    "SNIPPET_SECONDS",
    "THUMOS_SUBSETS",
    "ConversionReport",
    "PrepareError",
    "PrepareFileNotFoundError",
    "PrepareWarning",
    "WriterOptions",
    "convert_per_video",
    "convert_wtalc",
    "prepare_from_config",
]

CONVERTERS: dict[str, Callable[..., ConversionReport]] = {"wtalc": convert_wtalc, "per_video": convert_per_video}


def prepare_from_config(cfg: Mapping[str, Any], out_path: str | os.PathLike) -> ConversionReport:
    """Run the converter named by ``cfg["format"]`` (``wtalc`` | ``per_video``) with the other keys.

    Keys are the converter's keyword arguments and the :class:`WriterOptions` fields (plain values,
    e.g. a resolved ``data.prepare`` config section); null values count as unset; an unknown key is
    an error that lists the accepted ones.
    """
    # null options count as unset (a config can keep every key of both formats with null values)
    options = {k: v for k, v in cfg.items() if v is not None}
    fmt = options.pop("format", None)
    if fmt not in CONVERTERS:
        raise ValueError(f"prepare: format must be one of {sorted(CONVERTERS)}, got {fmt!r}")
    fn = CONVERTERS[fmt]
    own = [p for p in inspect.signature(fn).parameters if p not in ("out_path", "writer")]
    accepted = own + list(WriterOptions.fields())
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"prepare: unknown option(s) {unknown} for format {fmt!r}; accepted: {accepted}")
    writer = WriterOptions(**{k: v for k, v in options.items() if k in WriterOptions.fields()})
    return fn(out_path=out_path, writer=writer, **{k: v for k, v in options.items() if k in own})
