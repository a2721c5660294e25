"""The public 9-tuple feature releases (IEMOCAP, CMU-MOSEI): a restricted unpickler
(containers, strings, numbers and numpy arrays only), the records they hold, and the
options and conversion that ``data_prep.iemocap`` and ``data_prep.mosei`` share.
"""

from __future__ import annotations

import argparse
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corect.data.dataset import DialogueRecord
from data_prep.options import (
    MODALITY_NAMES,
    ConversionError,
    add_output_argument,
    add_quiet_argument,
    add_text_model_arguments,
    parse_modalities,
    text_encoder_from_args,
)
from data_prep.output import check_out_folder, dev_from_train, feature_dims, write_and_summarize

PICKLE_WARNING = """\
This file is a Python pickle; only open files you trust. It is read with a restricted
unpickler that accepts only containers, strings, numbers and numpy arrays."""

_RELEASE_FIELDS = (
    "video_ids",
    "speakers",
    "labels",
    "text",
    "audio",
    "visual",
    "sentences",
    "train_ids",
    "test_ids",
)
_SAFE_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _ReleaseUnpickler(pickle.Unpickler):
    """Refuses every global but containers, numbers, strings and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 (Python 2 era) pickles name builtins '__builtin__'.
        if (module.replace("__builtin__", "builtins"), name) not in _SAFE_GLOBALS:
            raise ConversionError(
                f"refusing to unpickle {module}.{name}: a feature release holds only "
                "containers, strings, numbers and numpy arrays"
            )
        return super().find_class(module, name)


@dataclass
class FeatureRelease:
    """The public 9-tuple: per-dialogue dicts, and the train/test id lists."""

    path: Path
    speakers: Mapping[Any, Sequence[Any]]
    labels: Mapping[Any, Sequence[Any]]
    features: dict[str, Mapping[Any, Any]]  # modality letter -> dialogue id -> [T, dim]
    sentences: Mapping[Any, Sequence[str]]
    train_ids: list[Any]
    test_ids: list[Any]


def _ordered_ids(ids: Any, path: Path, field: str) -> list[Any]:
    """File order for lists; sets have no order, so their ids are sorted."""
    if isinstance(ids, (set, frozenset)):
        return sorted(ids, key=str)
    if isinstance(ids, (list, tuple, np.ndarray)):
        return list(ids)
    raise ConversionError(f"{path}: field {field!r} is a {type(ids).__name__}, expected a list")


def read_feature_release(path: str | Path) -> FeatureRelease:
    """Read a public IEMOCAP/MOSEI feature pickle: (video_ids, speakers, labels, text,
    audio, visual, sentences, train_ids, test_ids). Python 2 pickles load too (latin-1)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    with path.open("rb") as handle:
        try:
            data = _ReleaseUnpickler(handle, encoding="latin1").load()
        except ConversionError as err:
            raise ConversionError(f"{path}: {err}") from None
        except Exception as err:
            raise ConversionError(f"{path}: not a readable pickle: {err}") from err
    if not isinstance(data, (tuple, list)) or len(data) != len(_RELEASE_FIELDS):
        size = len(data) if isinstance(data, (tuple, list)) else type(data).__name__
        raise ConversionError(
            f"{path}: expected the 9-tuple ({', '.join(_RELEASE_FIELDS)}), got {size}"
        )
    fields = dict(zip(_RELEASE_FIELDS, data, strict=True))
    for field in ("speakers", "labels", "text", "audio", "visual", "sentences"):
        if not isinstance(fields[field], Mapping):
            raise ConversionError(
                f"{path}: field {field!r} is a {type(fields[field]).__name__}, expected a dict "
                "from dialogue id to a per-utterance list"
            )
    train_ids = _ordered_ids(fields["train_ids"], path, "train_ids")
    test_ids = _ordered_ids(fields["test_ids"], path, "test_ids")
    for field, ids in (("train_ids", train_ids), ("test_ids", test_ids)):
        repeated = [i for i, count in Counter(map(str, ids)).items() if count > 1]
        if repeated:
            raise ConversionError(f"{path}: dialogue {repeated[0]!r} is listed twice in {field!r}")
    leaked = [i for i in test_ids if str(i) in set(map(str, train_ids))]
    if leaked:
        raise ConversionError(
            f"{path}: dialogue {leaked[0]!r} is in both 'train_ids' and 'test_ids' (and "
            f"{len(leaked) - 1} more); a dialogue in train and test leaks test data into "
            "training. Fix the release's split lists"
        )
    return FeatureRelease(
        path=path,
        speakers=fields["speakers"],
        labels=fields["labels"],
        features={"t": fields["text"], "a": fields["audio"], "v": fields["visual"]},
        sentences=fields["sentences"],
        train_ids=train_ids,
        test_ids=test_ids,
    )


