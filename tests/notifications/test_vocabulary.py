"""The shared words: every entry in both languages, and the mails and the portal read the same."""

from __future__ import annotations

from typing import get_args

import pytest

from perfcycle.domain.models import StageName
from perfcycle.domain.reports import stage_heading
from perfcycle.domain.stages.base import PendingTask
from perfcycle.notifications import reminders, render, vocabulary
from perfcycle.notifications.events import GROUP_ROLES, Role
from perfcycle.notifications.vocabulary import Words
from perfcycle.web import i18n


@pytest.mark.parametrize("table", sorted(vocabulary.TABLES))
def test_every_entry_has_both_languages(table: str) -> None:
    entries = vocabulary.TABLES[table]
    assert entries
    for key, words in entries.items():
        assert isinstance(words, Words), key
        assert words.zh_CN.strip() and words.en.strip(), f"{table}[{key}]"
        assert " / " not in words.zh_CN + words.en, f"{table}[{key}] holds two languages in one"


def test_the_tables_cover_every_action_stage_and_mailing_list() -> None:
    assert set(vocabulary.TASK_ACTIONS) == set(get_args(vocabulary.TaskAction))
    assert set(vocabulary.STAGE_TITLES) == {s.value for s in StageName}
    assert set(vocabulary.GROUP_NAMES) == {r.value for r in GROUP_ROLES}


def test_a_task_is_worded_on_its_own_or_about_its_people() -> None:
    assert vocabulary.task_action("evaluate", "en") == "Rate colleagues"
    assert vocabulary.task_action("evaluate", "zh-CN", who="李雷") == "完成对李雷的评价"
    assert vocabulary.task_action("approve_goals", "en-GB", who="Li Lei") == (
        "Approve the goals of Li Lei"
    )
    # Text already worded (a digest entry) passes through.
    assert vocabulary.task_action("Rate Li Lei", "en") == "Rate Li Lei"


def test_mails_portal_and_artifacts_read_the_same_words() -> None:
    for locale in vocabulary.LOCALES:
        t = i18n.translator(locale)
        for key, words in vocabulary.RATER_TYPES.items():
            assert (
                t(f"rater.{key}")
                == words.get(locale)
                == render.FILTERS["rater_type"](_Ctx(locale), key)
            )
        for key, words in vocabulary.STAGE_STATES.items():
            assert t(f"hr.stage_state.{key}") == words.get(locale)
        for name, words in vocabulary.STAGE_TITLES.items():
            assert render.stage_title(name, locale) == words.get(locale)
        for action in vocabulary.TASK_ACTIONS:
            assert render.FILTERS["task"](_Ctx(locale), action) == vocabulary.task_action(
                action, locale
            )
        assert render.UI[locale]["brand"] == vocabulary.MAIL_FRAME["brand"].get(locale)
    assert stage_heading("appeal") == "Appeal / 申诉"
    task = PendingTask(Role.rater, "evaluate", "evaluation", "evaluation:1", ("Han Mei", "Li Lei"))
    assert reminders.describe(task, "en") == "Rate Han Mei and Li Lei"
    assert reminders.describe(task, "zh-CN") == "完成对Han Mei、Li Lei的评价"


class _Ctx(dict[str, str]):
    """What a Jinja context offers the filters: the mail's locale."""

    def __init__(self, locale: str) -> None:
        super().__init__(locale=locale)
