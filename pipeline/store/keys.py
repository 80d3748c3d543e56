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
                                                one checks it: lost writes show), ``who``
                                                (the index is the ``who`` zset)
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
``sz:{pP}:who``                         zset     one member per open session,
                                                :func:`who_member` (``<n>:<project><m>:<user>
                                                <session_id>``, ``n`` and ``m`` lengths in
                                                UTF-8 bytes), all scored 0: a project's or a
                                                user's open sessions are the members with
                                                its :func:`who_prefix` (``ZRANGEBYLEX``)
``sz:{pP}:proj:<project>``             set      earlier versions' index of a project's open
``sz:{pP}:user:<n>:<project>:<user>``  set      sessions and of a user's: moved into ``who``
                                                by the first claim of the partition that finds
                                                ``meta`` without ``who``, then deleted
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


def who_prefix(project: str, user_id: str | None = None) -> str:
    """The start every :func:`who_member` of a project's open sessions shares (with
    ``user_id``: of that user's in the project). Lengths lead each name, so no project's
    (or user's) prefix is the start of another's."""
    found = f"{utf8_len(project)}:{project}"
    return found if user_id is None else f"{found}{utf8_len(user_id)}:{user_id}"


def who_member(session_id: str, project: str, user_id: str | None) -> str:
    """An open session's member of the ``who`` zset: :func:`who_prefix` of its project and
    user (none: ``""``), then its id."""
    return who_prefix(project, user_id or "") + session_id


def who_range(prefix: str) -> tuple[bytes, bytes]:
    """``ZRANGEBYLEX`` bounds of the members starting with ``prefix`` (UTF-8 has no byte
    0xff, so every such member sorts below the prefix followed by it)."""
    start = prefix.encode()
    return b"[" + start, b"(" + start + b"\xff"


def parse_who_member(member: bytes) -> tuple[str, str, str]:
    """``(session_id, project, user_id)`` of a :func:`who_member` (``user_id`` "" for none)."""
    names: list[bytes] = []
    at = 0
    for _ in range(2):
        colon = member.index(b":", at)
        end = colon + 1 + int(member[at:colon])
        names.append(member[colon + 1:end])
        at = end
    return member[at:].decode(), names[0].decode(), names[1].decode()


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

    def who(self, partition: int) -> str:
        """The open sessions by project and user (:func:`who_member`)."""
        return self.shard(partition) + "who"

    def legacy_project(self, partition: int, project: str) -> str:
        """A project's open session ids as earlier versions indexed them (a set)."""
        return f"{self.shard(partition)}proj:{project}"

    def legacy_user(self, partition: int, project: str, user_id: str) -> str:
        """A user's open session ids as earlier versions indexed them (a set)."""
        return f"{self.shard(partition)}user:{utf8_len(project)}:{project}:{user_id}"
