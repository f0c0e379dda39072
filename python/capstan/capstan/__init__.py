"""capstan's Python runtime: what a recipe knows about the run it is part of.

Installed into every base image and usable in local code environments. The data plane
(datasets in and out) builds on this module.
"""

import os

__version__ = "0.1.0"

_FIELDS = {
    "job_id": "CAPSTAN_JOB_ID",
    "activity_id": "CAPSTAN_ACTIVITY_ID",
    "project": "CAPSTAN_PROJECT",
    "recipe": "CAPSTAN_RECIPE",
    "user": "CAPSTAN_USER",
    "exec_config": "CAPSTAN_EXEC_CONFIG",
}


def in_capstan():
    """Whether this process runs as a capstan activity."""
    return "CAPSTAN_ACTIVITY_ID" in os.environ


def context():
    """The run this process belongs to: job, activity, project, recipe, user, exec config.

    Outside capstan every value is None, so a recipe can be tried with plain `python3`.
    """
    return {name: os.environ.get(var) for name, var in _FIELDS.items()}
