"""Participant registry: enterprises (by unified social credit code), their facilities,
accreditation and credentials."""
