"""A libvirt domain XML's identity: its <name> and <uuid>, read the one way every part uses.

The agent (its ``config``), ``kvmha guest add`` (``--xml``) and the fence listener (which
domain a resource's config file names) all ask the same question of a file that the admin
wrote; this is the one answer. Standard library only, and ElementTree is imported when a
file is parsed, not when the module is, so the agent's monitor path stays lean.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class DomainXMLError(ValueError):
    """The text is not a libvirt domain XML; ``problem`` reads after the file's name."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class DomainIdentity:
    name: str
    uuid: str  # "" when the XML has none (libvirt then makes one up at define time)
    root: Any  # the parsed <domain> element, for callers that read more of it


def parse_domain_xml(text: str) -> DomainIdentity:
    """The identity of a domain XML; DomainXMLError saying what is wrong otherwise."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)  # the admin's own config file, not untrusted input
    except ET.ParseError as exc:
        raise DomainXMLError(f"is not XML: {exc}") from None
    if root.tag != "domain":
        raise DomainXMLError(
            f"is not a libvirt domain XML (its root element is <{root.tag}>, expected <domain>)"
        )
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError("has no <name>")
    return DomainIdentity(name, (root.findtext("uuid") or "").strip(), root)
