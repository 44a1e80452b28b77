"""The web portal (FastAPI, server-rendered HTML): the pages people reach from their task mails."""
