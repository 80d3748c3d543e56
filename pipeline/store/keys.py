"""Every Redis key of the sessionizer, in one place.

All state of input partition P lives under one hash tag, ``{prefix}:{pP}:...``,
so that one MULTI/EXEC (and the read before it) can touch all of it, on a single
Redis or on Redis Cluster (the tag keeps a partition's keys in one slot).

=====================================  =======  ============================================
key                                    type     holds (TTL: none unless said)
=====================================  =======  ============================================
``sz:shards``                          set      partition numbers that hold state (for queries)
``sz:{revs}``                          hash     ``<session_id>:<project>`` of a client-chosen
                                                session id -> the highest revision any
                                                partition gave it: a new session with that id,
                                                on whatever partition, starts above it (SPEC 4:
                                                revisions never go back); one field per client
                                                session id, written before the commit that
                                                emits or holds the revision
``sz:{revs}:at``                       zset     the same fields -> when last written (ms):
                                                fields older than
                                                ``SESSIONIZER_REVISION_RETENTION`` are removed
``sz:{pP}:meta``                       hash     ``epoch`` (fencing), ``clock_ms`` (stream clock)
                                                and ``clock_at_ms`` (wall time it was committed),
                                                ``off:<topic>`` (last applied input offset),
                                                ``token`` (written by every commit; the next
                                                one checks it: lost writes show)
``sz:{pP}:states``                     hash     keyid -> one session key's head
                                                (:func:`~pipeline.store.codec.row_head`): its
                                                open session and the sessions closed less
                                                than ``reopen_grace`` ago, without their
                                                events, ids and data, plus where each one's
                                                event log is (``[handle, chunks]`` per
                                                session); earlier versions wrote a JSON
                                                object (``"o"``, ``"c"``, ``"l"``)
``sz:{pP}:log``                        hash     ``<handle>.<n>`` -> chunk ``n`` (hex) of a
                                                session's event log: its log items of one
                                                batch (event entries, ids, dropped-entry
                                                marks, data values) as JSON lines; replayed
                                                on load, never rewritten. A handle is
                                                ``<epoch>.<i>`` (hex): the i-th session
                                                begun under that claim of the partition
``sz:{pP}:e:<keyid>|<session_id>``     list     the event log of a session whose head has no
                                                logs (``"l"``; written before the log hash): read
                                                as it is, moved into the log hash by the
                                                next commit that writes its key
``sz:{pP}:due``                        zset     keyid -> stream-clock ms when the key needs
                                                attention (idle close or grace expiry), or
                                                earlier: a deadline that moved later is
                                                rewritten only once the one held is early
                                                by more than half the time left
``sz:{pP}:open``                       hash     ``<session_id>:<project>`` of an open session -> keyid
``sz:{pP}:idx``                        hash     keyid -> what the indexes hold for it
                                                (:func:`index_entry`)
``sz:{pP}:proj:<project>``             set      open session ids of a project
``sz:{pP}:user:<n>:<project>:<user>``  set      open session ids of a user (``n``: the
                                                length of ``project`` in UTF-8 bytes, so
                                                that names
                                                holding ``:`` cannot meet)
``sz:{pP}:hist``                       zset     ``<session_id>:<project>`` of a closed session -> end
                                                (ms): the bounded history
                                                (``SESSIONIZER_HISTORY_RETENTION`` and
                                                ``SESSIONIZER_HISTORY_MAX_SESSIONS`` per partition)
``sz:{pP}:h:<session_id>:<project>``   string   closed session record (latest revision)
``sz:{pP}:outbox``                     list     messages (closed sessions, dead letters,
                                                re-routed events) written but not yet
                                                acknowledged by the broker, in send order
=====================================  =======  ============================================

A *keyid* names a session key unambiguously: ``<kind><len(project)>:<project>:<identity>``
with kind ``u`` (user identity) or ``s`` (client session id).

A session id is unique within its project only: two projects may use the same client
session id. So the open index and the history name a session by ``<session_id>:<project>``
(:func:`session_ref`), and the sessions of one id, in any project, are the fields or
members matching ``<session_id>:*`` (:func:`session_ref_pattern`; a lookup checks the
records it finds, as with a schema of one's own a session id could hold a ``:``).
"""

