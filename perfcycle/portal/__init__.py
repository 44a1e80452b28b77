"""The web portal (FastAPI, server-rendered HTML). Until the portal issue lands: a placeholder."""
