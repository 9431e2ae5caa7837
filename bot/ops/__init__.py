"""The operator's seat: caps above every server, alerts, the kill switch, health and metrics, job log context.

Nothing here imports `discord`: the Discord side (who the operator is, posting alerts to a channel, the
`/operator` commands) lives in `cogs/operator.py` and plugs into these objects.
"""
