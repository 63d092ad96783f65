"""Faithful mock servers of the APIs the gateway talks to, one module per API.

`openai`: the OpenAI-compatible server behind `hybridgate mock-server`. Each module is imported on its own,
so running one mock never loads the others.
"""
