"""The energy service's pure domain (research note ``energy.md`` §3 and §4): units, the asset lifecycle, the
equipment catalogue, reading quality and operating states, the KPIs (PUE, load rate, efficiency drift,
transformer and line losses, high-efficiency share) and the IPMVP savings evaluation.

No database, gRPC or NATS: every module holds formulas and rules over plain values. Bad input raises the
``meshkit.errors`` domain errors (``InvalidArgument`` with field violations named after the proto fields,
``FailedPrecondition`` with an UPPER_SNAKE reason) so a servicer can pass them straight through. Energy figures
are ``float`` throughout (kWh, kW, fractions); money and identifiers do not live here.
"""
