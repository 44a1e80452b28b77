"""The portal's message catalog, zh-CN and en: `t(key, **values)` in every template.

Page modules add their own keys at import time with `add_messages({...})`; every key must have
both languages, and a key is defined once. An unknown key raises KeyError (like StrictUndefined):
a missing translation shows up in tests, not as an empty button.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from perfcycle.core.errors import Problem
from perfcycle.notifications import vocabulary

LOCALES = ("zh-CN", "en")
DEFAULT_LOCALE = "zh-CN"

_CATALOG: dict[str, dict[str, str]] = {}


def add_messages(messages: Mapping[str, Mapping[str, str]]) -> None:
    """Register `{key: {"zh-CN": ..., "en": ...}}`; re-registering identical text is harmless."""
    problems = []
    for key, texts in messages.items():
        missing = [loc for loc in LOCALES if not texts.get(loc)]
        if missing:
            problems.append(f"{key}: missing {', '.join(missing)}")
        elif key in _CATALOG and _CATALOG[key] != dict(texts):
            problems.append(f"{key}: already defined with other text")
    if problems:
        raise ValueError("portal messages: " + "; ".join(problems))
    for key, texts in messages.items():
        _CATALOG[key] = {loc: texts[loc] for loc in LOCALES}


def supported_locale(locale: str | None) -> str:
    """The catalog language for an employee's locale ('en-GB' -> 'en', 'zh' -> 'zh-CN')."""
    if not locale:
        return DEFAULT_LOCALE
    if locale in LOCALES:
        return locale
    base = locale.replace("_", "-").split("-")[0].lower()
    for known in LOCALES:
        if known.split("-")[0].lower() == base:
            return known
    return DEFAULT_LOCALE


def translate(key: str, locale: str, **values: Any) -> str:
    try:
        text = _CATALOG[key][supported_locale(locale)]
    except KeyError:
        raise KeyError(f"portal message {key!r} is not in perfcycle.web.i18n") from None
    return text.format(**values) if values else text


def translator(locale: str) -> Callable[..., str]:
    def t(key: str, **values: Any) -> str:
        return translate(key, locale, **values)

    return t


def problem_text(problem: Problem, locale: str) -> str:
    """A domain problem in the reader's language where the catalog words its code; as the
    domain wrote it otherwise."""
    key = f"problem.{problem.code}"
    if problem.code is None or key not in _CATALOG:
        return problem.message
    return translate(key, locale, **dict(problem.values))


def keys() -> frozenset[str]:
    return frozenset(_CATALOG)


