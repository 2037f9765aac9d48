"""The national view: every province's battery flows, from the national hub's stream, counted as the provinces
count them (the ministry's dispatch statistics of the whole country, of any province or county)."""
