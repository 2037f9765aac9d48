"""Energy-saving equipment records: catalogue, installed assets, meter readings,
PUE and load rate, savings evaluations."""
