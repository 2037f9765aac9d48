"""meshkit: the shared runtime of every GreenMesh component.

One copy of the machinery each service needs (configuration, the gRPC server bootstrap with health,
reflection and graceful shutdown, error mapping, telemetry, the NATS bus, the transactional outbox and
the idempotent inbox, the database and its migrations), so that no service carries its own.
"""
