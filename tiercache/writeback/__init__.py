"""The write-back front: what FUSE or a library user writes, made durable in the write dir and uploaded.

Not a cache tier: dirty data lives only here (staging files and the journal in the write dir), never in the
RAM or SSD tiers. ``front.WriteTier`` is the facade; the cache side it feeds is declared in ``cacheside``.
"""
