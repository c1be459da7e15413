"""The hosted hub: a repository served over HTTP (``modelhub serve``) and the client
side that makes an ``http(s)://`` URL work wherever a repository or remote does.

The server (server.py, web.py) needs the ``hub`` extra (FastAPI, uvicorn, Jinja2);
the client (client.py, fs.py, credentials.py) only httpx.
"""
