"""Small tools every layer uses: errors and exit codes (:mod:`~corect.common.errors`),
atomic file IO (:mod:`~corect.common.files`), metrics (:mod:`~corect.common.metrics`),
figures (:mod:`~corect.common.plots`) and process set-up: logging, seeding, device,
memory (:mod:`~corect.common.runtime`). Nothing here knows of data or models.
"""