def _speaker_name(value: Any) -> str:
    """'M'/'F' stay as they are; a one-hot vector becomes 'speaker<k>'."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    array = np.asarray(value)
    if array.ndim == 1 and array.size > 1:
        return f"speaker{int(array.argmax())}"
    return str(value.item() if isinstance(value, np.generic) else value)


def _label_value(value: Any, where: str, offset: int, num_labels: int, hint: str) -> int:
    array = np.asarray(value)
    if array.size != 1:
        raise ConversionError(f"{where}: field 'labels' holds {value!r}, expected one class id")
    number = float(array.reshape(()))
    if number != round(number):
        raise ConversionError(
            f"{where}: field 'labels' holds {number}, not a class id (is this a regression "
            "release?)"
        )
    label = int(round(number)) + offset
    if not 0 <= label < num_labels:
        raise ConversionError(
            f"{where}: field 'labels' holds {int(round(number))}, outside 0..{num_labels - 1} "
            f"for this task{hint}"
        )
    return label


def release_records(
    release: FeatureRelease,
    dialogue_ids: Sequence[Any],
    *,
    num_labels: int,
    modalities: str,
    label_offset: int = 0,
    label_hint: str = "",
) -> list[DialogueRecord]:
    """DialogueRecords of `dialogue_ids`, checking every per-utterance list has one entry
    per speaker turn."""
    records = []
    for vid in dialogue_ids:
        where = f"{release.path}: dialogue {vid!r}"
        if vid not in release.speakers:
            raise ConversionError(f"{where}: listed in the split but missing from 'speakers'")
        speakers = [_speaker_name(s) for s in release.speakers[vid]]
        length = len(speakers)
        raw_labels = release.labels.get(vid)
        if raw_labels is None or len(raw_labels) != length:
            raise ConversionError(
                f"{where}: field 'labels' has {None if raw_labels is None else len(raw_labels)} "
                f"entries, 'speakers' has {length}"
            )
        labels = [
            _label_value(v, f"{where}, utterance {k}", label_offset, num_labels, label_hint)
            for k, v in enumerate(raw_labels)
        ]
        features = {m: _release_features(release, vid, m, length, where) for m in modalities}
        sentences = release.sentences.get(vid)
        texts = None
        if sentences is not None:
            if len(sentences) != length:
                raise ConversionError(
                    f"{where}: field 'sentences' has {len(sentences)} entries, 'speakers' has "
                    f"{length}"
                )
            texts = [
                s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in sentences
            ]
        records.append(DialogueRecord(str(vid), speakers, labels, features, texts))
    return records


def _release_features(
    release: FeatureRelease, vid: Any, modality: str, length: int, where: str
) -> np.ndarray:
    """The [length, dim] float32 features of `modality` for dialogue `vid`, checked."""
    field = MODALITY_NAMES[modality]
    if vid not in release.features[modality]:
        raise ConversionError(f"{where}: field {field!r} has no entry for this dialogue")
    try:
        array = np.asarray(release.features[modality][vid], dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{where}: field {field!r} is not numeric: {err}") from err
    if array.ndim != 2 or array.shape[0] != length:
        raise ConversionError(
            f"{where}: field {field!r} has shape {array.shape}, expected ({length}, dim)"
        )
    if not np.isfinite(array).all():
        raise ConversionError(f"{where}: field {field!r} has NaN or inf")
    return array


def add_release_arguments(
    parser: argparse.ArgumentParser, dataset: str, tasks: Mapping[str, Any]
) -> None:
    """Options shared by the 9-tuple release converters (iemocap, mosei)."""
    parser.add_argument(
        "pickle", type=Path, help="the release .pkl file (a 9-tuple pickle: trusted files only)"
    )
    parser.add_argument("--task", choices=list(tasks), required=True, help="label set")
    parser.add_argument(
        "--modalities",
        type=parse_modalities,
        default="tav",
        metavar="MODS",
        help="modalities to keep: letters t, a, v (or names text, audio, visual)",
    )
    parser.add_argument(
        "--dev-fraction",
        type=float,
        metavar="F",
        default=0.1,
        help="dev = this first fraction of train_ids, in file order (sets: sorted order)",
    )
    parser.add_argument(
        "--text-from-sentences",
        action="store_true",
        help="replace the release's text features by our encoder's features of its sentences",
    )
    add_output_argument(parser, f"runs/data/{dataset}_<task>")
    add_text_model_arguments(parser)
    add_quiet_argument(parser)


def convert_release(
    args: argparse.Namespace,
    *,
    dataset: str,
    labels: Sequence[str],
    label_offset: int = 0,
    label_hint: str = "",
) -> Path:
    """Convert a 9-tuple release as `args` (from :func:`add_release_arguments`) say."""
    if not 0.0 <= args.dev_fraction < 1.0:
        raise ConversionError(f"--dev-fraction {args.dev_fraction}: must be in [0, 1)")
    out = args.out or Path(f"runs/data/{dataset}_{args.task}")
    check_out_folder(out, args)
    release = read_feature_release(args.pickle)
    train_ids, dev_ids = dev_from_train(release.train_ids, args.dev_fraction)
    split_ids = {"train": train_ids, "dev": dev_ids, "test": release.test_ids}
    kept = args.modalities.replace("t", "") if args.text_from_sentences else args.modalities
    splits = {
        split: release_records(
            release,
            ids,
            num_labels=len(labels),
            modalities=kept,
            label_offset=label_offset,
            label_hint=label_hint,
        )
        for split, ids in split_ids.items()
    }
    extra: dict[str, object] = {
        "source": {"file": str(args.pickle), "format": "9-tuple feature release"},
        "dev": f"first {args.dev_fraction:g} of train_ids",
    }
    if args.text_from_sentences and "t" in args.modalities:
        encoder = text_encoder_from_args(args)
        for split, records in splits.items():
            missing = [r.id for r in records if r.texts is None]
            if missing:
                raise ConversionError(
                    f"{args.pickle}: split {split!r}, dialogue {missing[0]!r}: field "
                    "'sentences' is missing, needed by --text-from-sentences"
                )
        encoder.encode_records([r for records in splits.values() for r in records])
        extra["text_features"] = encoder.description
    all_records = [r for records in splits.values() for r in records]
    dims = feature_dims(all_records, args.modalities)
    return write_and_summarize(
        out, name=dataset, task=args.task, labels=labels, dims=dims, splits=splits, extra=extra
    )
