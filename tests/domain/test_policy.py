"""Policy files: the shipped policies, the loader's errors (file, line, YAML path) and each rule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from perfcycle.cli.policy import check_command, schema_command
from perfcycle.core.errors import InvalidInput
from perfcycle.core.settings import REPO_ROOT
from perfcycle.domain.policy.checks import check_policy
from perfcycle.domain.policy.jsonschema import export_schema
from perfcycle.domain.policy.loader import PolicyError, load_policy
from perfcycle.domain.policy.registry import list_policies, policy_digest, policy_path
from perfcycle.domain.policy.schema import Extend, SqlSource
from perfcycle.domain.policy.snapshot import SNAPSHOT_VERSION, read_snapshot, snapshot_of

POLICIES = REPO_ROOT / "policies"
SHIPPED = ["external-service", "internal-service", "professional-support"]

# A small valid policy; tests break one thing and assert the exact error line.
# Line numbers matter: the comment on the right of some lines gives them.
BASE = """\
title: {zh-CN: 测试方案, en: Test policy}
department_types: [external_service]
grades:
  - {id: A, name: {zh-CN: 优秀, en: Excellent}, min: 90, bonus_factor: 1.2}
  - {id: C, name: {zh-CN: 合格, en: Meets}, min: 60}
  - {id: E, name: {zh-CN: 不合格, en: Unsatisfactory}, min: 0, bonus_factor: 0.85}
veto_cap: C
categories:
  - {id: result, name: {zh-CN: 结果, en: Results}, weight: 60}
  - {id: behaviour, name: {zh-CN: 行为, en: Behaviour}, weight: 30}
  - {id: veto, name: {zh-CN: 否决, en: Veto}, weight: 10}
indicators:
  - kind: metric
    id: csat
    name: {zh-CN: 满意度, en: Satisfaction}
    category: result
    weight: 100
    metric: satisfaction_pct
    rule: {type: linear_deduction, target: 95, per: 1, points: 2}
  - kind: rated
    id: attitude
    name: {zh-CN: 服务态度, en: Attitude}
    category: behaviour
    weight: 100
    rule: {type: bars}
    raters: [peer, superior]
    comment_required_for: [1, 5]
    anchors:
      5: {zh-CN: 很好, en: Great}
      4: {zh-CN: 好, en: Good}
      3: {zh-CN: 一般, en: Fair}
      2: {zh-CN: 差, en: Poor}
      1: {zh-CN: 很差, en: Bad}
  - kind: veto
    id: incident
    name: {zh-CN: 重大事故, en: Major incident}
    category: veto
    weight: 100
    trigger: {metric: major_incidents, above: 0}
raters:
  service_recipient: {weight: 50, count: 3}
  superior: {weight: 30}
  peer: {weight: 15}
  self: {weight: 5}
anonymity_threshold: 3
stages:
  - {name: target_setting, days: 7}
  - {name: data_collection, days: 3}
  - {name: evaluation, days: 10, on_deadline: {extend: 3}}
  - {name: calibration, days: 5, on_deadline: escalate}
  - {name: interview, days: 10}
  - {name: improvement, days: 30}
  - {name: appeal, days: 7}
calibration:
  cross_checks:
    - id: sat_vs_complaints
      if_metric: satisfaction_pct
      at_least: 95
      and_metric: complaint_rate_pct
      also_at_least: 3
      message: {zh-CN: 核查, en: Investigate}
improvement: {grades: [E]}
sources:
  - kind: sql
    id: tickets
    url: sqlite:///tickets.db
    queries:
      - SELECT employee_id, metric, value, evidence FROM m WHERE day >= :period_start
          AND day < :period_end
          AND metric IN ('satisfaction_pct', 'complaint_rate_pct', 'major_incidents')
