"""The words the mails and the portal share, in zh-CN and en: the one place to change them.

Task actions (what a reminder, an escalation and the home page say a task is), rater types,
appeal outcomes, record states, stage titles and the mailing lists' names, plus the words of
the mails' frame. Mail templates reach them through render's filters (`task`, `rater_type`,
`outcome`, `stage`) and `ui`; the portal registers them in its catalog (perfcycle.web.i18n)
under `rater.*`, `*.state.*` keys; reminders word tasks with `task_action`.

Imports nothing of perfcycle: the domain (reports), notifications and the portal all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

LOCALES = ("zh-CN", "en")


@dataclass(frozen=True)
class Words:
    """One thing said in both languages the product ships."""

    zh_CN: str
    en: str

    def get(self, locale: str) -> str:
        """'zh', 'zh-CN', 'zh_Hans' read Chinese; every other locale reads English."""
        return self.zh_CN if locale.lower().startswith("zh") else self.en

    def as_dict(self) -> dict[str, str]:
        return {"zh-CN": self.zh_CN, "en": self.en}


def catalog(prefix: str, table: Mapping[str, Words]) -> dict[str, dict[str, str]]:
    """A table as portal catalog entries: {f"{prefix}{key}": {"zh-CN": ..., "en": ...}}."""
    return {f"{prefix}{key}": words.as_dict() for key, words in table.items()}


# ---------------------------------------------------------------- task actions

# What a person is asked to do (PendingTask.action); perfcycle.notifications.task_kinds says
# which link kind each one opens.
TaskAction = Literal[
    "submit_goals",
    "approve_goals",
    "evaluate",
    "record_interview",
    "acknowledge_interview",
    "close_plan",
    "answer_results",
]


@dataclass(frozen=True)
class ActionWords:
    # The task on its own, e.g. "Rate colleagues" (a mail that names no people).
    plain: Words
    # The task about the people it concerns: {who} is their names, e.g. "Rate Li Lei".
    about: Words


TASK_ACTIONS: dict[TaskAction, ActionWords] = {
    "submit_goals": ActionWords(
        Words("确认并提交本期绩效目标", "Review and submit your goals"),
        Words("确认并提交本期绩效目标", "Review and submit your goals"),
    ),
    "approve_goals": ActionWords(
        Words("审批下属的绩效目标", "Approve your team's goals"),
        Words("审批{who}的绩效目标", "Approve the goals of {who}"),
    ),
    "evaluate": ActionWords(
        Words("完成同事评价", "Rate colleagues"),
        Words("完成对{who}的评价", "Rate {who}"),
    ),
    "record_interview": ActionWords(
        Words("进行绩效面谈并记录", "Hold and record review interviews"),
        Words("与{who}进行绩效面谈并记录", "Hold and record the interview with {who}"),
    ),
    "acknowledge_interview": ActionWords(
        Words("确认绩效面谈记录", "Acknowledge your interview record"),
        Words("确认绩效面谈记录", "Acknowledge your interview record"),
    ),
    "close_plan": ActionWords(
        Words("跟进并验收改进计划", "Follow up and close improvement plans"),
        Words("跟进并验收{who}的改进计划", "Follow up and close the plan of {who}"),
    ),
    "answer_results": ActionWords(
        Words("确认考核结果或提出申诉", "Accept your results or file an appeal"),
        Words("确认考核结果或提出申诉", "Accept your results or file an appeal"),
    ),
}


# ---------------------------------------------------------------- raters, outcomes, states

RATER_TYPES: dict[str, Words] = {
    "service_recipient": Words("服务对象", "service recipient"),
    "superior": Words("上级", "manager"),
    "peer": Words("同事", "peer"),
    "self": Words("自评", "self-assessment"),
    "third_party": Words("第三方", "third party"),
}

# What an appeal came to (Appeal.outcome).
APPEAL_OUTCOMES: dict[str, Words] = {
    "upheld": Words("维持原结果", "original result upheld"),
    "adjusted": Words("等级已调整", "grade adjusted"),
    "re_evaluated": Words("重新评价", "to be re-evaluated"),
}

# Record states as people read them, by record: RaterAssignment.state, a goal sheet's state
# (its goals' state, "none" without any) and StageInstance.state.
EVALUATION_STATES: dict[str, Words] = {
    "pending": Words("待填写", "to do"),
    "submitted": Words("已提交", "submitted"),
    "expired": Words("已过期", "closed without an answer"),
}
GOAL_SHEET_STATES: dict[str, Words] = {
    "proposed": Words("待员工确认", "waiting for the employee"),
    "submitted": Words("待经理审批", "waiting for the manager"),
    "agreed": Words("已达成一致", "agreed"),
    "none": Words("无目标", "no goals"),
}
STAGE_STATES: dict[str, Words] = {
    "pending": Words("未开始", "not started"),
    "open": Words("进行中", "open"),
    "completed": Words("已完成", "completed"),
}


# ---------------------------------------------------------------- stages and mailing lists

# By StageName.
STAGE_TITLES: dict[str, Words] = {
    "target_setting": Words("目标设定", "Target setting"),
    "data_collection": Words("数据采集", "Data collection"),
    "evaluation": Words("多维评价", "Multi-rater evaluation"),
    "calibration": Words("结果校准", "Calibration"),
    "interview": Words("绩效面谈", "Review interview"),
    "improvement": Words("改进计划跟踪", "Improvement plans"),
    "appeal": Words("申诉", "Appeal"),
}

# By the mailing-list Role (policy.GROUP_ROLES): the name their mail greets.
GROUP_NAMES: dict[str, Words] = {
    "hr": Words("人力资源部", "HR"),
    "committee": Words("绩效校准委员会", "Calibration committee"),
    "supervision": Words("考核监督小组", "Supervision committee"),
}


# ---------------------------------------------------------------- the mails' frame

MAIL_FRAME: dict[str, Words] = {
    "brand": Words("绩效考核", "Performance review"),
    "greeting": Words("{name}，您好：", "Dear {name},"),
    "greeting_plain": Words("您好：", "Hello,"),
    "deadline": Words("截止时间", "Deadline"),
    "colon": Words("：", ": "),
    "open": Words("打开", "Open"),
    "button_fallback": Words(
        "如果按钮无法打开，请将以下链接复制到浏览器：",
        "If the button does not work, copy this link into your browser:",
    ),
    "why": Words(
        "您收到这封邮件，是因为您参与了本次绩效考核。",
        "You received this email because you take part in this performance review.",
    ),
    "contact": Words("如有疑问，请联系人力资源部", "Questions? Contact HR"),
    "auto": Words(
        "此邮件由系统自动发送，请勿直接回复。",
        "This email was sent automatically; please do not reply to it.",
    ),
}


# ---------------------------------------------------------------- lookups


def task_action(action: str, locale: str, who: str | None = None) -> str:
    """A task in the reader's language: about `who` when given, else on its own; an action
    this table does not know is shown as given."""
    words = TASK_ACTIONS.get(cast(TaskAction, action))
    if words is None:
        return action
    return (words.about if who is not None else words.plain).get(locale).format(who=who)


def stage_title(name: str, locale: str) -> str:
    words = STAGE_TITLES.get(str(name))
    return words.get(locale) if words else str(name)


TABLES: dict[str, Mapping[str, Words]] = {
    "TASK_ACTIONS.plain": {k: v.plain for k, v in TASK_ACTIONS.items()},
    "TASK_ACTIONS.about": {k: v.about for k, v in TASK_ACTIONS.items()},
    "RATER_TYPES": RATER_TYPES,
    "APPEAL_OUTCOMES": APPEAL_OUTCOMES,
    "EVALUATION_STATES": EVALUATION_STATES,
    "GOAL_SHEET_STATES": GOAL_SHEET_STATES,
    "STAGE_STATES": STAGE_STATES,
    "STAGE_TITLES": STAGE_TITLES,
    "GROUP_NAMES": GROUP_NAMES,
    "MAIL_FRAME": MAIL_FRAME,
}
