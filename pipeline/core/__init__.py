"""The pure sessionizer core: events in, session changes out, given the time.

No Kafka, Redis, faust, asyncio or socket import anywhere below (a test enforces it).
"""
