"""Mail rendering: Jinja2 templates (zh-CN, en; HTML and plain text) -> email messages."""

from perfcycle.mail.render import Rendered, build_message, render

__all__ = ["Rendered", "build_message", "render"]