from __future__ import annotations

import re

from pipeline.core.event import SessionKey

DEFAULT_PREFIX = "sz"
_GLOB = re.compile(r"([*?\[\]\\])")
_ENTRY_HEAD = re.compile(rb"(\d+):(\d+):")


def keyid(key: SessionKey) -> str:
    project, kind, ident = key
    return f"{kind}{len(project)}:{project}:{ident}"


def session_ref(session_id: str, project: str) -> str:
    """The open index's field and the history's member for a session."""
    return f"{session_id}:{project}"


def session_ref_pattern(session_id: str) -> str:
    """A Redis glob matching the :func:`session_ref` of every project's session with this id."""
    return _GLOB.sub(r"\\\1", session_id) + ":*"


def utf8_len(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes, as Lua's ``string.len`` counts it."""
    return len(text) if text.isascii() else len(text.encode())


def index_entry(session_id: str, project: str, user_id: str | None) -> str:
    """What the ``idx`` hash holds for a key whose session is open:
    ``<len(sid)>:<len(project)>:<sid><project><user_id>``, the lengths in UTF-8 bytes.
    Names are any strings (a project or user may hold any separator), so the commit
    script cuts the entry by these lengths, never by a separator."""
    return f"{utf8_len(session_id)}:{utf8_len(project)}:{session_id}{project}{user_id or ''}"


def parse_index_entry(entry: bytes) -> tuple[str, str, str]:
    """``(session_id, project, user_id)`` of an :func:`index_entry` (``user_id`` "" for none)."""
    head = _ENTRY_HEAD.match(entry)
    if head is None:
        raise ValueError(f"not an index entry: {entry!r}")
    cut = head.end() + int(head[1])
    end = cut + int(head[2])
    return entry[head.end():cut].decode(), entry[cut:end].decode(), entry[end:].decode()


def parse_keyid(value: str) -> SessionKey:
    kind = value[0]
    length_text, _, rest = value[1:].partition(":")
    length = int(length_text)
    project, ident = rest[:length], rest[length + 1 :]
    return (project, kind, ident)


class Keys:
    """Key names for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self.shards = f"{prefix}:shards"
        self.revisions = f"{prefix}:{{revs}}"
        self.revisions_at = f"{prefix}:{{revs}}:at"
        self._shard: dict[int, str] = {}

    def shard(self, partition: int) -> str:
        """The common prefix (with hash tag) of a partition's keys."""
        name = self._shard.get(partition)
        if name is None:
            name = self._shard[partition] = f"{self.prefix}:{{p{partition}}}:"
        return name

    def meta(self, partition: int) -> str:
        return self.shard(partition) + "meta"

    def due(self, partition: int) -> str:
        return self.shard(partition) + "due"

    def open(self, partition: int) -> str:
        return self.shard(partition) + "open"

    def log(self, partition: int) -> str:
        """The partition's event logs, one field per chunk (see the table above)."""
        return self.shard(partition) + "log"

    def legacy_events(self, partition: int, kid: str, session_id: str) -> str:
        """A session's event log as a list of its own (the layout before the log hash)."""
        return self.shard(partition) + "e:" + kid + "|" + session_id

    def history(self, partition: int) -> str:
        return self.shard(partition) + "hist"

    def history_record(self, partition: int, ref: str) -> str:
        """A closed session's record, by its :func:`session_ref`."""
        return self.shard(partition) + "h:" + ref

    def index(self, partition: int) -> str:
        return self.shard(partition) + "idx"

    def outbox(self, partition: int) -> str:
        return self.shard(partition) + "outbox"

    def states(self, partition: int) -> str:
        return self.shard(partition) + "states"

    def project(self, partition: int, project: str) -> str:
        return f"{self.shard(partition)}proj:{project}"

    def user(self, partition: int, project: str, user_id: str) -> str:
        return f"{self.shard(partition)}user:{utf8_len(project)}:{project}:{user_id}"
