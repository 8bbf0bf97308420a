"""Run folders: the record of a training run (``config.json``), starting, resuming or skipping a
run, and loading a trained method from its folder. Above :mod:`semiseg.methods` (it builds them)
and below inference and studies (which use trained runs)."""

from semiseg.runs.record import CONFIG, RunRecord, read_run_record
from semiseg.runs.train import ensure_trained, load_trained, train

__all__ = ["CONFIG", "RunRecord", "ensure_trained", "load_trained", "read_run_record", "train"]
