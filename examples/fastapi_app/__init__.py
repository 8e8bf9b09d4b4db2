"""A small FastAPI host application exposing dripcore over a REST API (see ``app.py``)."""