"""


def write(tmp_path: Path, *edits: tuple[str, str], name: str = "p.yaml") -> Path:
    """BASE with each (old, new) replaced once; old must occur exactly once."""
    text = BASE
    for old, new in edits:
        assert text.count(old) == 1, f"edit target not unique: {old!r}"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return str(caught.value).splitlines()


# ---------------------------------------------------------------- shipped policies


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_loads_and_passes_its_checks(name: str) -> None:
    policy = load_policy(POLICIES / f"{name}.yaml")
    assert policy.id == name
    assert check_policy(policy) == []
    assert [c.weight for c in policy.categories] == [45, 35, 12, 8]
    assert [s.name.value for s in policy.stages] == [
        "target_setting",
        "data_collection",
        "evaluation",
        "calibration",
        "interview",
        "improvement",
        "appeal",
    ]
    assert policy.grade_ids() == ["A", "B", "C", "D", "E"]
    assert policy.veto_cap == "C"
    assert policy.improvement.grades == ["D", "E"]
    assert policy.anonymity_threshold == 3


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_follows_the_domain_defaults(name: str) -> None:
    policy = load_policy(POLICIES / f"{name}.yaml")
    ranges = {
        "service_recipient": (40, 60),
        "superior": (20, 30),
        "peer": (10, 20),
        "self": (5, 10),
        "third_party": (5, 15),
    }
    for rater, rule in policy.raters.items():
        low, high = ranges[rater.value]
        assert low <= rule.weight <= high, rater
    # The group with the most weight is large enough to be shown under the anonymity rule.
    recipients = next(r for t, r in policy.raters.items() if t.value == "service_recipient")
    assert recipients.count >= policy.anonymity_threshold
    assert sum(r.count for r in policy.raters.values()) == 7
    deadline_forms = {
        "extend" if isinstance(s.on_deadline, Extend) else s.on_deadline for s in policy.stages
    }
    assert deadline_forms == {"advance", "escalate", "extend"}
    rated = {i.id for i in policy.indicators if i.kind == "rated"}
    assert {"service_attitude", "teamwork", "learning"} <= rated
    assert any(i.kind == "veto" for i in policy.indicators)
    assert policy.calibration.cross_checks
    for text in [policy.title, *(i.name for i in policy.indicators)]:
        assert text.zh_CN and text.en


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_keeps_the_ticket_url_unexpanded(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFCYCLE_TICKETS_URL", "sqlite:///should-not-appear.db")
    policy = load_policy(POLICIES / f"{name}.yaml")
    (source,) = policy.sources
    assert isinstance(source, SqlSource)
    assert source.id == "tickets"
    assert source.url == "${PERFCYCLE_TICKETS_URL}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_starts_with_the_schema_comment(name: str) -> None:
    first = (POLICIES / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=schema.json"


def test_committed_schema_equals_the_export() -> None:
    committed = json.loads((POLICIES / "schema.json").read_text(encoding="utf-8"))
    assert committed == export_schema(), "run `perfcycle policy schema` to regenerate it"


@pytest.mark.parametrize("name", SHIPPED)
def test_editor_schema_accepts_the_shipped_policy(name: str) -> None:
    data = yaml.safe_load((POLICIES / f"{name}.yaml").read_text(encoding="utf-8"))
    # JSON has string keys only (anchors 1..5); editors see the YAML the same way.
    document = json.loads(json.dumps(data))
    jsonschema.Draft202012Validator(export_schema()).validate(document)


def test_editor_schema_rejects_an_id_key_like_the_loader() -> None:
    data = json.loads(json.dumps(yaml.safe_load((POLICIES / "external-service.yaml").read_text())))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(export_schema()).validate({**data, "id": "x"})


def test_policy_survives_a_json_snapshot_round_trip() -> None:
    # A cycle stores the policy as JSON and reads it again in every step of its run.
    policy = load_policy(POLICIES / "external-service.yaml")
    snapshot = json.loads(json.dumps(snapshot_of(policy)))
    assert read_snapshot(snapshot, SNAPSHOT_VERSION) == policy
    by_name = json.loads(json.dumps(policy.model_dump(mode="json", by_alias=False)))
    assert read_snapshot(by_name, SNAPSHOT_VERSION) == policy


# ---------------------------------------------------------------- finding policies


def test_list_policies_names_the_shipped_files() -> None:
    assert list_policies() == SHIPPED


def test_policy_path_resolves_a_name_and_a_path(tmp_path: Path) -> None:
    assert policy_path("external-service") == POLICIES / "external-service.yaml"
    own = write(tmp_path)
    assert policy_path(str(own)) == own


def test_unknown_policy_name_lists_the_available_ones() -> None:
    with pytest.raises(PolicyError) as caught:
        policy_path("external")
    assert str(caught.value) == (
        "policy: unknown policy 'external' "
        "(available: external-service, internal-service, professional-support)"
    )
    assert isinstance(caught.value, InvalidInput)


def test_policy_path_to_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match="no such policy file"):
        policy_path(str(missing))


def test_policy_digest_is_the_sha256_of_the_bytes_and_follows_edits(tmp_path: Path) -> None:
    path = write(tmp_path)
    before = policy_digest(path)
    assert before == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(BASE.replace("days: 7}", "days: 8}", 1), encoding="utf-8")
    assert policy_digest(path) != before


# ---------------------------------------------------------------- the loader


def test_base_policy_is_valid_and_takes_its_id_from_the_file_name(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, name="my-policy.yaml"))
    assert policy.id == "my-policy"
    assert policy.stage("evaluation").on_deadline == Extend(extend=3)


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, ("    weight: 100\n    metric:", "    wieght: 100\n    metric:"))
    assert errors(path) == [
        f"{path}:13: indicators.0.weight: required key is missing",
        f"{path}:17: indicators.0.wieght: unknown key 'wieght' (did you mean 'weight'? "
        "allowed: kind, id, name, category, weight, metric, higher_is_better, rule, locked)",
    ]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, ("anonymity_threshold: 3\n", "anonymity_threshold: 3\nreviewers: 2\n"))
    (line,) = errors(path)
    assert line.startswith(f"{path}:46: reviewers: unknown key 'reviewers' (allowed: title, ")


def test_wrong_type_names_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, ("  superior: {weight: 30}", "  superior: {weight: thirty}"))
    assert errors(path) == [
        f"{path}:42: raters.superior.weight: "
        "Input should be a valid number, unable to parse string as a number (got 'thirty')"
    ]


def test_every_schema_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ("    rule: {type: bars}", "    rule: {type: stars}"),
        ("{name: appeal, days: 7}", "{name: appeal, days: 0}"),
    )
    assert errors(path) == [
        f"{path}:25: indicators.1.rule.type: Input should be 'bars' (got 'stars')",
        f"{path}:53: stages.6.days: Input should be greater than or equal to 1 (got 0)",
    ]


def test_unknown_indicator_kind(tmp_path: Path) -> None:
    path = write(tmp_path, ("  - kind: veto\n", "  - kind: vetoed\n"))
    assert errors(path) == [
        f"{path}:34: indicators.2.kind: must be one of 'metric', 'rated', 'veto' (got 'vetoed')"
    ]


def test_unknown_rater_type(tmp_path: Path) -> None:
    path = write(tmp_path, ("  peer: {weight: 15}", "  colleague: {weight: 15}"))
    assert errors(path) == [
        f"{path}:43: raters.colleague: Input should be 'service_recipient', 'superior', 'peer', "
        "'self' or 'third_party' (got 'colleague')"
    ]


@pytest.mark.parametrize(
    "value", ["later", "{extend: 0}", "{extend: 3, then: escalate}", "{extend: many}"]
)
def test_on_deadline_has_one_clear_error(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, ("on_deadline: escalate}", f"on_deadline: {value}}}"))
    (line,) = errors(path)
    assert line.startswith(
        f"{path}:50: stages.3.on_deadline: must be advance, escalate or {{extend: DAYS}} "
        "with DAYS 1..60 (got "
    )


def test_missing_bilingual_name(tmp_path: Path) -> None:
    path = write(tmp_path, ("{zh-CN: 重大事故, en: Major incident}", "{zh-CN: 重大事故}"))
    assert errors(path) == [f"{path}:36: indicators.2.name.en: required key is missing"]


def test_id_key_is_rejected_because_the_file_name_is_the_id(tmp_path: Path) -> None:
    path = write(tmp_path, ("department_types:", "id: other\ndepartment_types:"))
    assert errors(path) == [f"{path}:2: id: the id is the file name; remove this key"]


def test_duplicate_yaml_key_is_reported(tmp_path: Path) -> None:
    # yaml.safe_load silently keeps the last one; the author meant one of them.
    path = write(
        tmp_path, ("    weight: 100\n    metric:", "    weight: 100\n    weight: 90\n    metric:")
    )
    assert errors(path) == [
        f"{path}:12: indicators: weights of category 'result' sum to 90, must be 100 (csat 90)",
        f"{path}:18: indicators.0.weight: duplicate key (first at line 17)",
    ]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, ("veto_cap: C\n", "veto_cap: [C\n"))
    (line,) = errors(path)
    assert line.startswith(f"{path}:8: not valid YAML: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "1: the file is empty; expected a policy mapping"),
        (b"- a\n- b\n", "1: expected a mapping of policy keys at the top"),
        (b"\xff\xfe\x00binary", " not UTF-8 text; is this a YAML policy file?"),
    ],
)
def test_not_a_policy_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(content)
    assert errors(path) == [f"{path}:{message}"]


def test_unreadable_file(tmp_path: Path) -> None:
    assert errors(tmp_path / "missing.yaml") == [
        f"{tmp_path / 'missing.yaml'}: no such policy file"
    ]
    assert errors(tmp_path)[0].startswith(f"{tmp_path}: cannot read the file: ")


# ---------------------------------------------------------------- cross-field rules


def test_category_weights_sum_to_100(tmp_path: Path) -> None:
    path = write(tmp_path, ("en: Results}, weight: 60}", "en: Results}, weight: 55}"))
    assert errors(path) == [f"{path}:8: categories: weights sum to 95, must be 100"]


def test_indicator_weights_within_a_category_sum_to_100(tmp_path: Path) -> None:
    path = write(tmp_path, ("    weight: 100\n    metric:", "    weight: 90\n    metric:"))
    assert errors(path) == [
        f"{path}:12: indicators: weights of category 'result' sum to 90, must be 100 (csat 90)"
    ]


def test_rater_weights_sum_to_100(tmp_path: Path) -> None:
    path = write(tmp_path, ("  peer: {weight: 15}", "  peer: {weight: 10}"))
    assert errors(path) == [f"{path}:40: raters: weights sum to 95, must be 100"]


def test_indicator_category_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, ("    category: result\n", "    category: results\n"))
    assert errors(path) == [
        f"{path}:9: categories.0: category 'result' has no indicators",
        f"{path}:16: indicators.0.category: unknown category 'results' "
        "(categories: result, behaviour, veto)",
    ]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("{id: veto, name: {zh-CN: 否决", "{id: result, name: {zh-CN: 否决"),
            [
                "11: categories.2.id: duplicate id 'result' (first at categories.0)",
                "37: indicators.2.category: unknown category 'veto' "
                "(categories: result, behaviour, result)",
            ],
        ),
        (
            ("    id: incident\n", "    id: csat\n"),
            ["35: indicators.2.id: duplicate id 'csat' (first at indicators.0)"],
        ),
        (
            ("{id: E, name:", "{id: A, name:"),
            [
                "6: grades.2.id: duplicate id 'A' (first at grades.0)",
                "62: improvement.grades.0: unknown grade 'E' (grades: A, C, A)",
            ],
        ),
        (
            ("{name: appeal, days: 7}", "{name: interview, days: 7}"),
            ["53: stages.6.name: duplicate name 'interview' (first at stages.4)"],
        ),
        (
            (
                "      message: {zh-CN: 核查, en: Investigate}\n",
                "      message: {zh-CN: 核查, en: Investigate}\n"
                "    - {id: sat_vs_complaints, if_metric: satisfaction_pct, at_least: 99,\n"
                "       and_metric: complaint_rate_pct, also_at_least: 1,\n"
                "       message: {zh-CN: 核查, en: Check}}\n",
            ),
            [
                "62: calibration.cross_checks.1.id: duplicate id 'sat_vs_complaints' "
                "(first at calibration.cross_checks.0)"
            ],
        ),
    ],
)
def test_ids_are_unique(tmp_path: Path, edit: tuple[str, str], expected: list[str]) -> None:
    path = write(tmp_path, edit)
    assert errors(path) == [f"{path}:{e}" for e in expected]


def test_source_ids_are_unique(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ("sources:\n", "sources:\n  - {kind: csv, id: tickets, path: extra.csv}\n"),
    )
    assert errors(path) == [f"{path}:66: sources.1.id: duplicate id 'tickets' (first at sources.0)"]


def test_grades_strictly_descending_by_min(tmp_path: Path) -> None:
    path = write(tmp_path, ("en: Meets}, min: 60}", "en: Meets}, min: 90}"))
    assert errors(path) == [
        f"{path}:5: grades.1.min: grades must be strictly descending by min: 90 is not below 90 (A)"
    ]


def test_last_grade_min_is_0(tmp_path: Path) -> None:
    path = write(tmp_path, ("min: 0, bonus_factor: 0.85", "min: 10, bonus_factor: 0.85"))
    assert errors(path) == [f"{path}:6: grades.2.min: the last grade's min must be 0, is 10"]


def test_bonus_factor_does_not_grow_for_a_lower_grade(tmp_path: Path) -> None:
    path = write(tmp_path, ("min: 0, bonus_factor: 0.85", "min: 0, bonus_factor: 1.5"))
    assert errors(path) == [
        f"{path}:6: grades.2.bonus_factor: bonus_factor 1.5 is above the higher grade C's 1"
    ]


def test_veto_cap_names_an_existing_grade(tmp_path: Path) -> None:
    path = write(tmp_path, ("veto_cap: C\n", "veto_cap: B\n"))
    assert errors(path) == [f"{path}:7: veto_cap: unknown grade 'B' (grades: A, C, E)"]


def test_veto_cap_at_the_top_grade_caps_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, ("veto_cap: C\n", "veto_cap: A\n"))
    assert errors(path) == [
        f"{path}:7: veto_cap: 'A' is the highest grade, so a triggered veto would cap nothing"
    ]


def test_improvement_grades_name_existing_grades(tmp_path: Path) -> None:
    path = write(tmp_path, ("improvement: {grades: [E]}", "improvement: {grades: [E, F]}"))
    assert errors(path) == [f"{path}:62: improvement.grades.1: unknown grade 'F' (grades: A, C, E)"]


def test_rated_indicator_has_anchors_for_exactly_levels_1_to_5(tmp_path: Path) -> None:
    path = write(
        tmp_path, ("      1: {zh-CN: 很差, en: Bad}", "      6: {zh-CN: 极好, en: Superb}")
    )
    assert errors(path) == [
        f"{path}:28: indicators.1.anchors: anchors must describe exactly levels 1..5 "
        "(missing 1; unexpected 6)"
    ]


def test_rated_indicator_raters_are_types_in_raters(tmp_path: Path) -> None:
    path = write(tmp_path, ("raters: [peer, superior]", "raters: [peer, third_party]"))
    assert errors(path) == [
        f"{path}:26: indicators.1.raters.1: rater type 'third_party' is not in `raters` "
        "(service_recipient, superior, peer, self)"
    ]


def test_rated_indicator_raters_listed_once(tmp_path: Path) -> None:
    path = write(tmp_path, ("raters: [peer, superior]", "raters: [peer, peer]"))
    assert errors(path) == [
        f"{path}:26: indicators.1.raters.1: duplicate entry 'peer' (first at indicators.1.raters.0)"
    ]


def test_comment_required_for_levels_within_1_to_5(tmp_path: Path) -> None:
    path = write(tmp_path, ("comment_required_for: [1, 5]", "comment_required_for: [0, 5]"))
    assert errors(path) == [
        f"{path}:27: indicators.1.comment_required_for.0: level 0 is not within 1..5"
    ]


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (  # evaluation before data collection
            [
                ("  - {name: data_collection, days: 3}\n", ""),
                (
                    "  - {name: calibration,",
                    "  - {name: data_collection, days: 3}\n  - {name: calibration,",
                ),
            ],
            ["48: stages.1.name: evaluation must come after data_collection (stages.2)"],
        ),
        (  # evaluation before target setting
            [
                ("  - {name: target_setting, days: 7}\n", ""),
                (
                    "  - {name: calibration,",
                    "  - {name: target_setting, days: 7}\n  - {name: calibration,",
                ),
            ],
            ["48: stages.1.name: evaluation must come after target_setting (stages.2)"],
        ),
        (  # calibration before evaluation
            [
                ("  - {name: evaluation, days: 10, on_deadline: {extend: 3}}\n", ""),
                (
                    "  - {name: interview,",
                    "  - {name: evaluation, days: 10}\n  - {name: interview,",
                ),
            ],
            ["49: stages.2.name: calibration must come after evaluation (stages.3)"],
        ),
        (  # interview before calibration
            [
                ("  - {name: interview, days: 10}\n", ""),
                (
                    "  - {name: calibration,",
                    "  - {name: interview, days: 10}\n  - {name: calibration,",
                ),
            ],
            ["50: stages.3.name: interview must come after calibration (stages.4)"],
        ),
        (  # appeal before calibration
            [
                ("  - {name: appeal, days: 7}\n", ""),
                ("  - {name: calibration,", "  - {name: appeal, days: 7}\n  - {name: calibration,"),
            ],
            ["50: stages.3.name: appeal must come after calibration (stages.4)"],
        ),
        (  # improvement before interview
            [
                ("  - {name: improvement, days: 30}\n", ""),
                (
                    "  - {name: interview,",
                    "  - {name: improvement, days: 30}\n  - {name: interview,",
                ),
            ],
            ["51: stages.4.name: improvement must come after interview (stages.5)"],
        ),
    ],
    ids=[
        "eval<data",
        "eval<targets",
        "calib<eval",
        "interview<calib",
        "appeal<calib",
        "plan<interview",
    ],
)
def test_stage_order(tmp_path: Path, edits: list[tuple[str, str]], expected: list[str]) -> None:
    path = write(tmp_path, *edits)
    assert errors(path) == [f"{path}:{e}" for e in expected]


def test_stages_may_be_omitted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ("  - {name: target_setting, days: 7}\n", ""),
        ("  - {name: interview, days: 10}\n", ""),
        ("  - {name: improvement, days: 30}\n", ""),
        ("  - {name: appeal, days: 7}\n", ""),
    )
    assert [s.name.value for s in load_policy(path).stages] == [
        "data_collection",
        "evaluation",
        "calibration",
    ]


def test_calibration_needs_evaluation(tmp_path: Path) -> None:
    path = write(tmp_path, ("  - {name: evaluation, days: 10, on_deadline: {extend: 3}}\n", ""))
    assert errors(path) == [
        f"{path}:46: stages: rated indicators need an evaluation stage",
        f"{path}:49: stages.2.name: calibration needs an evaluation stage before it",
    ]


def test_metric_indicators_need_data_collection(tmp_path: Path) -> None:
    path = write(tmp_path, ("  - {name: data_collection, days: 3}\n", ""))
    assert errors(path) == [
        f"{path}:46: stages: metric and veto indicators need a data_collection stage"
    ]


def test_anonymity_threshold_must_be_reachable(tmp_path: Path) -> None:
    path = write(tmp_path, ("anonymity_threshold: 3", "anonymity_threshold: 5"))
    assert errors(path) == [
        f"{path}:45: anonymity_threshold: 5 can never be met: no rater group besides self has "
        "that many raters (service_recipient 3, superior 1, peer 1)"
    ]


def test_self_is_rated_once(tmp_path: Path) -> None:
    path = write(tmp_path, ("  self: {weight: 5}", "  self: {weight: 5, count: 2}"))
    assert errors(path) == [
        f"{path}:44: raters.self.count: a ratee rates themself once; count must be 1, is 2"
    ]


def test_sql_metrics_must_be_produced_by_a_query(tmp_path: Path) -> None:
    path = write(tmp_path, ("    metric: satisfaction_pct\n", "    metric: satisfaction\n"))
    assert errors(path) == [
        f"{path}:18: indicators.0.metric: no source query produces metric 'satisfaction' "
        "(sources: tickets)"
    ]


def test_sql_query_must_filter_on_the_period(tmp_path: Path) -> None:
    path = write(tmp_path, ("          AND day < :period_end\n", ""))
    assert errors(path) == [
        f"{path}:68: sources.0.queries.0: the query must filter on the period: :period_end not used"
    ]


def test_cross_check_metrics_must_be_produced(tmp_path: Path) -> None:
    path = write(tmp_path, ("and_metric: complaint_rate_pct", "and_metric: complaints"))
    assert errors(path) == [
        f"{path}:59: calibration.cross_checks.0.and_metric: no source query produces metric "
        "'complaints' (sources: tickets)"
    ]


def test_all_rule_violations_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ("en: Results}, weight: 60}", "en: Results}, weight: 50}"),
        ("veto_cap: C\n", "veto_cap: X\n"),
        ("  peer: {weight: 15}", "  peer: {weight: 10}"),
    )
    assert errors(path) == [
        f"{path}:7: veto_cap: unknown grade 'X' (grades: A, C, E)",
        f"{path}:8: categories: weights sum to 90, must be 100",
        f"{path}:40: raters: weights sum to 95, must be 100",
    ]


# ---------------------------------------------------------------- CLI commands


def test_check_command_reports_ok_and_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = POLICIES / "external-service.yaml"
    bad = write(tmp_path, ("veto_cap: C\n", "veto_cap: X\n"), name="bad.yaml")
    assert check_command([good, bad]) == 1
    out, err = capsys.readouterr()
    assert out == f"OK {good} (11 indicators, 7 stages)\n"
    assert err == f"{bad}:7: veto_cap: unknown grade 'X' (grades: A, C, E)\n"
    assert check_command([good]) == 0


def test_schema_command_writes_the_export(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert schema_command(out) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == export_schema()
