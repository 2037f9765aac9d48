"""NATS subject and stream names, versioned like the protos and carrying the province.

Subject: greenmesh.<province>.<component>.v1.<event>   e.g. greenmesh.32.registry.v1.probe_emitted
Stream:  GREENMESH_<province>_<COMPONENT>              e.g. GREENMESH_32_REGISTRY (owns greenmesh.32.registry.>)
"""

from __future__ import annotations

import re

from google.protobuf.message import Message

from meshkit.config import Component

API_VERSION = "v1"


def event_name(message_type: type[Message] | Message) -> str:
    """ProbeEmitted -> probe_emitted."""
    name = message_type.DESCRIPTOR.name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_subject(province: str, component: Component | str, message_type: type[Message] | Message) -> str:
    return f"greenmesh.{province}.{Component(component).value}.{API_VERSION}.{event_name(message_type)}"


def stream_name(province: str, component: Component | str) -> str:
    return f"GREENMESH_{province}_{Component(component).value.upper()}"


def stream_subjects(province: str, component: Component | str) -> list[str]:
    return [f"greenmesh.{province}.{Component(component).value}.>"]
