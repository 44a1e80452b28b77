import uuid
import pytest
from perfcycle import outbox
from tests.test_cycle_scenarios import *  # noqa
from tests.test_cycle_scenarios import test_rerunning_a_finished_cycle_changes_nothing as t_idem
from tests.test_cycle_scenarios import test_a_crash_mid_stage_converges_to_the_undisturbed_records as t_crash


def test_mut_idempotency(demo, monkeypatch):
    real = outbox.Mail.idempotency_key
    state = {"n": 0}
    def key(self):
        return real.fget(self) + (f":{uuid.uuid4()}" if self.template == "goals_to_agree" else "")
    monkeypatch.setattr(outbox.Mail, "idempotency_key", property(key))
    with pytest.raises(AssertionError, match="rows changed"):
        t_idem(demo)

def test_mut_crash(demo, reference_records, monkeypatch):
    # a crash that is not rolled back: evaluation stage mails twice with a different occurrence
    from perfcycle.stages import evaluation
    real = evaluation._assignment_row
    def row(cycle_id, rater, ratee, rt):
        r = real(cycle_id, rater, ratee, rt); r["round"] = 7; return r
    monkeypatch.setattr(evaluation, "_assignment_row", row)
    with pytest.raises(AssertionError):
        t_crash(demo, reference_records, monkeypatch, "target_setting enter, goals written, mails not")
