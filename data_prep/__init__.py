"""Converters from public ERC datasets and your own JSONL dialogues to the corect format.

Each converter is a command, ``python -m data_prep.<name> --help``, one module each:
``iemocap`` and ``mosei`` (the public 9-tuple feature pickles, read by
:mod:`data_prep.release`), ``meld`` (the official CSVs) and ``jsonl``. Text features come
from :mod:`corect.data.text_encoder`, audio features optionally from openSMILE
(:mod:`data_prep.audio_features`); :mod:`data_prep.options` and :mod:`data_prep.output`
are the options and the output every converter shares. ``finetune_text`` fine-tunes the
text encoder; its parts are the package :mod:`data_prep.finetuning`. See docs/data.md.
"""
