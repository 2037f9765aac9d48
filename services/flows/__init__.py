"""Battery identity and flow reporting: custody events, the custody state machine,
compliance alerts, traces and statistics."""