add_messages(
    {
        # domain problems by code (problem_text); values as the domain passes them
        "problem.text_length": {
            "zh-CN": "需要 {low} 到 {high} 个字符",
            "en": "Needs {low} to {high} characters",
        },
        "problem.missing_score": {"zh-CN": "请选择分数", "en": "Choose a score"},
        "problem.bad_score": {
            "zh-CN": "分数必须是 1 到 5 的整数（收到 {score}）",
            "en": "The score must be a whole number from 1 to 5 (got {score})",
        },
        "problem.comment_needed": {
            "zh-CN": "选择 {score} 分时请填写评语",
            "en": "A score of {score} needs a comment",
        },
        "problem.unknown_item": {
            "zh-CN": "“{item}”不是本评价表的项目，未保存任何内容",
            "en": "“{item}” is not an item of this form; nothing was saved",
        },
        "problem.above_zero": {"zh-CN": "必须大于 0", "en": "Must be above 0"},
        "problem.not_a_number": {
            "zh-CN": "请输入数字（收到“{value}”）",
            "en": "Enter a number (got “{value}”)",
        },
        "problem.not_a_date": {
            "zh-CN": "请输入日期，如 2026-12-31（收到“{value}”）",
            "en": "Enter a date like 2026-12-31 (got “{value}”)",
        },
        "problem.date_in_period": {
            "zh-CN": "须在考核期 {start} 至 {end} 之内",
            "en": "Must fall within the period {start} to {end}",
        },
        "problem.weights_sum": {
            "zh-CN": "个人目标权重合计为 {total}%，应为 {share}%",
            "en": "The personal goals' weights add up to {total}%; they must add up to {share}%",
        },
        "problem.too_many_goals": {
            "zh-CN": "最多 {max} 个个人目标，填写了 {got} 个",
            "en": "At most {max} personal goals; {got} were filled in",
        },
        "problem.too_few_goals": {
            "zh-CN": "提交前至少需要 {min} 个个人目标",
            "en": "Add at least {min} personal goals before signing",
        },
        "problem.locked": {
            "zh-CN": "该目标值由考核方案锁定，不能修改",
            "en": "The policy locks this target; it cannot change",
        },
        "problem.not_own_goals": {
            "zh-CN": "只有员工本人可以修改或提交自己的目标",
            "en": "Only the employee can change or submit their own goals",
        },
        "problem.not_the_approver": {
            "zh-CN": "只有其直属上级（{manager}）可以审批或退回 {employee} 的目标",
            "en": "Only their manager ({manager}) can approve or return {employee}'s goals",
        },
        # Pages answer StageClosed with their 409 page naming the stage; this is the fallback.
        "problem.stage_closed": {
            "zh-CN": "该阶段已不再接受提交，未做任何更改",
            "en": "This stage no longer accepts submissions; nothing was changed",
        },
        "problem.not_the_approver_hr": {
            "zh-CN": "{employee} 在本周期没有直属上级，只有人力资源部可以审批或退回其目标",
            "en": "{employee} has no manager in this cycle: only HR can approve or return "
            "their goals",
        },
        "problem.return_reason": {
            "zh-CN": "请说明退回的原因",
            "en": "Say why the goals are returned",
        },
        "portal_title": {"zh-CN": "绩效考核门户", "en": "Performance portal"},
        "language": {"zh-CN": "语言", "en": "Language"},
        "lang.zh-CN": {"zh-CN": "中文", "en": "中文"},
        "lang.en": {"zh-CN": "English", "en": "English"},
        "home": {"zh-CN": "首页", "en": "Home"},
        "sign_out": {"zh-CN": "退出登录", "en": "Sign out"},
        "sign_in": {"zh-CN": "登录", "en": "Sign in"},
        "signed_in_as": {"zh-CN": "当前用户：{name}", "en": "Signed in as {name}"},
        "email": {"zh-CN": "电子邮箱", "en": "Email address"},
        "send": {"zh-CN": "发送", "en": "Send"},
        "back_home": {"zh-CN": "返回首页", "en": "Back to the home page"},
        "status_code": {"zh-CN": "状态码 {code}", "en": "Status {code}"},
        # roles
        "role.hr_admin": {"zh-CN": "人力资源管理员", "en": "HR administrator"},
        "role.committee": {"zh-CN": "绩效校准委员会", "en": "calibration committee"},
        "role.supervision": {"zh-CN": "考核监督小组", "en": "supervision committee"},
        "role.manager": {"zh-CN": "经理", "en": "manager"},
        "role.employee": {"zh-CN": "员工", "en": "employee"},
        "role.auditor": {"zh-CN": "审计员", "en": "auditor"},
        # what happened (error pages)
        "sign_in_required": {"zh-CN": "请先登录", "en": "Please sign in"},
        "sign_in_required_text": {
            "zh-CN": "请使用邮件中的链接登录，或在下方申请新的登录链接。",
            "en": "Sign in with the link from your email, or ask for a new sign-in link below.",
        },
        "forbidden": {"zh-CN": "无权访问", "en": "Not allowed"},
        "needs_role": {
            "zh-CN": "此页面需要以下角色之一：{roles}。",
            "en": "This page needs one of these roles: {roles}.",
        },
        "link_unknown": {"zh-CN": "链接无效", "en": "This link is not valid"},
        "link_unknown_text": {
            "zh-CN": "找不到这个链接。请检查是否完整复制了邮件中的链接。",
            "en": "We do not know this link. Check that you copied the whole link from the email.",
        },
        "link_expired": {"zh-CN": "链接已过期", "en": "This link has expired"},
        "link_expired_text": {
            "zh-CN": "这个链接已过期。输入您的邮箱，我们会发送新的登录链接。",
            "en": "This link has expired. Enter your email address and we will send a new link.",
        },
        "link_used": {"zh-CN": "链接已使用", "en": "This link was already used"},
        "link_used_text": {
            "zh-CN": "这个链接已于 {when} 使用过，表单已提交，不能再次提交。",
            "en": "This link was already used at {when}: the form was submitted and cannot be "
            "submitted again.",
        },
        "link_used_open_text": {
            "zh-CN": "这个链接已于 {when} 使用过，您提交的内容已保存。如需再次查看，"
            "请输入邮箱获取新的登录链接。",
            "en": "This link was already used at {when}; what you submitted is saved. To look "
            "at it again, enter your email address for a new sign-in link.",
        },
        "link_used_sign_in_text": {
            "zh-CN": "这个登录链接已于 {when} 使用过，每个登录链接只能使用一次。"
            "请输入邮箱获取新的链接。",
            "en": "This sign-in link was already used at {when}; each works once. Enter your "
            "email address for a new one.",
        },
        "link_used_note": {
            "zh-CN": "您已通过此链接提交过，页面仅供查看。",
            "en": "You already submitted with this link; the page is read-only.",
        },
        "wrong_person": {"zh-CN": "链接属于他人", "en": "This link belongs to someone else"},
        "wrong_person_text": {
            "zh-CN": "您已以 {name} 的身份登录，而这个链接属于其他人。如需使用，请先退出登录。",
            "en": "You are signed in as {name} and this link belongs to someone else. Sign out "
            "first to use it.",
        },
        "csrf_failed": {"zh-CN": "表单已失效", "en": "This form could not be accepted"},
        "csrf_failed_text": {
            "zh-CN": "表单的安全校验未通过（可能页面已过期或被篡改），未做任何更改。"
            "请刷新页面后重试。",
            "en": "The form's security check failed (the page may be stale or altered); nothing "
            "was changed. Reload the page and try again.",
        },
        "bad_form": {"zh-CN": "表单无法读取", "en": "The form could not be read"},
        "not_found": {"zh-CN": "页面不存在", "en": "Page not found"},
        "bad_request": {"zh-CN": "请求有误", "en": "The request is not valid"},
        "invalid_input": {"zh-CN": "输入有误", "en": "Please correct the input"},
        "too_many_requests": {"zh-CN": "请求过于频繁", "en": "Too many requests"},
        "server_error": {"zh-CN": "出错了", "en": "Something went wrong"},
        "server_error_text": {
            "zh-CN": "系统出错，本次操作未保存任何内容。"
            "请稍后重试；如果问题持续，请联系人力资源部。",
            "en": "The system hit an error and nothing from this step was saved. Please try "
            "again in a moment; if it keeps happening, contact HR.",
        },
        # sign-in pages
        "new_link_title": {"zh-CN": "获取新的登录链接", "en": "Get a new sign-in link"},
        "new_link_intro": {
            "zh-CN": "输入您的工作邮箱，我们会发送一个登录链接。",
            "en": "Enter your work email address and we will send you a sign-in link.",
        },
        "new_link_sent_title": {"zh-CN": "请查收邮件", "en": "Check your email"},
        "new_link_sent": {
            "zh-CN": "如果该邮箱属于本单位的在职员工，登录链接已发送，{hours} 小时内有效。",
            "en": "If this address belongs to someone in the organisation, a sign-in link is on "
            "its way; it works for {hours} hours.",
        },
        "sign_in_title": {"zh-CN": "登录绩效考核门户", "en": "Sign in to the performance portal"},
        "sign_in_continue": {"zh-CN": "登录", "en": "Sign in"},
        "sign_in_continue_text": {
            "zh-CN": "点击下面的按钮登录。此登录链接只能使用一次。",
            "en": "Press the button below to sign in. This sign-in link works once.",
        },
        "signed_out": {"zh-CN": "您已退出登录。", "en": "You are signed out."},
        "email_required": {"zh-CN": "请输入有效的邮箱地址", "en": "Enter a valid email address"},
        "home_intro": {
            "zh-CN": "您的待办任务会通过邮件通知，点击邮件中的链接即可进入对应页面。",
            "en": "Your tasks arrive by email; the link in each email opens its page.",
        },
    }
)

# The words the mails use too, from their one home.
add_messages(
    {
        **vocabulary.catalog("rater.", vocabulary.RATER_TYPES),
        **vocabulary.catalog("eval.state.", vocabulary.EVALUATION_STATES),
        **vocabulary.catalog("goals.state.", vocabulary.GOAL_SHEET_STATES),
        **vocabulary.catalog("hr.stage_state.", vocabulary.STAGE_STATES),
    }
)
