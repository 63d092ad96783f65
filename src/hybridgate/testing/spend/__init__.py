"""The spend cap for tests that call paid AI APIs: the meter and its prices (`budget`), and the httpx
transports that put it in front of every call a client makes (`_budget_http`, loaded on first use).
"""
