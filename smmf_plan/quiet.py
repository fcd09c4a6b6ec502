"""Libraries' chatter kept off the user's stderr while smmf-plan builds and traces their models.

Building a model on the meta device and tracing one training step are not the user's training run:
what transformers, torch and their plug-ins warn about while we do it (a deprecated spelling, a
``use_cache`` switched off for checkpointing, torchao's pytree registrations logged when
transformers imports it, a config's unrecognized ``loss_type``) is not about the user's setup, and
printing it would bury the one line of verdict. Errors are not hidden: they propagate as
exceptions, which the callers turn into one-line messages.

Logging is disabled below ERROR with :func:`logging.disable` rather than by logger levels: a library
imported inside the block (transformers configures its loggers on import) would reset those.
"""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet_libraries():
    """Silence Python warnings and every log record below ERROR for the duration."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)
