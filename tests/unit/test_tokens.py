"""API tokens (saga/store/tokens.py) on a SQLite file: made, hashed, resolved, revoked."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from saga.store.tables import tokens as tokens_table
from saga.store.tokens import SCOPES, Principal, TokenError, TokenStore, new_token
from tests.stack import wait_for


@pytest.fixture
def store(tmp_path) -> Iterator[TokenStore]:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/tokens.db")
    tokens_table.create(engine)
    yield TokenStore(engine)
    engine.dispose()


def rows(store: TokenStore) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(tokens_table)).mappings()]


def test_a_new_token_is_prefixed_high_entropy_and_url_safe():
    made = {new_token() for _ in range(100)}
    assert len(made) == 100
    for token in made:
        assert re.fullmatch(r"saga_[A-Za-z0-9_-]{43}", token), token  # 32 random bytes


def test_only_the_sha256_of_a_token_is_stored(store):
    token = store.create("ci", "operate")
    [row] = rows(store)
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert not any(token in str(value) for value in row.values())
    assert store.resolve(token) == Principal("ci", "operate")


@pytest.mark.parametrize("presented", ["", "saga_", "saga_" + "A" * 43, "not-ours", "saga_" + "x" * 500])
def test_an_unknown_or_malformed_token_resolves_to_nobody(store, presented):
    store.create("ci", "read")
    assert store.resolve(presented) is None


def test_a_revoked_token_resolves_to_nobody_and_keeps_its_name(store):
    token = store.create("ci", "admin")
    assert store.revoke("ci") is True
    assert store.resolve(token) is None
    assert store.revoke("ci") is False  # already revoked: nothing to do
    with pytest.raises(TokenError, match="exists already"):
        store.create("ci", "admin")  # a name in the events means one token
    [listed] = store.listing()
    assert listed["revoked_at"] is not None and "token_hash" not in listed


def test_a_live_token_is_remembered_for_cache_s_so_another_process_revoking_counts_after_it(
        store):
    """Given a token resolved once (remembered for 1 s), When another process revokes it
    (its row, changed behind this store's back), Then it still resolves at once, and to
    nobody within the second."""
    remembering = TokenStore(store.engine, cache_s=1.0)
    token = remembering.create("ci", "operate")
    assert remembering.resolve(token) == Principal("ci", "operate")
    with store.engine.begin() as conn:
        conn.execute(tokens_table.update().values(revoked_at=sa.func.current_timestamp()))
    revoked_at = time.monotonic()
    assert remembering.resolve(token) == Principal("ci", "operate")
    wait_for(lambda: remembering.resolve(token) is None, 10, "the revocation to be seen")
    assert time.monotonic() - revoked_at < 1.0 + 1.0


def test_a_revocation_in_this_process_counts_at_once_though_the_token_was_remembered(store):
    remembering = TokenStore(store.engine, cache_s=60.0)
    token = remembering.create("ci", "operate")
    assert remembering.resolve(token) == Principal("ci", "operate")
    assert TokenStore(store.engine).revoke("ci") is True  # another store of this process
    assert remembering.resolve(token) is None


def test_revoking_an_unknown_name_says_so(store):
    with pytest.raises(TokenError, match="no token is named 'ghost'"):
        store.revoke("ghost")


@pytest.mark.parametrize("name", ["", " ci", "a/b", "ci\n", "x" * 101, "-lead"])
def test_a_bad_name_is_refused(store, name):
    with pytest.raises(TokenError, match="token name"):
        store.create(name, "read")


def test_a_bad_scope_is_refused(store):
    with pytest.raises(TokenError, match="scope 'root' is not one of read, operate, admin"):
        store.create("ci", "root")


def test_last_used_at_is_written_at_most_once_a_minute(store):
    token = store.create("ci", "read")
    assert store.listing()[0]["last_used_at"] is None
    store.resolve(token)
    first = store.listing()[0]["last_used_at"]
    assert first is not None
    store.resolve(token)
    assert store.listing()[0]["last_used_at"] == first


@pytest.mark.parametrize(("scope", "allowed"), [
    ("read", {"read"}), ("operate", {"read", "operate"}), ("admin", {"read", "operate", "admin"})])
def test_each_scope_includes_the_ones_before_it(scope, allowed):
    assert {needed for needed in SCOPES if Principal("p", scope).allows(needed)} == allowed
