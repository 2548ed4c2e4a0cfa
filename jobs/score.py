"""Entry point for Ray's Job API: ``ray job submit -- python jobs/score.py --config job.yaml``.

Thin on purpose: the same ``scoring run`` a laptop uses, joining the cluster the job runs on.
"""

from __future__ import annotations

import sys

from scoring.cli import cli

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--config"]:
        args = args[1:]
    cli(["run", *args], prog_name="jobs/score.py")
