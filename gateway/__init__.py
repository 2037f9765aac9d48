"""The gateway: the front door of one province deployment (REST/JSON and gRPC pass-through).

For now it serves its own health, reports the health of every service (gRPC MeshStatusService and
`GET /v1/mesh/status`, `GET /healthz` over HTTP). Transcoding, authentication and limits come later.
"""
