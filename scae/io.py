"""Atomic output files and rule logging shared by the workflow's scripts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("scae")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    A job that dies half-way therefore never leaves a file that a later run could
    mistake for a finished result.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".partial" + target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def rule_logging(log_path: str | os.PathLike) -> Iterator[logging.Logger]:
    """Send the package's log records, Python warnings and stderr to a rule's log file."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").addHandler(handler)
        old_stderr = sys.stderr
        sys.stderr = stream
        # Which scheduler job ran this rule: cluster users (and the SLURM test) look here.
        logger.info(
            "running on %s, SLURM_JOB_ID=%s",
            os.uname().nodename,
            os.environ.get("SLURM_JOB_ID", "none"),
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield logger
        except Exception:
            logger.exception("rule failed")
            raise
        finally:
            sys.stderr = old_stderr
            logger.removeHandler(handler)
            logging.getLogger("py.warnings").removeHandler(handler)


def read_scae_uns(path: str | os.PathLike) -> dict:
    """Return ``uns['scae']`` of a preprocessed ``.h5ad`` (the preprocessing record) alone.

    Reads that element only, not the matrices.
    """
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as file:
        return read_elem(file["uns/scae"]) if "uns/scae" in file else {}
