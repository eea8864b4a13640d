"""The heartbeat wing: every device, every interval. Read it top to bottom in this order:

``entrance.py``  ``POST /api/device/v1/heartbeat`` answered in front of the framework (and the documented route)
``runtime.py``   the per-instance object (``start``/``stop``) that owns the parts below; ``answer`` is one heartbeat
``rules.py``     pure: what a heartbeat means (snapshot + request → ``Plan``)
``read.py``      the read step: one indexed query (on SQLite, on the event loop)
``cache.py``     the per-instance device cache that makes a routine heartbeat need no SQL
``reply.py``     the reply: manifests with signed URLs, the routine reply
``write.py``     the write step: locked re-plan and write; group commit on SQLite
``presence.py``  routine telemetry, buffered and written behind in batches
``invalidation.py`` how every instance's cache hears of every change
"""
