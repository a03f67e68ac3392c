"""The rules shared by the apply/revert state machines: a model of the ordered active edit ids."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

N_EDITS = 4
EDIT_IDS = tuple(f"edit-{i}" for i in range(N_EDITS))

STATEFUL_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class ActiveListMachine(RuleBasedStateMachine):
    """apply(edit) / revert(edit) / set_active(ordered subset) against ``self.active``, the model.

    Subclasses perform each step on the system under test, check the expected outcome (including
    the errors of invalid steps) and keep ``self.active`` up to date.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active: list[str] = []

    @rule(i=st.integers(0, N_EDITS - 1))
    def apply(self, i: int) -> None:
        self.do_apply(EDIT_IDS[i])

    @rule(i=st.integers(0, N_EDITS - 1))
    def revert(self, i: int) -> None:
        self.do_revert(EDIT_IDS[i])

    @rule(order=st.permutations(range(N_EDITS)), k=st.integers(0, N_EDITS))
    def set_active(self, order: list[int], k: int) -> None:
        self.do_set_active([EDIT_IDS[j] for j in order[:k]])

    @rule(data=st.data())
    def revert_all(self, data: st.DataObject) -> None:
        for edit_id in data.draw(st.permutations(self.active), label="revert order"):
            self.do_revert(edit_id)
        assert self.active == []
        self.check_pristine()

    def teardown(self) -> None:
        for edit_id in list(reversed(self.active)):
            self.do_revert(edit_id)
        self.check_pristine()

    def do_apply(self, edit_id: str) -> None:
        raise NotImplementedError

    def do_revert(self, edit_id: str) -> None:
        raise NotImplementedError

    def do_set_active(self, edit_ids: list[str]) -> None:
        raise NotImplementedError

    def check_pristine(self) -> None:
        """No edit is active: the system is as it was before any step."""
        raise NotImplementedError
