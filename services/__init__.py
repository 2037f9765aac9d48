"""The GreenMesh domain services: registry, flows and energy. Each owns its database and stream."""

from __future__ import annotations

from meshkit.config import Component
from meshkit.server import ServiceDefinition


def definition_of(component: Component) -> ServiceDefinition:
    """The service definition a `greenmesh serve <component>` process runs."""
    if component is Component.REGISTRY:
        from services.registry.service import DEFINITION as REGISTRY

        return REGISTRY
    if component is Component.FLOWS:
        from services.flows.service import DEFINITION as FLOWS

        return FLOWS
    if component is Component.ENERGY:
        from services.energy.service import DEFINITION as ENERGY

        return ENERGY
    if component is Component.NATIONAL:
        from services.national.service import DEFINITION as NATIONAL

        return NATIONAL
    from gateway.service import DEFINITION as GATEWAY

    return GATEWAY
