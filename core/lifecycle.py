"""A version's place in its lifecycle, worked out from what the registry and the slot hold.

The registry stores what was decided about a version (``available``, ``rejected``,
``removed``); the serving slot knows what serves now. What an operator sees, one of
``deployed``, ``fallback``, ``candidate`` (on trial beside the deployed version, see
:mod:`modeld.core.shadow`), ``retired`` (served once, not now), ``available`` (never served),
``rejected`` or ``removed``, is a pure function of the two, computed here so that the API, the
dashboard and the CLI never work it out on their own.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LifecycleState", "PlanStatus", "lifecycle_state", "plan_status"]

LifecycleState = Literal["deployed", "fallback", "candidate", "retired", "available", "rejected",
                         "removed"]


def lifecycle_state(stored_status: str, version: str, deployed_at: str | None,
                    deployed: str | None, fallback: str | None,
                    candidate: str | None = None) -> LifecycleState:
    """The state an operator sees for ``version``.

    ``stored_status`` is the registry's status, ``deployed_at`` when the version last started
    serving (None if never), ``deployed``/``fallback`` the versions the slot holds now,
    ``candidate`` the registry's candidate.
    """
    if version == deployed:
        return "deployed"
    if version == fallback:
        return "fallback"
    if version == candidate and stored_status == "available":
        return "candidate"
    if stored_status == "available":
        return "retired" if deployed_at else "available"
    if stored_status == "rejected":
        return "rejected"
    return "removed"


PlanStatus = Literal["deployed", "available", "rejected", "removed"]


def plan_status(state: LifecycleState) -> PlanStatus:
    """The seed plan's ``deployment_info.status`` for a lifecycle state: ``deployed`` for the
    version serving now, ``available`` for any other version that could be deployed."""
    if state == "deployed":
        return "deployed"
    if state in ("fallback", "retired", "available"):
        return "available"
    return "rejected" if state == "rejected" else "removed"
