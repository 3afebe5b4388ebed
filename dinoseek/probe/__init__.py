"""Linear probes: labels from a few examples, trained on a collection's stored vectors.

- ``model``: the probe itself (apply, check against a model, serialise);
- ``training``: fitting it, with the regularisation chosen on a validation split;
- ``calibration``: temperature scaling and its measures;
- ``report``: what training reports (data; the commands render it);
- ``collection``: probes of a collection (train from the store, load, cache).

Training needs torch; the rest does not, so serving and searching with a probe never import
it. ``train_probe`` and ``train_collection_probe`` are imported on first use.
"""

from typing import Any

from dinoseek.probe.calibration import expected_calibration_error, fit_temperature
from dinoseek.probe.collection import (
    DEFAULT_PROBE,
    ProbeCache,
    choose_probe,
    evaluate_probe,
    labelled_vectors,
    load_probe,
    probe_summary,
)
from dinoseek.probe.model import LinearProbe
from dinoseek.probe.report import ClassReport, ConfusedPair, ProbeReport, SkippedClass

__all__ = [
    "DEFAULT_PROBE",
    "ClassReport",
    "ConfusedPair",
    "LinearProbe",
    "ProbeCache",
    "ProbeReport",
    "ProbeTrainingResult",
    "SkippedClass",
    "choose_probe",
    "evaluate_probe",
    "expected_calibration_error",
    "fit_temperature",
    "labelled_vectors",
    "load_probe",
    "probe_summary",
    "train_collection_probe",
    "train_probe",
]


def __getattr__(name: str) -> Any:
    if name in ("ProbeTrainingResult", "train_probe"):
        from dinoseek.probe import training

        return getattr(training, name)
    if name == "train_collection_probe":
        from dinoseek.probe.collection import train_collection_probe

        return train_collection_probe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
