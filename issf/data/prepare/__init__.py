"""``task=prepare``: public feature formats -> the project's HDF5 feature file.

``core`` (writer options, shared checks, the streaming writer), ``wtalc`` (W-TALC folders),
``per_video`` (one ``.npy`` per video + JSON annotations), ``unlabelled`` (features without
annotations, for ``task=predict``), ``validate`` (checks, warnings and the report), ``npy``
(``.npy`` loading that never runs pickled code). :func:`prepare_from_config` dispatches on
``format`` and ``annotations`` (``required``, the default, or ``none``).

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
from issf.data.prepare.unlabelled import (
    UNLABELLED_SUBSET,
    convert_unlabelled_per_video,
    convert_unlabelled_wtalc,
)
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
    "UNLABELLED_SUBSET",
    "ConversionReport",
    "PrepareError",
    "PrepareFileNotFoundError",
    "PrepareWarning",
    "WriterOptions",
    "convert_per_video",
    "convert_unlabelled_per_video",
    "convert_unlabelled_wtalc",
    "convert_wtalc",
    "prepare_from_config",
]

CONVERTERS: dict[str, Callable[..., ConversionReport]] = {"wtalc": convert_wtalc, "per_video": convert_per_video}
# data.prepare.annotations=none: the same formats, features only
UNLABELLED_CONVERTERS: dict[str, Callable[..., ConversionReport]] = {
    "wtalc": convert_unlabelled_wtalc, "per_video": convert_unlabelled_per_video}


def _parameters(fn: Callable[..., ConversionReport]) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(fn).parameters.items() if k not in ("out_path", "writer")}


def _annotation_options(options: dict[str, Any], fn: Callable[..., ConversionReport]) -> dict[str, Any]:
    """``options`` without the annotation options of the labelled converters that ``fn`` (an
    unlabelled one) does not take. One left at its labelled default (``labels_from: video`` of the
    data configs) is dropped; one set to anything else would be silently ignored, so it is an error."""
    own = _parameters(fn)
    labelled: dict[str, inspect.Parameter] = {}
    for converter in CONVERTERS.values():
        labelled.update({k: p for k, p in _parameters(converter).items() if k not in own})
    for key, value in options.items():
        if key in labelled and value != labelled[key].default:
            raise ValueError(f"data.prepare.{key}: reads annotations, but data.prepare.annotations=none converts "
                             f"features only; remove it (~data.prepare.{key}) or drop data.prepare.annotations=none")
    return {k: v for k, v in options.items() if k not in labelled}


def prepare_from_config(cfg: Mapping[str, Any], out_path: str | os.PathLike) -> ConversionReport:
    """Run the converter named by ``cfg["format"]`` (``wtalc`` | ``per_video``) with the other keys;
    with ``cfg["annotations"] == "none"`` its unlabelled variant (:mod:`issf.data.prepare.unlabelled`).

    Keys are the converter's keyword arguments and the :class:`WriterOptions` fields (plain values,
    e.g. a resolved ``data.prepare`` config section); null values count as unset; an unknown key is
    an error that lists the accepted ones.
    """
    # null options count as unset (a config can keep every key of both formats with null values)
    options = {k: v for k, v in cfg.items() if v is not None}
    fmt = options.pop("format", None)
    annotations = options.pop("annotations", "required")
    if annotations not in ("required", "none"):
        raise ValueError(f"data.prepare.annotations: must be required (features and annotations) or none "
                         f"(features only, for task=predict), got {annotations!r}")
    converters = CONVERTERS if annotations == "required" else UNLABELLED_CONVERTERS
    if fmt not in converters:
        raise ValueError(f"data.prepare.format: the format must be one of {sorted(converters)}, got {fmt!r}; "
                         f"e.g. data.prepare.format=wtalc")
    fn = converters[fmt]
    if annotations == "none":
        options = _annotation_options(options, fn)
    own = list(_parameters(fn))
    accepted = own + list(WriterOptions.fields())
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"data.prepare: unknown option(s) {unknown} for data.prepare.format={fmt}; accepted: "
                         f"{accepted}; drop it with ~data.prepare.{unknown[0]}")
    writer = WriterOptions(**{k: v for k, v in options.items() if k in WriterOptions.fields()})
    return fn(out_path=out_path, writer=writer, **{k: v for k, v in options.items() if k in own})
