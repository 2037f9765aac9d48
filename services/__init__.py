"""The GreenMesh domain services: registry, flows and energy. Each owns its database and stream."""

from __future__ import annotations

from meshkit.config import Component
from meshkit.server import ServiceDefinition


def definition_of(component: Component) -> ServiceDefinition:
    """The service definition a `greenmesh serve <component>` process runs."""
    if component is Component.REGISTRY:
        from services.registry.service import DEFINITION as registry

        return registry
    if component is Component.FLOWS:
        from services.flows.service import DEFINITION as flows

        return flows
    if component is Component.ENERGY:
        from services.energy.service import DEFINITION as energy

        return energy
    from gateway.service import DEFINITION as gateway

    return gateway
