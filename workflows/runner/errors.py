"""The runner's three kinds of failure, each caught at a different level."""

from __future__ import annotations


class WorkflowError(ValueError):
    """The workflow cannot run locally as written; the message names the field and the fix."""


class Unresolved(Exception):
    """A {{variable}} that has no value here (the reason is the message)."""


class TaskError(Exception):
    """A task or node cannot be started; it ends in phase Error with this message."""
