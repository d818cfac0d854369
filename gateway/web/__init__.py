"""What the gateway serves to browsers: the built web client (static.py) and CORS for
the /v1 API (cors.py)."""
