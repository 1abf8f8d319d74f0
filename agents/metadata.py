"""OCF 1.1 metadata XML, built from the declarative parameter and action tables."""

from __future__ import annotations

from . import guest_params as gp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def metadata_xml() -> str:
    out: List[str] = [
        '<?xml version="1.0"?>',
        f'<resource-agent name="{gp.AGENT_NAME}" version="0.1.0">',
        "<version>1.1</version>",
        f'<longdesc lang="en">{_esc(gp.AGENT_LONGDESC)}</longdesc>',
        f'<shortdesc lang="en">{_esc(gp.AGENT_SHORTDESC)}</shortdesc>',
        "<parameters>",
    ]
    for p in gp.PARAMS:
        attrs = f'name="{p.name}"'
        if p.unique_group:
            attrs += f' unique-group="{p.unique_group}"'
        attrs += f' required="{int(p.required)}" reloadable="{int(p.reloadable)}"'
        out.append(f"<parameter {attrs}>")
        if p.deprecated:
            out.append("<deprecated>")
            if p.replaced_by:
                out.append(f'<replaced-with name="{p.replaced_by}"/>')
            if p.deprecated_desc:
                out.append(f'<desc lang="en">{_esc(p.deprecated_desc)}</desc>')
            out.append("</deprecated>")
        out.append(f'<longdesc lang="en">{_esc(p.longdesc)}</longdesc>')
        out.append(f'<shortdesc lang="en">{_esc(p.shortdesc)}</shortdesc>')
        default = p.default
        if isinstance(default, bool):
            dflt = f' default="{"true" if default else "false"}"'
        elif default is None:
            dflt = ""
        else:
            dflt = f' default="{_esc(str(default))}"'
        if p.options:
            opts = "".join(f'<option value="{_esc(o)}"/>' for o in p.options)
            out.append(f'<content type="select"{dflt}>{opts}</content>')
        else:
            out.append(f'<content type="{p.kind}"{dflt}/>')
        out.append("</parameter>")
    out.append("</parameters>")
    out.append("<actions>")
    for name, timeout, interval, depth in gp.ACTIONS:
        attrs = f'name="{name}" timeout="{timeout}"'
        if interval is not None:
            attrs += f' interval="{interval}"'
        if depth is not None:
            attrs += f' depth="{depth}"'
        out.append(f"<action {attrs}/>")
    out.append("</actions>")
    out.append("</resource-agent>")
    return "\n".join(out) + "\n"
