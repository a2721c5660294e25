"""Converters from public ERC datasets and your own JSONL dialogues to the corect format.

Each converter is a command, ``python -m data_prep.<name> --help``: ``iemocap``, ``mosei``
(the public 9-tuple feature pickles), ``meld`` (the official CSVs) and ``jsonl``. Text
features come from :mod:`corect.data.text_encoder`, audio features optionally from
openSMILE (:mod:`data_prep.audio_features`). See docs/data.md.
"""
